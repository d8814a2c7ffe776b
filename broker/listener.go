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
	"github.com/mochi-mqtt/server/v2/packets"
)

// tcpListener is a mochi listener (plain TCP or TLS) whose connections are
// wrapped in a frameGuard, so that an oversized packet from an MQTT 5 client
// is answered with DISCONNECT 0x95 before the connection closes (mochi v2.7.9
// closes it without a reason code).
type tcpListener struct {
	id, address string
	tlsConfig   *tls.Config
	maxPacket   uint32
	log         *slog.Logger
	limits      connLimits

	listen net.Listener
	end    atomic.Bool
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{} // accepted and not yet ended, for Close
}

func newTCPListener(id, address string, tlsConfig *tls.Config, maxPacket uint32, limits connLimits) *tcpListener {
	return &tcpListener{id: id, address: address, tlsConfig: tlsConfig, maxPacket: maxPacket, limits: limits}
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
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetKeepAlivePeriod(30 * time.Second)
		}
		l.mu.Lock()
		if l.end.Load() { // Close already ran its sweep
			l.mu.Unlock()
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
					_ = conn.Close()
					if l.log != nil {
						l.log.Debug("mqtt tls handshake failed", "listener", l.id, "remote", conn.RemoteAddr(), "error", err)
					}
					return
				}
			}
			err := establish(l.id, &frameGuard{Conn: conn, max: l.maxPacket, maxConnect: l.limits.maxConnect})
			if err != nil && l.log != nil {
				l.log.Debug("mqtt connection ended", "listener", l.id, "remote", conn.RemoteAddr(), "error", err)
			}
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

// frameGuard follows the MQTT framing of the bytes read from a connection:
// packet type, remaining length, body. It learns the protocol version from
// CONNECT, and when a packet announces more than max bytes it sends an MQTT 5
// client DISCONNECT with reason 0x95 (packet too large). mochi sees the same
// header right after and closes the connection.
type frameGuard struct {
	net.Conn
	max        uint32
	maxConnect uint32 // 0: no limit beyond max

	mu        sync.Mutex
	state     int // 0 type byte, 1 remaining length, 2 body
	first     bool
	typ       byte
	remaining uint32
	mult      uint32
	lenBytes  int
	body      []byte // the first bytes of CONNECT, to find the protocol level
	version   byte
	tooLarge  bool
	// connectTooLarge: the first packet announced more than maxConnect
	// bytes; reads fail from then on.
	connectTooLarge bool
}

// errConnectTooLarge ends a connection whose CONNECT announces more than
// mqtt.max_connect_size.
var errConnectTooLarge = errors.New("CONNECT larger than mqtt.max_connect_size")

const (
	guardType = iota
	guardLength
	guardBody
)

// writeDeadline bounds a write to a client that stopped reading, so a stuck
// terminal cannot hold a broker goroutine forever.
const writeDeadline = 30 * time.Second

func (g *frameGuard) Write(p []byte) (int, error) {
	if len(p) > 0 && p[0] == packets.Disconnect<<4 {
		g.mu.Lock()
		v := g.version
		g.mu.Unlock()
		if v == 3 || v == 4 {
			// MQTT 3.1.1 has no server DISCONNECT (mochi v2.7.9 sends one,
			// e.g. to a client whose session is taken over): the connection
			// is just closed.
			return len(p), nil
		}
	}
	_ = g.Conn.SetWriteDeadline(time.Now().Add(writeDeadline))
	return g.Conn.Write(p)
}

func (g *frameGuard) Read(p []byte) (int, error) {
	g.mu.Lock()
	refused := g.connectTooLarge
	g.mu.Unlock()
	if refused {
		return 0, errConnectTooLarge
	}
	n, err := g.Conn.Read(p)
	if n > 0 && (g.max > 0 || g.maxConnect > 0) {
		g.mu.Lock()
		tooLarge := g.scan(p[:n])
		version, refused := g.version, g.connectTooLarge
		g.mu.Unlock()
		if refused {
			// Nothing of it reaches mochi, which would allocate the whole
			// announced body and wait for it.
			_ = g.Conn.Close()
			return 0, errConnectTooLarge
		}
		if tooLarge && version == 5 {
			// DISCONNECT, remaining length 1, reason code 0x95.
			_, _ = g.Write([]byte{0xE0, 0x01, 0x95})
		}
	}
	return n, err
}

// scan advances the framing state over b; it reports true once, when a
// too-large packet header is seen.
func (g *frameGuard) scan(b []byte) bool {
	if g.tooLarge {
		return false
	}
	for len(b) > 0 {
		switch g.state {
		case guardType:
			g.typ = b[0] >> 4
			g.state, g.remaining, g.mult, g.lenBytes = guardLength, 0, 1, 0
			b = b[1:]
		case guardLength:
			c := b[0]
			b = b[1:]
			g.remaining += uint32(c&127) * g.mult
			g.mult *= 128
			g.lenBytes++
			if c&128 != 0 && g.lenBytes < 4 {
				continue
			}
			// fixed header complete
			if !g.first && g.maxConnect > 0 && g.remaining+1 > g.maxConnect {
				g.connectTooLarge = true
				return false
			}
			if g.max > 0 && g.remaining+1 > g.max {
				g.tooLarge = true
				return true
			}
			g.state = guardBody
			if g.remaining == 0 {
				g.state = guardType
			}
		case guardBody:
			take := min(uint32(len(b)), g.remaining)
			if !g.first && g.typ == 1 && len(g.body) < 16 {
				g.body = append(g.body, b[:min(int(take), 16-len(g.body))]...)
			}
			b = b[take:]
			g.remaining -= take
			if g.remaining == 0 {
				if !g.first && g.typ == 1 {
					g.version = connectVersion(g.body)
				}
				g.first = g.first || g.typ == 1
				g.body = nil
				g.state = guardType
			}
		}
	}
	return false
}

// connectVersion reads the protocol level from the start of a CONNECT body:
// a 2-byte length, the protocol name, then the level.
func connectVersion(body []byte) byte {
	if len(body) < 2 {
		return 0
	}
	n := int(body[0])<<8 | int(body[1])
	if len(body) < 2+n+1 {
		return 0
	}
	return body[2+n]
}
