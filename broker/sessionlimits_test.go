package broker

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgegw/gateway/buffer"
)

// A session whose expiry passed while the gateway was stopped is gone when
// it starts again (mochi alone restarts every stored session's expiry at
// the restart, with the server maximum).
func TestExpiredSessionGoneAfterRestart(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir, "", buffer.Options{})
	c, code := rawConnect(t, e.addr, connectOpts{version: 5, id: "term-x", sessionExpiry: 2})
	if code != 0 {
		t.Fatalf("connect: %#x", code)
	}
	c.subscribe(1, "terminals/term-x/receipts", 1)
	keep, code := rawConnect(t, e.addr, connectOpts{version: 5, id: "term-y", sessionExpiry: 3600})
	if code != 0 {
		t.Fatalf("connect: %#x", code)
	}
	c.conn.Close()
	keep.conn.Close()
	left := time.Now()
	eventually(t, "term-x offline", func() bool {
		cl, ok := e.brk.server.Clients.Get("term-x")
		return ok && cl.Closed()
	})
	e.stop()
	// Wait out term-x's expiry (2s) while the gateway is down.
	eventually(t, "term-x's session expiry to pass", func() bool { return time.Since(left) > 3500*time.Millisecond })

	e2 := start(t, dir, "", buffer.Options{})
	if _, ok := e2.brk.server.Clients.Get("term-x"); ok {
		t.Fatal("term-x's expired session was restored")
	}
	if subs := e2.brk.server.Topics.Subscribers("terminals/term-x/receipts"); len(subs.Subscriptions) != 0 {
		t.Fatalf("expired session's subscription still routed: %+v", subs.Subscriptions)
	}
	if _, ok := e2.brk.server.Clients.Get("term-y"); !ok {
		t.Fatal("term-y's session (expiry 1h) was not restored")
	}
	// and term-x starts afresh
	_, ack := connackOf(t, e2.addr, connectOpts{version: 5, id: "term-x", sessionExpiry: 60})
	if ack[0]&1 != 0 {
		t.Fatal("term-x reconnected to a session present")
	}
}

// connackOf connects and returns the client with its whole CONNACK body.
func connackOf(t *testing.T, addr string, o connectOpts) (*rawClient, []byte) {
	t.Helper()
	c, code := rawConnect(t, addr, o)
	if code != 0 {
		t.Fatalf("connect %s: %#x", o.id, code)
	}
	return c, c.lastConnack
}

// Beyond max_sessions, the longest-offline session goes first, counted.
func TestMaxSessionsEvictsLongestOffline(t *testing.T) {
	e := start(t, "", "", buffer.Options{}, "GATEWAY_MQTT_MAX_SESSIONS=3")
	for _, id := range []string{"s-a", "s-b", "s-c"} {
		c, code := rawConnect(t, e.addr, connectOpts{version: 5, id: id, sessionExpiry: 3600})
		if code != 0 {
			t.Fatalf("%s: %#x", id, code)
		}
		c.conn.Close()
		eventually(t, id+" offline", func() bool {
			cl, ok := e.brk.server.Clients.Get(id)
			return ok && cl.Closed()
		})
	}
	if _, code := rawConnect(t, e.addr, connectOpts{version: 5, id: "s-d", sessionExpiry: 3600}); code != 0 {
		t.Fatalf("s-d: %#x", code)
	}
	eventually(t, "s-a evicted", func() bool { _, ok := e.brk.server.Clients.Get("s-a"); return !ok })
	for _, id := range []string{"s-b", "s-c", "s-d"} {
		if _, ok := e.brk.server.Clients.Get(id); !ok {
			t.Fatalf("%s was evicted", id)
		}
	}
	eventually(t, "the eviction counted", func() bool { return testutil.ToFloat64(e.brk.sessionsEvicted) == 1 })
}

// max_session_expiry caps what a client asks for, and CONNACK says so.
func TestMaxSessionExpiryCapsTheClient(t *testing.T) {
	e := start(t, "", "", buffer.Options{}, "GATEWAY_MQTT_MAX_SESSION_EXPIRY=1h")
	_, code := rawConnect(t, e.addr, connectOpts{version: 5, id: "forever", sessionExpiry: 0xFFFFFFFF})
	if code != 0 {
		t.Fatalf("connect: %#x", code)
	}
	cl, ok := e.brk.server.Clients.Get("forever")
	if !ok || cl.Properties.Props.SessionExpiryInterval != 3600 {
		t.Fatalf("session expiry %d, want 3600", cl.Properties.Props.SessionExpiryInterval)
	}
}
