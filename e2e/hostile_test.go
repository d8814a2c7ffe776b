package e2e

import (
	"encoding/binary"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/edgegw/gateway/internal/rawmqtt"
	"github.com/edgegw/gateway/internal/testkit"
)

// Hostile terminals (issue 23): one logged-in terminal tries to take the
// box down, speak for another terminal or eat the box's memory. Each test
// plays the attack against the real binary and checks that only the
// attacker is affected.

// rawConnect logs in with rawmqtt and fails the test on refusal.
func rawConnect(t *testing.T, addr string, o rawmqtt.Options) *rawmqtt.Conn {
	t.Helper()
	c, err := rawmqtt.Connect(addr, o)
	if err != nil {
		t.Fatalf("connect %s: %v", o.ClientID, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// alive checks that the process still runs and that another terminal's
// payment is still acknowledged.
func (g *gatewayProc) alive(t *testing.T, id string) {
	t.Helper()
	select {
	case <-g.exited:
		t.Fatalf("the gateway process died:\n%s", tail(g.logs, 40))
	default:
	}
	c := rawConnect(t, g.mqttAddr, rawmqtt.Options{ClientID: id, Clean: true})
	defer c.Close()
	if err := c.Publish(1, false, 1, "terminals/"+id+"/payments/p1", nil, []byte("pay")); err != nil {
		t.Fatal(err)
	}
	body, err := c.ReadType(4, 20*time.Second)
	if err != nil || len(body) < 2 || binary.BigEndian.Uint16(body) != 1 || (len(body) > 2 && body[2] != 0) {
		t.Fatalf("%s's payment not acknowledged: %x %v", id, body, err)
	}
}

// Finding 1: an MQTT 5 SUBSCRIBE whose filter lacks its options byte panicked
// mochi v2.7.9's decoder and killed the process. Now the attacker alone is
// disconnected (0x81 malformed packet), counted, and the box keeps taking
// payments.
func TestHostileSubscribeWithoutOptionsByte(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()
	bystander := rawConnect(t, g.mqttAddr, rawmqtt.Options{ClientID: "term-2", Clean: true})

	for i := 0; i < 3; i++ {
		att := rawConnect(t, g.mqttAddr, rawmqtt.Options{ClientID: "term-1", Clean: true})
		body := binary.BigEndian.AppendUint16(nil, 7)
		body = append(body, 0) // no properties
		body = rawmqtt.AppendString(body, "terminals/term-1/receipts")
		// the options byte is missing
		if err := att.Send(0x82, body); err != nil {
			t.Fatal(err)
		}
		code, ended := att.Closed(10 * time.Second)
		if !ended {
			t.Fatal("the attacker's connection is still open")
		}
		if code != 0x81 {
			t.Errorf("attacker got DISCONNECT %#x, want 0x81 (malformed packet)", code)
		}
		g.alive(t, "term-3")
	}
	if n := g.metric("gateway_mqtt_malformed_packets_total"); n != 3 {
		t.Errorf("gateway_mqtt_malformed_packets_total %v, want 3", n)
	}
	// the bystander's connection was never touched
	if err := bystander.Publish(1, false, 9, "terminals/term-2/payments/p9", nil, []byte("pay")); err != nil {
		t.Fatal(err)
	}
	if _, err := bystander.ReadType(4, 20*time.Second); err != nil {
		t.Fatalf("bystander: %v", err)
	}
}

// metricSum adds up every series of a metric whose labels contain match
// (e.g. `reason="inflight_full"`; "" for all); -1 when there is none.
func (g *gatewayProc) metricSum(name, match string) float64 {
	g.t.Helper()
	resp, err := http.Get("http://" + g.admin + "/metrics")
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	sum, found := 0.0, false
	for _, m := range regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(name)+`(\{[^}]*\})? (\S+)$`).FindAllSubmatch(body, -1) {
		if match != "" && !regexp.MustCompile(regexp.QuoteMeta(match)).Match(m[1]) {
			continue
		}
		v, _ := strconv.ParseFloat(string(m[2]), 64)
		sum += v
		found = true
	}
	if !found {
		return -1
	}
	return sum
}
