package broker

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/rules"
)

type env struct {
	t    *testing.T
	dir  string
	cfg  *config.Config
	buf  *buffer.Buffer
	brk  *Broker
	addr string
}

const baseYAML = `
id: test-gw
kafka: {brokers: ["127.0.0.1:1"]}
mqtt: {address: "127.0.0.1:0", max_packet_size: 4096}
admin: {address: ""}
routes:
  - {name: payments, match: "terminals/+/payments/#", kafka_topic: payments, priority: 0}
  - {name: telemetry, match: "terminals/+/telemetry/#", kafka_topic: telemetry, priority: 5}
`

// start runs a broker on a buffer in dir (a new temp dir if "").
func start(t *testing.T, dir, extraYAML string, bopts buffer.Options, environ ...string) *env {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	cfg, err := config.Parse([]byte(baseYAML+extraYAML), append(environ, "GATEWAY_DATA_DIR="+dir))
	if err != nil {
		t.Fatal(err)
	}
	bopts.Path = filepath.Join(dir, "buffer.db")
	buf, err := buffer.Open(bopts)
	if err != nil {
		t.Fatal(err)
	}
	brk, err := New(Options{Config: cfg, Rules: rules.Compile(cfg), Buffer: buf})
	if err != nil {
		t.Fatal(err)
	}
	if err := brk.Start(); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, cfg: cfg, buf: buf, brk: brk, addr: brk.Addr("tcp")}
	t.Cleanup(e.stop)
	return e
}

func (e *env) stop() {
	e.brk.Close()
	e.buf.Close()
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func pahoClient(t *testing.T, addr, id string, onConnLost func()) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).
		SetAutoReconnect(false).SetConnectRetry(false).SetOrderMatters(false)
	if onConnLost != nil {
		o.SetConnectionLostHandler(func(paho.Client, error) { onConnLost() })
	}
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

func total(b *buffer.Buffer) int64 { n, _ := b.Total(); return n }

// Invariant 1: the PUBACK leaves only after the transaction holding the
// message committed.
func TestPubackOnlyAfterCommit(t *testing.T) {
	gate := make(chan struct{})
	var held atomic.Bool
	var committed sync.Map
	e := start(t, "", "", buffer.Options{
		BeforeCommit: func(seqs []uint64) error {
			held.Store(true)
			<-gate
			return nil
		},
		AfterCommit: func(seqs []uint64) {
			for _, s := range seqs {
				committed.Store(s, true)
			}
		},
	})
	// after start (cleanups run last-first, and stopping waits for a held
	// commit): let any commit still held go
	t.Cleanup(func() {
		for {
			select {
			case gate <- struct{}{}:
			case <-time.After(100 * time.Millisecond):
				return
			}
		}
	})
	for _, v := range []byte{4, 5} {
		held.Store(false)
		c := dialRaw(t, e.addr, v, fmt.Sprintf("term-v%d", v), true)
		c.publish(1, 11, false, fmt.Sprintf("terminals/term-v%d/payments/1", v), []byte("pay"))
		eventually(t, "commit to start", held.Load)
		if typ, _, err := c.tryRead(300 * time.Millisecond); err == nil {
			t.Fatalf("v%d: got packet type %d while the commit was held", v, typ)
		}
		gate <- struct{}{}
		pid, code := c.expectPuback()
		if pid != 11 || code != 0 {
			t.Fatalf("v%d: puback pid %d code %#x", v, pid, code)
		}
		recs, err := e.buf.Read(nil, func(string) int { return 0 }, 100, 1<<20)
		if err != nil || len(recs) == 0 {
			t.Fatalf("v%d: nothing stored after PUBACK: %v", v, err)
		}
		last := recs[len(recs)-1]
		if _, ok := committed.Load(last.Seq); !ok {
			t.Fatalf("v%d: PUBACK for seq %d before its commit", v, last.Seq)
		}
	}
}

