package testkit

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Mode is how a Proxy treats connections.
type Mode int

// Proxy modes.
const (
	// Pass forwards bytes both ways.
	Pass Mode = iota
	// Refuse closes the listening socket, so new connections are refused,
	// and resets every existing connection.
	Refuse
	// Hang accepts TCP connections but never forwards or answers anything;
	// existing connections go silent too. Leaving Hang resets every
	// connection that existed during it, as a dropped link would.
	Hang
)

func (m Mode) String() string {
	switch m {
	case Pass:
		return "pass"
	case Refuse:
		return "refuse"
	case Hang:
		return "hang"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Proxy is a TCP proxy on a fixed 127.0.0.1 address in front of a target,
// used to make a server unreachable or unresponsive without stopping it.
type Proxy struct {
	addr   string
	laddr  net.Addr
	target string

	mu      sync.Mutex
	mode    Mode
	ln      net.Listener // nil while refusing
	conns   map[*proxyConn]struct{}
	changed chan struct{} // closed and replaced on every mode change
	closed  bool
	wg      sync.WaitGroup
}

type proxyConn struct {
	client   net.Conn
	upstream net.Conn // nil for connections accepted while hanging
	once     sync.Once
	halfDone atomic.Int32 // directions that ended with a clean EOF
}

// reset closes both ends with RST rather than FIN, like a failed link.
func (c *proxyConn) reset() {
	c.once.Do(func() {
		resetConn(c.client)
		if c.upstream != nil {
			resetConn(c.upstream)
		}
	})
}

func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// NewProxy starts a proxy in Pass mode on a free 127.0.0.1 port in front of
// target; it is closed on t.Cleanup.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := StartProxy("127.0.0.1:0", target)
	if err != nil {
		t.Fatalf("testkit: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// StartProxy starts a proxy in Pass mode listening on listen (port 0 picks a
// free one) in front of target. The caller must Close it.
func StartProxy(listen, target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("proxy: listen %s: %w", listen, err)
	}
	p := &Proxy{
		addr:    ln.Addr().String(),
		laddr:   ln.Addr(),
		target:  target,
		ln:      ln,
		conns:   map[*proxyConn]struct{}{},
		changed: make(chan struct{}),
	}
	p.wg.Add(1)
	go p.accept(ln)
	return p, nil
}

// Addr is the proxy's own address (host:port); it stays the same across
// mode changes.
func (p *Proxy) Addr() string { return p.addr }

// Target is the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// Mode returns the current mode.
func (p *Proxy) Mode() Mode {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode
}

// SetMode switches the mode; it returns once the switch is in effect (the
// listener is closed or open again, connections are reset).
func (p *Proxy) SetMode(m Mode) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("proxy: closed")
	}
	if m == p.mode {
		return nil
	}
	old := p.mode
	if m == Refuse && p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	if m == Refuse || old == Hang {
		for c := range p.conns {
			c.reset()
			delete(p.conns, c)
		}
	}
	if m != Refuse && p.ln == nil {
		ln, err := net.Listen("tcp", p.addr)
		if err != nil {
			return fmt.Errorf("proxy: listen again on %s: %w", p.addr, err)
		}
		p.ln = ln
		p.wg.Add(1)
		go p.accept(ln)
	}
	p.mode = m
	close(p.changed)
	p.changed = make(chan struct{})
	return nil
}

// Close stops the proxy and resets all its connections. Safe to call twice.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.reset()
		delete(p.conns, c)
	}
	close(p.changed)
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) accept(ln net.Listener) {
	defer p.wg.Done()
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		mode, closed := p.mode, p.closed
		p.mu.Unlock()
		if closed || mode == Refuse {
			resetConn(conn)
			continue
		}
		pc := &proxyConn{client: conn}
		if mode == Pass {
			up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
			if err != nil {
				// Target down: look like it to the client.
				resetConn(conn)
				continue
			}
			pc.upstream = up
		}
		p.mu.Lock()
		if p.closed || p.mode != mode {
			// The mode changed while dialing: treat the connection as one
			// that existed across the change.
			p.mu.Unlock()
			pc.reset()
			continue
		}
		p.conns[pc] = struct{}{}
		p.mu.Unlock()
		if pc.upstream == nil {
			continue // hanging: hold it open, say nothing
		}
		p.wg.Add(2)
		go p.pipe(pc, pc.upstream, pc.client)
		go p.pipe(pc, pc.client, pc.upstream)
	}
}

// pipe copies src to dst while the mode is Pass. Data read while hanging is
// held back until the hang ends, which resets the connection: it never
// arrives.
func (p *Proxy) pipe(pc *proxyConn, dst, src net.Conn) {
	defer p.wg.Done()
	clean := false
	defer func() {
		// A clean EOF only half-closes; the connection goes when both
		// directions are done or anything went wrong.
		if clean && pc.halfDone.Add(1) < 2 {
			return
		}
		pc.reset()
		p.mu.Lock()
		delete(p.conns, pc)
		p.mu.Unlock()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.gate() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if tc, ok := dst.(*net.TCPConn); ok && tc.CloseWrite() == nil {
					clean = true
				}
			}
			return
		}
	}
}

// gate reports whether data may pass now, blocking for as long as the proxy
// hangs.
func (p *Proxy) gate() bool {
	p.mu.Lock()
	mode, closed, changed := p.mode, p.closed, p.changed
	p.mu.Unlock()
	if closed || mode == Refuse {
		return false
	}
	if mode == Hang {
		<-changed
		return false
	}
	return true
}
