package broker

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// wsListener is MQTT over WebSocket, as mochi's listener of that name, but
// with the bounds of DESIGN invariant 12 from the first byte: the HTTP
// upgrade must arrive within connect_timeout (mochi's HTTP server gives a
// silent connection 60 s), and the CONNECT after it has the same deadline
// and size limit as on TCP.
type wsListener struct {
	id, address string
	limits      connLimits
	log         *slog.Logger

	upgrader  websocket.Upgrader
	srv       *http.Server
	ln        net.Listener
	served    net.Listener // ln within the pending bounds
	establish listeners.EstablishFn
	end       atomic.Bool
	closeOnce sync.Once

	mu    sync.Mutex
	conns map[net.Conn]struct{} // upgraded and not yet ended, for Close
}

func newWSListener(id, address string, limits connLimits) *wsListener {
	return &wsListener{
		id: id, address: address, limits: limits,
		upgrader: websocket.Upgrader{
			Subprotocols: []string{"mqtt"},
			// MQTT clients are not browsers sending cookies: any origin, as mochi.
			CheckOrigin: func(*http.Request) bool { return true },
		},
	}
}

func (l *wsListener) ID() string       { return l.id }
func (l *wsListener) Protocol() string { return "ws" }

func (l *wsListener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.address
}

func (l *wsListener) Init(log *slog.Logger) error {
	l.log = log
	ln, err := net.Listen("tcp", l.address)
	if err != nil {
		return err
	}
	l.ln = ln
	if l.limits.pending != nil {
		ln = &pendingListener{Listener: ln, p: l.limits.pending}
	}
	l.served = ln
	l.srv = &http.Server{
		Handler:           http.HandlerFunc(l.handle),
		ReadHeaderTimeout: l.limits.connectTimeout,
		// No ReadTimeout/WriteTimeout: after the upgrade the MQTT keepalive
		// (and frameGuard's write deadline) govern the connection.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return nil
}

func (l *wsListener) handle(w http.ResponseWriter, r *http.Request) {
	c, err := l.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered with the HTTP error
	}
	defer c.Close()
	var slot *pendingSlot
	if sc, ok := c.UnderlyingConn().(*slotConn); ok {
		slot = sc.slot // released at login or when the connection ends
	}
	conn := &wsConn{Conn: c.UnderlyingConn(), c: c}
	l.mu.Lock()
	if l.end.Load() {
		l.mu.Unlock()
		return
	}
	if l.conns == nil {
		l.conns = map[net.Conn]struct{}{}
	}
	l.conns[conn] = struct{}{}
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.conns, conn)
		l.mu.Unlock()
	}()
	_ = conn.SetDeadline(time.Now().Add(l.limits.connectTimeout))
	serveConn(l.id, conn, slot, l.limits, l.establish, l.log)
}

func (l *wsListener) Serve(establish listeners.EstablishFn) {
	l.establish = establish
	if err := l.srv.Serve(l.served); err != nil && !errors.Is(err, http.ErrServerClosed) && !l.end.Load() {
		l.log.Error("websocket listener stopped", "listener", l.id, "error", err)
	}
}

// Close stops the HTTP server, ends the clients, and also the upgraded
// connections still before CONNECT (http.Server does not track hijacked
// connections), so shutdown does not sit out their connect_timeout.
func (l *wsListener) Close(closeClients listeners.CloseFn) {
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.end.Store(true)
		l.mu.Unlock()
		if l.srv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = l.srv.Shutdown(ctx)
		}
	})
	l.limits.endClients(l.id, closeClients)
	closeAll(&l.mu, &l.conns)
}

// wsConn reads and writes MQTT bytes as binary WebSocket messages (one
// packet may span messages and one message may hold several packets).
type wsConn struct {
	net.Conn
	c *websocket.Conn
	r io.Reader // the current message, nil between messages
}

var errWSNotBinary = errors.New("websocket: MQTT needs binary messages")

func (ws *wsConn) Read(p []byte) (int, error) {
	for {
		if ws.r == nil {
			op, r, err := ws.c.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errWSNotBinary
			}
			ws.r = r
		}
		n, err := ws.r.Read(p)
		if errors.Is(err, io.EOF) {
			ws.r = nil
			if n == 0 {
				continue // an empty message, or its end: take the next one
			}
			err = nil
		}
		return n, err
	}
}

func (ws *wsConn) Write(p []byte) (int, error) {
	if err := ws.c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}
