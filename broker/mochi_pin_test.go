package broker

import (
	"bytes"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/internal/testkit"
)

// Pins of mochi v2.7.9 behaviour the ingest path leans on (see
// docs/architecture.md, "Where correctness leans on a library's
// behaviour"). Each fails loudly when an upgrade changes what it pins.

// A stored publish that local subscribers want goes back into mochi with
// InjectPacket, marked in Mods.MaxSize (injectMark): mochi must keep the
// mark into OnPublish (else the publish would be stored twice) and re-enter
// the hooks for the same client before InjectPacket returns (else the
// session store's isInjecting check would miss it). The subscriber gets it
// once, the terminal its PUBACK once, the buffer holds it once.
func TestPinInjectKeepsMarkAndReenters(t *testing.T) {
	e := start(t, "", "acl: {subscribe: ['#'], publish: ['#']}\n", buffer.Options{})
	got := make(chan string, 10)
	sub := pahoClient(t, e.addr, "dashboard", nil)
	if tok := sub.Subscribe("terminals/#", 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	c := dialRaw(t, e.addr, 4, "term-pin", true)
	for pid := uint16(1); pid <= 20; pid++ {
		c.publish(1, pid, false, "terminals/term-pin/telemetry", []byte{byte(pid)})
		if got, _ := c.expectPuback(); got != pid {
			t.Fatalf("PUBACK for %d, want %d", got, pid)
		}
	}
	for i := 0; i < 20; i++ {
		select {
		case <-got:
		case <-time.After(10 * time.Second):
			t.Fatalf("subscriber got %d of 20", i)
		}
	}
	select {
	case m := <-got:
		t.Fatalf("subscriber got a copy more: %q", m)
	case <-time.After(200 * time.Millisecond):
	}
	if n := total(e.buf); n != 20 {
		t.Fatalf("%d stored, want 20: a re-injected publish was taken for a new one", n)
	}
}

// The PUBACKs of stored publishes are written as raw bytes (ingest.go,
// writeRaw): type 4, remaining length 2, the packet id; for MQTT 5 a
// success needs no reason code. A client must read exactly that.
func TestPinRawPubackBytes(t *testing.T) {
	e := start(t, "", "", buffer.Options{})
	for _, v := range []byte{4, 5} {
		c := dialRaw(t, e.addr, v, "term-raw", true)
		c.publish(1, 0x1234, false, "terminals/term-raw/payments/1", []byte("x"))
		typ, body := c.read()
		if typ != 4 || !bytes.Equal(body, []byte{0x12, 0x34}) {
			t.Fatalf("MQTT %d PUBACK: type %d body %x, want type 4 body 1234", v, typ, body)
		}
		c.conn.Close()
	}
}

// OnPublish answers mochi with the publish marked Ignore, at QoS 0 and not
// retained (ingest.go, ignored): mochi must then send no PUBACK, retain
// nothing and deliver nothing, while the commit is still pending; after
// the commit the acker's inject does all three, once.
func TestPinIgnoredPublishIsSilent(t *testing.T) {
	gate := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(gate) }) }
	e := start(t, "", "acl: {subscribe: ['#'], publish: ['#']}\n", buffer.Options{BeforeCommit: func([]uint64) error {
		<-gate
		return nil
	}})
	defer open()
	got := make(chan string, 10)
	sub := pahoClient(t, e.addr, "dashboard", nil)
	if tok := sub.Subscribe("terminals/#", 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	c := dialRaw(t, e.addr, 5, "term-silent", true)
	var body []byte
	body = appendStr(body, "terminals/term-silent/telemetry/state")
	body = binary.BigEndian.AppendUint16(body, 7)
	body = append(body, 0) // no properties
	body = append(body, "on"...)
	c.send(0x30|1<<1|1, body) // PUBLISH, QoS 1, retain

	if typ, b, err := c.tryRead(300 * time.Millisecond); err == nil {
		t.Fatalf("packet type %d %v before the commit", typ, b)
	}
	select {
	case m := <-got:
		t.Fatalf("delivered before the commit: %q", m)
	default:
	}
	retained := func() int { return len(e.brk.server.Topics.Messages("terminals/term-silent/telemetry/state")) }
	if n := retained(); n != 0 {
		t.Fatalf("%d retained before the commit", n)
	}

	open()
	if pid, code := c.expectPuback(); pid != 7 || code != 0 {
		t.Fatalf("PUBACK %d code %#x, want 7 success", pid, code)
	}
	select {
	case m := <-got:
		if m != "on" {
			t.Fatalf("subscriber got %q", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("subscriber got nothing after the commit")
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return retained() == 1 }, "not retained after the commit")
	select {
	case m := <-got:
		t.Fatalf("a second copy: %q", m)
	case <-time.After(200 * time.Millisecond):
	}
}