// A write that fails is never PUBACKed as success: MQTT 5 gets a reason code,
// 3.1.1 is disconnected (mochi would PUBACK it otherwise).
func TestFailedWriteIsNeverAcked(t *testing.T) {
	var fail atomic.Bool
	e := start(t, "", "", buffer.Options{BeforeCommit: func([]uint64) error {
		if fail.Load() {
			return errors.New("injected: disk full")
		}
		return nil
	}})
	fail.Store(true)

	v3 := dialRaw(t, e.addr, 4, "term-a", true)
	v3.publish(1, 1, false, "terminals/term-a/payments/1", []byte("x"))
	for {
		typ, body, err := v3.tryRead(10 * time.Second)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("3.1.1 client neither acked nor disconnected")
			}
			break // disconnected: right
		}
		if typ == 4 {
			t.Fatalf("3.1.1 client got a PUBACK %v for a failed write", body)
		}
	}

	v5 := dialRaw(t, e.addr, 5, "term-b", true)
	v5.publish(1, 2, false, "terminals/term-b/payments/1", []byte("x"))
	if pid, code := v5.expectPuback(); pid != 2 || code < 0x80 {
		t.Fatalf("v5 failed write: puback pid %d code %#x, want an error code", pid, code)
	}
	if n := total(e.buf); n != 0 {
		t.Fatalf("%d records stored", n)
	}

	// The disk recovers: the same clients' next publishes are stored and acked.
	fail.Store(false)
	v3 = dialRaw(t, e.addr, 4, "term-a", true)
	v3.publish(1, 3, false, "terminals/term-a/payments/1", []byte("x"))
	if _, code := v3.expectPuback(); code != 0 {
		t.Fatal(code)
	}

	// A closed buffer (shutdown, unopenable file) is a failed write too.
	e.buf.Close()
	v5.publish(1, 4, false, "terminals/term-b/payments/1", []byte("x"))
	if pid, code := v5.expectPuback(); pid != 4 || code < 0x80 {
		t.Fatalf("closed buffer: puback pid %d code %#x", pid, code)
	}
}

