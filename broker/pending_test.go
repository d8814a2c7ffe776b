package broker

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/internal/rawmqtt"
	"github.com/edgegw/gateway/internal/testkit"
)

// dialFrom opens a TCP connection to addr from the loopback address src.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedSoon reports whether the server closes c within d.
func closedSoon(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// Connections not logged in yet are bounded per address and in total: one
// more is closed at once, counted; a logged-in client never counts, and
// logging in frees the place.
func TestPendingConnectionBounds(t *testing.T) {
	e := start(t, "", "", buffer.Options{},
		"GATEWAY_MQTT_MAX_PENDING_CONNECTIONS=8", "GATEWAY_MQTT_MAX_PENDING_CONNECTIONS_PER_ADDRESS=5")
	for i := 0; i < 5; i++ {
		dialFrom(t, "127.0.0.1", e.addr)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return testutil.ToFloat64(e.brk.pending.gauge) == 5 }, "5 pending")
	if c := dialFrom(t, "127.0.0.1", e.addr); !closedSoon(c, 2*time.Second) {
		t.Fatal("a sixth silent connection from one address was kept")
	}
	for i := 0; i < 3; i++ {
		dialFrom(t, "127.0.0.2", e.addr)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return testutil.ToFloat64(e.brk.pending.gauge) == 8 }, "8 pending")
	if c := dialFrom(t, "127.0.0.3", e.addr); !closedSoon(c, 2*time.Second) {
		t.Fatal("a ninth silent connection was kept")
	}
	for _, reason := range []string{"pending_address", "pending_total"} {
		if n := testutil.ToFloat64(e.brk.pending.refused.WithLabelValues(reason)); n != 1 {
			t.Errorf("refused %s: %v, want 1", reason, n)
		}
	}
	// those silent ones time out (connect_timeout 10s); meanwhile nobody
	// else gets in ...
	if _, err := rawmqtt.Connect(e.addr, rawmqtt.Options{ClientID: "late", Clean: true, Timeout: 2 * time.Second}); err == nil {
		t.Fatal("a ninth connection logged in")
	}
	// ... until places free up: logged-in clients hold none
	testkit.Eventually(t, 20*time.Second, func() bool { return testutil.ToFloat64(e.brk.pending.gauge) == 0 }, "silent connections closed at the deadline")
	var logged []*rawmqtt.Conn
	for i := 0; i < 20; i++ {
		c, err := rawmqtt.Connect(e.addr, rawmqtt.Options{ClientID: fmt.Sprint("c", i), Clean: true})
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		logged = append(logged, c)
	}
	if n := testutil.ToFloat64(e.brk.pending.gauge); n != 0 {
		t.Fatalf("%v pending with 20 logged in", n)
	}
	for _, c := range logged {
		c.Close()
	}
}

// A receive maximum or maximum packet size of 0, or a property given
// twice, in an MQTT 5 CONNECT is a protocol error (0x82), counted.
func TestConnectPropertyProtocolErrors(t *testing.T) {
	e := start(t, "", "", buffer.Options{})
	for _, props := range [][]byte{
		rawmqtt.PropUint16(0x21, 0),
		rawmqtt.PropUint32(0x27, 0),
		append(rawmqtt.PropUint32(0x11, 10), rawmqtt.PropUint32(0x11, 20)...),
	} {
		_, err := rawmqtt.Connect(e.addr, rawmqtt.Options{ClientID: "p", Clean: true, Properties: props})
		if !errors.Is(err, rawmqtt.ErrRefused) || !strings.Contains(err.Error(), "0x82") {
			t.Fatalf("CONNECT properties %x: %v, want refused 0x82", props, err)
		}
	}
	c, err := rawmqtt.Connect(e.addr, rawmqtt.Options{ClientID: "p", Clean: true,
		Properties: append(rawmqtt.PropUint16(0x21, 10), rawmqtt.PropUint32(0x27, 1000)...)})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	n := testutil.ToFloat64(e.brk.loginRefused.WithLabelValues("receive_maximum_zero")) +
		testutil.ToFloat64(e.brk.loginRefused.WithLabelValues("maximum_packet_size_zero")) +
		testutil.ToFloat64(e.brk.loginRefused.WithLabelValues("duplicate_property"))
	if n != 3 {
		t.Fatalf("%v refusals counted, want 3", n)
	}
}
