package broker

import (
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/gateway/buffer"
)

// The ingest path remembers per topic that no local subscriber wants it; a
// SUBSCRIBE that comes later must be seen by the next publish, and an
// UNSUBSCRIBE must stop delivery (every publish stored once all along).
func TestLocalSubscriberAfterTopicWasCached(t *testing.T) {
	e := start(t, "", "acl: {subscribe: ['#'], publish: ['#']}\n", buffer.Options{})
	const topic = "terminals/term-cache/telemetry"
	c := dialRaw(t, e.addr, 4, "term-cache", true)
	send := func(pid uint16) {
		t.Helper()
		c.publish(1, pid, false, topic, []byte{byte(pid)})
		if got, code := c.expectPuback(); got != pid || code != 0 {
			t.Fatalf("PUBACK %d code %#x, want %d", got, code, pid)
		}
	}
	for pid := uint16(1); pid <= 5; pid++ {
		send(pid) // no subscriber: remembered
	}
	got := make(chan byte, 10)
	sub := pahoClient(t, e.addr, "dashboard", nil)
	if tok := sub.Subscribe("terminals/+/telemetry", 1, func(_ paho.Client, m paho.Message) { got <- m.Payload()[0] }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	send(6)
	select {
	case b := <-got:
		if b != 6 {
			t.Fatalf("subscriber got %d, want 6", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a publish after the SUBSCRIBE did not reach the new local subscriber")
	}
	if tok := sub.Unsubscribe("terminals/+/telemetry"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	send(7)
	select {
	case b := <-got:
		t.Fatalf("delivered %d after the UNSUBSCRIBE", b)
	case <-time.After(300 * time.Millisecond):
	}
	if n := total(e.buf); n != 7 {
		t.Fatalf("%d stored, want 7", n)
	}
}
