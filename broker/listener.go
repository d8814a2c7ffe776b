package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// tcpListener is a mochi listener (plain TCP or TLS) whose connections are
// served by serveConn: behind a frameGuard, with a panic in mochi's reading
// of one connection contained to it.
type tcpListener struct {
	id, address string
	tlsConfig   *tls.Config
	log         *slog.Logger
	limits      connLimits

	listen net.Listener
	end    atomic.Bool
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{} // accepted and not yet ended, for Close
}

func newTCPListener(id, address string, tlsConfig *tls.Config, limits connLimits) *tcpListener {
	return &tcpListener{id: id, address: address, tlsConfig: tlsConfig, limits: limits}
}

// connLimits bound what a connection may hold before its CONNECT is
// accepted (DESIGN invariant 12).
type connLimits struct {
	// stopClients ends the mochi clients of a listener at Close (see
	// Broker.stopListenerClients); nil: mochi's own callback.
	stopClients func(listener string)
	// connectTimeout covers the TLS handshake and reading CONNECT; mochi
	// replaces the deadline with the keepalive one once CONNECT is in.
	connectTimeout time.Duration
	// maxConnect is the largest CONNECT taken; a larger one is refused from
	// its fixed header, before mochi allocates its body.
	maxConnect uint32
	// maxPacket is mqtt.max_packet_size (see frameGuard).
	maxPacket uint32
	// events receive what the connections' guards refuse; nil: nobody.
	events *connEvents
	// panicked ends a client whose packet made mochi panic (see serveConn).
	panicked func(g *frameGuard, v any, stack []byte)
	// pending bounds the connections not logged in yet; nil: no bound.
	pending *pendingConns
}

func (l *tcpListener) ID() string { return l.id }

func (l *tcpListener) Address() string {
	if l.listen != nil {
		return l.listen.Addr().String()
	}
	return l.address
}

func (l *tcpListener) Protocol() string {
	if l.tlsConfig != nil {
		return "tls"
	}
	return "tcp"
}

func (l *tcpListener) Init(log *slog.Logger) error {
	l.log = log
	ln, err := net.Listen("tcp", l.address)
	if err != nil {
		return err
	}
	if l.tlsConfig != nil {
		ln = tls.NewListener(ln, l.tlsConfig)
	}
	l.listen = ln
	return nil
}

func (l *tcpListener) Serve(establish listeners.EstablishFn) {
	for {
		if l.end.Load() {
			return
		}
		conn, err := l.listen.Accept()
		if err != nil {
			if l.end.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			l.log.Warn("mqtt accept failed", "listener", l.id, "error", err)
			time.Sleep(50 * time.Millisecond) // e.g. out of file descriptors: don't spin
			continue
		}
		slot := l.limits.pending.acquire(conn.RemoteAddr())
		if slot == nil && l.limits.pending != nil {
			_ = conn.Close() // too many not logged in yet: nothing read, nothing held
			continue
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetKeepAlivePeriod(30 * time.Second)
		}
		l.mu.Lock()
		if l.end.Load() { // Close already ran its sweep
			l.mu.Unlock()
			slot.release()
			_ = conn.Close()
			return
		}
		if l.conns == nil {
			l.conns = map[net.Conn]struct{}{}
		}
		l.conns[conn] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go func() {
			defer l.wg.Done()
			defer func() {
				l.mu.Lock()
				delete(l.conns, conn)
				l.mu.Unlock()
			}()
			deadline := time.Now().Add(l.limits.connectTimeout)
			_ = conn.SetDeadline(deadline)
			if tc, ok := conn.(*tls.Conn); ok {
				// Handshake here, under the deadline, so a stranger who
				// never finishes it costs no mochi client at all.
				ctx, cancel := context.WithDeadline(context.Background(), deadline)
				err := tc.HandshakeContext(ctx)
				cancel()
				if err != nil {
					slot.release()
					_ = conn.Close()
					if l.log != nil {
						l.log.Debug("mqtt tls handshake failed", "listener", l.id, "remote", conn.RemoteAddr(), "error", err)
					}
					return
				}
			}
			serveConn(l.id, conn, slot, l.limits, establish, l.log)
		}()
	}
}

// Close stops accepting, ends the clients, and also the connections still
// in their TLS handshake or before CONNECT, then waits for every connection
// goroutine to return. mochi waits for its clients right after (a
// WaitGroup that connections Add to); waiting here first orders those Adds
// before that Wait, and shutdown does not sit out anyone's connect_timeout.
func (l *tcpListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	l.end.Store(true)
	l.mu.Unlock()
	if l.listen != nil {
		_ = l.listen.Close()
	}
	l.limits.endClients(l.id, closeClients)
	closeAll(&l.mu, &l.conns)
	l.wg.Wait()
}

// endClients ends a listener's mochi clients at Close (see
// Broker.stopListenerClients; mochi's own callback when none is set).
func (lim connLimits) endClients(id string, closeClients listeners.CloseFn) {
	if lim.stopClients != nil {
		lim.stopClients(id)
		return
	}
	closeClients(id)
}

// closeAll closes the connections a listener still tracks.
func closeAll(mu *sync.Mutex, conns *map[net.Conn]struct{}) {
	mu.Lock()
	defer mu.Unlock()
	for c := range *conns {
		_ = c.Close()
	}
}