// One client with many publishes in flight is not held to one message per
// fsync, and its PUBACKs come in publish order.
func TestSingleClientIsPipelined(t *testing.T) {
	gate := make(chan struct{})
	var release sync.Once
	var first atomic.Bool
	var firstBatch atomic.Int64
	var mu sync.Mutex
	var batches []int
	e := start(t, "", "", buffer.Options{BeforeCommit: func(seqs []uint64) error {
		if first.CompareAndSwap(false, true) {
			firstBatch.Store(int64(len(seqs)))
			<-gate
		}
		mu.Lock()
		batches = append(batches, len(seqs))
		mu.Unlock()
		return nil
	}})
	t.Cleanup(func() { release.Do(func() { close(gate) }) }) // after start: cleanups run last-first
	c := dialRaw(t, e.addr, 4, "term-p", true)
	for i := 1; i <= 32; i++ {
		c.publish(1, uint16(i), false, "terminals/term-p/telemetry/t", []byte(fmt.Sprint(i)))
	}
	eventually(t, "the rest queued behind the held commit", func() bool {
		return firstBatch.Load() > 0 && int64(e.buf.Queued())+firstBatch.Load() == 32
	})
	release.Do(func() { close(gate) })
	for i := 1; i <= 32; i++ {
		if pid, _ := c.expectPuback(); pid != uint16(i) {
			t.Fatalf("PUBACK %d out of order: got pid %d", i, pid)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	biggest := 0
	for _, n := range batches {
		biggest = max(biggest, n)
	}
	if biggest < 16 {
		t.Fatalf("commit batches %v: one client's queued publishes were not committed together", batches)
	}
}

// A DUP retransmission of a stored message is acknowledged but not stored
// again, also after a restart; a reused packet id with new content is new.
func TestDupRetransmissionStoredOnce(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir, "", buffer.Options{})
	c := dialRaw(t, e.addr, 4, "term-d", false)
	topic := "terminals/term-d/payments/1"
	c.publish(1, 7, false, topic, []byte("a"))
	c.expectPuback()
	c.publish(1, 7, true, topic, []byte("a"))
	if pid, _ := c.expectPuback(); pid != 7 {
		t.Fatal(pid)
	}
	if n := total(e.buf); n != 1 {
		t.Fatalf("after DUP: %d stored, want 1", n)
	}
	c.publish(1, 7, false, topic, []byte("b")) // id reused after its PUBACK: a new message
	c.expectPuback()
	if n := total(e.buf); n != 2 {
		t.Fatalf("after reuse: %d stored, want 2", n)
	}
	e.stop()

	e = start(t, dir, "", buffer.Options{})
	c = dialRaw(t, e.addr, 4, "term-d", false)
	c.publish(1, 7, true, topic, []byte("b"))
	c.expectPuback()
	if n := total(e.buf); n != 2 {
		t.Fatalf("after restart and DUP: %d stored, want 2", n)
	}
}

func TestLocalSubscribersAndUnrouted(t *testing.T) {
	e := start(t, "", "acl: {subscribe: ['#'], publish: ['#']}\n", buffer.Options{})
	got := make(chan string, 10)
	sub := pahoClient(t, e.addr, "dashboard", nil)
	if tok := sub.Subscribe("#", 1, func(_ paho.Client, m paho.Message) { got <- m.Topic() + "=" + string(m.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	pub := pahoClient(t, e.addr, "term-l", nil)
	if tok := pub.Publish("terminals/term-l/telemetry/x", 1, false, "42"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	select {
	case m := <-got:
		if m != "terminals/term-l/telemetry/x=42" {
			t.Fatal(m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("local subscriber got nothing")
	}
	if total(e.buf) != 1 {
		t.Fatal("routed publish not buffered")
	}

	// unrouted: reject
	v5 := dialRaw(t, e.addr, 5, "edge-app", true)
	v5.publish(1, 9, false, "factory/line1", []byte("x"))
	if pid, code := v5.expectPuback(); pid != 9 || code != 0x90 {
		t.Fatalf("unrouted v5: pid %d code %#x, want 0x90", pid, code)
	}
	v3 := dialRaw(t, e.addr, 4, "edge-app3", true)
	v3.publish(1, 9, false, "factory/line1", []byte("x"))
	if code := v3.expectClosed(); code > 0 {
		t.Fatalf("v3 got a reason code %d", code)
	}
	if total(e.buf) != 1 {
		t.Fatal("unrouted publish was buffered")
	}
}

func TestUnroutedLocal(t *testing.T) {
	e := start(t, "", "unrouted: local\nacl: {subscribe: ['#'], publish: ['#']}\n", buffer.Options{})
	got := make(chan string, 1)
	sub := pahoClient(t, e.addr, "dashboard", nil)
	sub.Subscribe("factory/#", 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) }).WaitTimeout(5 * time.Second)
	pub := pahoClient(t, e.addr, "plc", nil)
	if tok := pub.Publish("factory/line1", 1, false, "on"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("local delivery missing")
	}
	if total(e.buf) != 0 {
		t.Fatal("unrouted local publish reached the buffer")
	}
}

// Garbage, a broken session and an oversized packet each end only their own
// connection; a normal client keeps publishing meanwhile.
func TestBadInputAffectsOnlyThatConnection(t *testing.T) {
	e := start(t, "", "", buffer.Options{})
	good := pahoClient(t, e.addr, "term-good", nil)
	publishOK := func(i int) {
		t.Helper()
		tok := good.Publish("terminals/term-good/payments/1", 1, false, fmt.Sprint(i))
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("good client publish %d: %v", i, tok.Error())
		}
	}
	publishOK(0)

	// random bytes
	for i := 0; i < 5; i++ {
		conn, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		junk := make([]byte, 512)
		rand.Read(junk)
		conn.Write(junk)
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 64)
		for {
			if _, err := conn.Read(buf); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					// The junk happened to look like a long CONNECT still arriving;
					// the server waits for it, which is fine as long as others work.
				}
				break
			}
		}
		conn.Close()
		publishOK(i + 1)
	}

	// CONNECT, then garbage
	c := dialRaw(t, e.addr, 4, "term-junk", true)
	c.conn.Write([]byte{0xF0, 0x03, 1, 2, 3}) // reserved packet type 15
	c.expectClosed()
	publishOK(10)

	// oversized publish: MQTT 5 gets DISCONNECT 0x95, 3.1.1 is closed
	big := []byte(strings.Repeat("x", 5000))
	c5 := dialRaw(t, e.addr, 5, "term-big5", true)
	c5.publish(1, 1, false, "terminals/term-big5/payments/1", big)
	if code := c5.expectClosed(); code != 0x95 {
		t.Fatalf("v5 oversized: disconnect code %#x, want 0x95", code)
	}
	c3 := dialRaw(t, e.addr, 4, "term-big3", true)
	c3.publish(1, 1, false, "terminals/term-big3/payments/1", big)
	c3.expectClosed()
	publishOK(11)

	// a wildcard in a topic name: 3.1.1 closed, 5 gets DISCONNECT 0x90
	w5 := dialRaw(t, e.addr, 5, "term-w5", true)
	w5.publish(1, 1, false, "terminals/+/payments", []byte("x"))
	if code := w5.expectClosed(); code != 0x90 {
		t.Fatalf("wildcard topic: code %#x", code)
	}
	publishOK(12)
	if n := total(e.buf); n != 9 {
		t.Fatalf("%d stored, want the good client's 9", n)
	}
}

func TestACL(t *testing.T) {
	e := start(t, "", "", buffer.Options{})
	v5 := dialRaw(t, e.addr, 5, "term-a", true)
	v5.publish(1, 3, false, "terminals/term-b/payments/1", []byte("x"))
	if pid, code := v5.expectPuback(); pid != 3 || code != 0x87 {
		t.Fatalf("foreign publish v5: pid %d code %#x, want 0x87", pid, code)
	}
	v3 := dialRaw(t, e.addr, 4, "term-a3", true)
	v3.publish(1, 3, false, "terminals/term-b/payments/1", []byte("x"))
	v3.expectClosed()

	within := []struct {
		sub, allowed string
		want         bool
	}{
		{"terminals/a/#", "terminals/a/#", true},
		{"terminals/a/receipts", "terminals/a/#", true},
		{"terminals/a", "terminals/a/#", true},
		{"terminals/+/receipts", "terminals/a/#", false},
		{"#", "terminals/a/#", false},
		{"terminals/#", "terminals/a/#", false},
		{"terminals/a/+", "terminals/+/#", true},
		{"$SYS/x", "#", false},
	}
	for _, c := range within {
		if got := filterWithin(c.sub, c.allowed); got != c.want {
			t.Errorf("filterWithin(%q, %q) = %v", c.sub, c.allowed, got)
		}
	}
	if total(e.buf) != 0 {
		t.Fatal("denied publish stored")
	}
}

// Broker sessions survive a restart: a persistent subscriber's subscription
// is still there, and a QoS 1 message published while it was offline (and
// the broker restarted) reaches it when it reconnects.
func TestSessionsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir, "acl: {subscribe: ['#'], publish: ['#']}\n", buffer.Options{})
	opts := func(addr string, got chan string) *paho.ClientOptions {
		return paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID("dashboard").
			SetCleanSession(false).SetAutoReconnect(false).
			SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) })
	}
	got := make(chan string, 10)
	sub := paho.NewClient(opts(e.addr, got))
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if tok := sub.Subscribe("terminals/+/payments/#", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	sub.Disconnect(0)
	pub := dialRaw(t, e.addr, 4, "term-s", true)
	pub.publish(1, 1, false, "terminals/term-s/payments/1", []byte("while-offline"))
	pub.expectPuback()
	e.stop()

	e = start(t, dir, "acl: {subscribe: ['#'], publish: ['#']}\n", buffer.Options{})
	sub = paho.NewClient(opts(e.addr, got))
	tok := sub.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer sub.Disconnect(0)
	if !tok.(*paho.ConnectToken).SessionPresent() {
		t.Fatal("session not present after restart")
	}
	select {
	case m := <-got:
		if m != "while-offline" {
			t.Fatal(m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("message queued for the offline session was not delivered after restart")
	}
	pub = dialRaw(t, e.addr, 4, "term-s", true)
	pub.publish(1, 2, false, "terminals/term-s/payments/2", []byte("after"))
	pub.expectPuback()
	select {
	case m := <-got:
		if m != "after" {
			t.Fatal(m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("subscription lost across restart")
	}
}

// A full reject route refuses: MQTT 5 gets 0x97 (quota exceeded), 3.1.1 is
// disconnected; nothing already stored is lost; drop_oldest keeps accepting.
func TestFullRouteRefusesOrEvicts(t *testing.T) {
	e := start(t, "", "", buffer.Options{Limits: buffer.Limits{Routes: func(r string) (buffer.Policy, bool) {
		switch r {
		case "payments":
			return buffer.Policy{MaxBytes: 400, OnFull: "reject"}, true
		case "telemetry":
			return buffer.Policy{MaxBytes: 400, Priority: 5, OnFull: "drop_oldest"}, true
		}
		return buffer.Policy{}, false
	}}})
	v5 := dialRaw(t, e.addr, 5, "term-f", true)
	stored := 0
	for i := 1; ; i++ {
		v5.publish(1, uint16(i), false, "terminals/term-f/payments/1", []byte("payment-payload-of-some-size"))
		pid, code := v5.expectPuback()
		if pid != uint16(i) {
			t.Fatal(pid)
		}
		if code == 0x97 {
			break
		}
		if code != 0 || i > 100 {
			t.Fatalf("publish %d: code %#x", i, code)
		}
		stored++
	}
	v3 := dialRaw(t, e.addr, 4, "term-g", true)
	v3.publish(1, 1, false, "terminals/term-g/payments/1", []byte("payment-payload-of-some-size"))
	v3.expectClosed()
	if st := e.buf.Stats()["payments"]; st.Messages != int64(stored) {
		t.Fatalf("payments stored %d, acknowledged %d", st.Messages, stored)
	}
	tele := dialRaw(t, e.addr, 4, "term-h", true)
	for i := 1; i <= 50; i++ {
		tele.publish(1, uint16(i), false, "terminals/term-h/telemetry/1", []byte("telemetry-payload-of-some-size"))
		if _, code := tele.expectPuback(); code != 0 {
			t.Fatal(code)
		}
	}
	if d := e.buf.Drops()["telemetry"][buffer.DropDropOldest]; d == 0 {
		t.Fatal("drop_oldest route did not evict")
	}
	if e.brk.Refused()["payments"] != 2 {
		t.Fatalf("refusals counted: %v", e.brk.Refused())
	}
}

// At the global disk budget, a publish that cannot be made room for (only
// reject routes hold data) is refused the same way: 0x97 for MQTT 5, a
// disconnect for 3.1.1; what was acknowledged stays.
func TestGlobalBudgetRefuses(t *testing.T) {
	e := start(t, "", "", buffer.Options{Limits: buffer.Limits{MaxDiskBytes: 600, Routes: func(r string) (buffer.Policy, bool) {
		return buffer.Policy{OnFull: "reject"}, true
	}}})
	v3 := dialRaw(t, e.addr, 4, "term-k", true)
	acked := 0
	for i := 1; i < 100; i++ {
		v3.publish(1, uint16(i), false, "terminals/term-k/telemetry/1", []byte("telemetry-payload-of-some-size"))
		typ, body, err := v3.tryRead(10 * time.Second)
		if err != nil {
			break // disconnected: the budget is full
		}
		if typ != 4 || len(body) > 2 {
			t.Fatalf("unexpected packet %d %v", typ, body)
		}
		acked++
	}
	if acked == 0 || acked >= 99 {
		t.Fatalf("%d acknowledged before the budget refused", acked)
	}
	v5 := dialRaw(t, e.addr, 5, "term-l", true)
	v5.publish(1, 1, false, "terminals/term-l/payments/1", []byte(strings.Repeat("p", 200)))
	if _, code := v5.expectPuback(); code != 0x97 {
		t.Fatalf("v5 at the global budget: code %#x, want 0x97", code)
	}
	if n := total(e.buf); n != int64(acked) {
		t.Fatalf("%d stored, %d acknowledged", n, acked)
	}
}

// Invariant 5 (bounded): while commits are held, one client flooding
// publishes has at most mqtt.max_inflight of them in memory; the rest wait
// in TCP (the broker stops reading that client), and all are acknowledged
// once commits resume.
func TestClientInflightIsBounded(t *testing.T) {
	gate := make(chan struct{})
	var release sync.Once
	var held atomic.Bool
	var inHeld atomic.Int64 // publishes inside the held commit
	e := start(t, "", "", buffer.Options{
		BeforeCommit: func(seqs []uint64) error {
			if held.CompareAndSwap(false, true) {
				inHeld.Store(int64(len(seqs)))
				<-gate
			}
			return nil
		},
	}, "GATEWAY_MQTT_MAX_INFLIGHT=8")
	// after start: cleanups run last-first, and stopping waits for the commit
	t.Cleanup(func() { release.Do(func() { close(gate) }) })
	c := dialRaw(t, e.addr, 4, "term-flood", true)
	for i := 1; i <= 100; i++ {
		c.publish(1, uint16(i), false, "terminals/term-flood/telemetry/t", []byte("x"))
	}
	eventually(t, "the first commit to be held", held.Load)
	inMemory := func() int64 { return inHeld.Load() + int64(e.buf.Queued()) }
	eventually(t, "the client's in-flight window to fill", func() bool { return inMemory() >= 8 })
	time.Sleep(300 * time.Millisecond) // give a leak the chance to show
	if n := inMemory(); n > 8 {
		t.Fatalf("%d publishes of one client held in memory, max_inflight is 8", n)
	}
	release.Do(func() { close(gate) })
	for i := 1; i <= 100; i++ {
		if pid, _ := c.expectPuback(); pid != uint16(i) {
			t.Fatalf("PUBACK %d: pid %d", i, pid)
		}
	}
}
