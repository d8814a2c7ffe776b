package broker

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/internal/rawmqtt"
	"github.com/edgegw/gateway/internal/testkit"
)

func retainedEnv() []string {
	return []string{"GATEWAY_UNROUTED=local",
		"GATEWAY_MQTT_MAX_RETAINED_MESSAGES=5", "GATEWAY_MQTT_MAX_RETAINED_BYTES=4KiB",
		"GATEWAY_MQTT_MAX_RETAINED_MESSAGES_PER_CLIENT=3", "GATEWAY_MQTT_MAX_RETAINED_BYTES_PER_CLIENT=1KiB"}
}

// Retained messages are bounded per client and in total, in count and
// bytes: a retained publish beyond a bound is refused whole (MQTT 5 0x97,
// QoS 0 not retained, 3.1.1 disconnected); replacing or clearing one's own
// retained message always fits; the bounds hold across a restart.
func TestRetainedBounds(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir, "acl: {subscribe: ['#'], publish: ['#']}\n", buffer.Options{}, retainedEnv()...)
	a := dialRaw(t, e.addr, 5, "a", true)
	pub := func(c *rawClient, pid uint16, topic string, size int) byte {
		t.Helper()
		c.send(0x33, append(append(append(appendStr(nil, topic), byte(pid>>8), byte(pid)), 0), bytes.Repeat([]byte("x"), size)...))
		got, code := c.expectPuback()
		if got != pid {
			t.Fatalf("PUBACK %d, want %d", got, pid)
		}
		return code
	}
	for i, c := range []struct {
		topic string
		size  int
		want  byte
	}{
		{"a/1", 100, 0}, {"a/2", 100, 0}, {"a/3", 100, 0},
		{"a/4", 100, 0x97},  // a's fourth
		{"a/1", 300, 0},     // replacing its own: fits
		{"a/2", 0, 0},       // clearing: always
		{"a/5", 900, 0x97},  // a's bytes: 300+100+900 > 1 KiB
		{"a/5", 500, 0},     // 300+100+500 fits
		{"a/6", 2000, 0x97}, // one message beyond the client's bytes
	} {
		if code := pub(a, uint16(i+1), c.topic, c.size); code != c.want {
			t.Fatalf("step %d (%s, %d bytes): PUBACK code %#x, want %#x", i, c.topic, c.size, code, c.want)
		}
	}
	b := dialRaw(t, e.addr, 5, "b", true)
	if code := pub(b, 1, "b/1", 10); code != 0 {
		t.Fatalf("b's first: %#x", code)
	}
	if code := pub(b, 2, "b/2", 10); code != 0 {
		t.Fatalf("b's second: %#x", code)
	}
	if code := pub(b, 3, "b/3", 10); code != 0x97 { // 3 of a + 2 of b = 5 in total
		t.Fatalf("b's third, beyond the total: %#x, want 0x97", code)
	}
	// QoS 0 beyond a bound: not retained
	b.send(0x31, append(append(appendStr(nil, "b/4"), 0), 'x'))
	// 3.1.1 beyond a bound: disconnected
	v3 := dialRaw(t, e.addr, 4, "c", true)
	v3.send(0x33, append(append(appendStr(nil, "c/1"), 0, 1), 'x'))
	v3.expectClosed()
	if n, _ := e.brk.retained.usage(); n != 5 {
		t.Fatalf("%d retained, want 5", n)
	}
	if len(e.brk.server.Topics.Messages("b/4")) != 0 || len(e.brk.server.Topics.Messages("a/4")) != 0 {
		t.Fatal("a publish beyond the bounds was retained")
	}

	// after a restart the book is what sessions.db held
	e.stop()
	e = start(t, dir, "acl: {subscribe: ['#'], publish: ['#']}\n", buffer.Options{}, retainedEnv()...)
	if n, _ := e.brk.retained.usage(); n != 5 {
		t.Fatalf("%d retained after the restart, want 5", n)
	}
	a = dialRaw(t, e.addr, 5, "a", true)
	if code := pub(a, 1, "a/7", 10); code != 0x97 {
		t.Fatalf("after the restart: %#x, want 0x97", code)
	}
}

// No retained message on a receipts topic: a retained publish there is
// refused (0x87), a retained will is refused at CONNECT, and one left in
// sessions.db by an older release is removed at start.
func TestNoRetainedOnReceiptsTopics(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir, "acl: {subscribe: ['#'], publish: ['#']}\n", buffer.Options{}, "GATEWAY_UNROUTED=local")
	c := dialRaw(t, e.addr, 5, "term-1", true)
	c.send(0x33, append(append(appendStr(nil, "terminals/term-1/receipts"), 0, 1, 0), "approved"...))
	if _, code := c.expectPuback(); code != 0x87 {
		t.Fatalf("retained publish on a receipts topic: %#x, want 0x87", code)
	}
	_, err := rawmqtt.Connect(e.addr, rawmqtt.Options{ClientID: "term-2", Clean: true,
		Will: &rawmqtt.Will{Topic: "terminals/term-2/receipts", Payload: []byte("approved"), Retain: true}})
	if !errors.Is(err, rawmqtt.ErrRefused) || !strings.Contains(err.Error(), "0x87") {
		t.Fatalf("retained will on a receipts topic: %v, want refused 0x87", err)
	}
	// as an older release could leave it
	if err := e.brk.server.Publish("terminals/term-3/receipts", []byte("approved"), true, 0); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return len(e.brk.server.Topics.Messages("terminals/term-3/receipts")) == 1 }, "planted")
	e.stop()
	e = start(t, dir, "", buffer.Options{}, "GATEWAY_UNROUTED=local")
	if n := len(e.brk.server.Topics.Messages("terminals/term-3/receipts")); n != 0 {
		t.Fatalf("%d retained on a receipts topic after the restart", n)
	}
	if got := e.brk.store.withPrefix("RET_"); len(got) != 0 {
		t.Fatalf("sessions.db still holds %d retained messages", len(got))
	}
}

// A retained will beyond the bounds is sent, without being retained.
func TestRetainedWillBeyondBoundsIsNotRetained(t *testing.T) {
	e := start(t, "", "acl: {subscribe: ['#'], publish: ['#']}\n", buffer.Options{}, retainedEnv()...)
	sub := dialRaw(t, e.addr, 5, "watcher", true)
	sub.send(0x82, append(appendStr([]byte{0, 1, 0}, "w/#"), 0))
	sub.read()
	w, err := rawmqtt.Connect(e.addr, rawmqtt.Options{ClientID: "w", Clean: true,
		Will: &rawmqtt.Will{Topic: "w/status", Payload: bytes.Repeat([]byte("x"), 2000), Retain: true}})
	if err != nil {
		t.Fatal(err)
	}
	w.Close() // no DISCONNECT: the will goes
	if typ, _ := sub.read(); typ != 3 {
		t.Fatalf("watcher got packet type %d, want the will", typ)
	}
	if n := len(e.brk.server.Topics.Messages("w/status")); n != 0 {
		t.Fatal("the will was retained beyond the bounds")
	}
}
