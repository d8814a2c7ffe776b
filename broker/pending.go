package broker

import (
	"net"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// pendingConns bounds the connections that have not logged in yet (in their
// TLS handshake or WebSocket upgrade, or before CONNACK), in total and per
// remote address (mqtt.max_pending_connections and
// max_pending_connections_per_address). A stranger's connection costs
// memory from its accept: 10,000 silent connections held 165 MB. One beyond
// a bound is closed at once, before anything is read from it; a logged-in
// client never counts.
type pendingConns struct {
	max, perAddr int

	mu     sync.Mutex
	total  int
	byAddr map[string]int

	refused *prometheus.CounterVec
	gauge   prometheus.GaugeFunc
}

func newPendingConns(max, perAddr int) *pendingConns {
	p := &pendingConns{max: max, perAddr: perAddr, byAddr: map[string]int{}}
	p.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gateway_mqtt_connections_refused_total",
		Help: "Connections closed at accept because too many were not logged in yet, by reason (pending_total: mqtt.max_pending_connections, pending_address: mqtt.max_pending_connections_per_address).",
	}, []string{"reason"})
	p.gauge = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gateway_mqtt_pending_connections",
		Help: "Connections accepted and not logged in yet (TLS handshake, WebSocket upgrade, CONNECT).",
	}, func() float64 {
		p.mu.Lock()
		defer p.mu.Unlock()
		return float64(p.total)
	})
	return p
}

// pendingSlot is a connection's place among those not logged in; release
// (on login or when the connection ends, whichever first) is safe on nil
// and more than once.
type pendingSlot struct {
	p    *pendingConns
	addr string
	done atomic.Bool
}

func (s *pendingSlot) release() {
	if s == nil || s.p == nil || !s.done.CompareAndSwap(false, true) {
		return
	}
	s.p.mu.Lock()
	defer s.p.mu.Unlock()
	s.p.total--
	if s.p.byAddr[s.addr]--; s.p.byAddr[s.addr] <= 0 {
		delete(s.p.byAddr, s.addr)
	}
}

// acquire gives remote a slot, or nil when a bound is reached (counted).
// A nil p admits everyone.
func (p *pendingConns) acquire(remote net.Addr) *pendingSlot {
	if p == nil {
		return nil
	}
	addr := remote.String()
	if h, _, err := net.SplitHostPort(addr); err == nil {
		addr = h
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.max > 0 && p.total >= p.max:
		p.refused.WithLabelValues("pending_total").Inc()
		return nil
	case p.perAddr > 0 && p.byAddr[addr] >= p.perAddr:
		p.refused.WithLabelValues("pending_address").Inc()
		return nil
	}
	p.total++
	p.byAddr[addr]++
	return &pendingSlot{p: p, addr: addr}
}

// slotConn carries a connection's slot through the WebSocket upgrade (the
// HTTP server hands the upgraded connection back as it was accepted).
type slotConn struct {
	net.Conn
	slot *pendingSlot
}

func (c *slotConn) Close() error {
	c.slot.release()
	return c.Conn.Close()
}

// pendingListener admits connections within the bounds (for the WebSocket
// listener, whose HTTP server accepts them).
type pendingListener struct {
	net.Listener
	p *pendingConns
}

func (l *pendingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		slot := l.p.acquire(c.RemoteAddr())
		if slot == nil && l.p != nil {
			_ = c.Close()
			continue
		}
		return &slotConn{Conn: c, slot: slot}, nil
	}
}
