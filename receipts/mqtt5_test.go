package receipts

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/edgegw/gateway/internal/testkit"
)

// terminal5 is an MQTT 5 terminal (paho.golang) that records the receipts it
// gets with their properties.
type terminal5 struct {
	c   *paho.Client
	mu  sync.Mutex
	got []*paho.Publish
}

func (tm *terminal5) received() []*paho.Publish {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return append([]*paho.Publish(nil), tm.got...)
}

func (tm *terminal5) payloads() []string {
	var out []string
	for _, p := range tm.received() {
		out = append(out, string(p.Payload))
	}
	return out
}

func connect5(t *testing.T, addr, id string) *terminal5 {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tm := &terminal5{}
	tm.c = paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			tm.mu.Lock()
			tm.got = append(tm.got, pr.Packet)
			tm.mu.Unlock()
			return true, nil
		}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ca, err := tm.c.Connect(ctx, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30})
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect %s: %v (connack %+v)", id, err, ca)
	}
	t.Cleanup(func() { _ = tm.c.Disconnect(&paho.Disconnect{}) })
	return tm
}

func (tm *terminal5) subscribe(t *testing.T, filter string, qos byte) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sa, err := tm.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
	if sa == nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	// paho returns an error as well as the SUBACK when the code is a failure.
	if len(sa.Reasons) != 1 {
		t.Fatalf("subscribe %s: %d reason codes", filter, len(sa.Reasons))
	}
	return sa.Reasons[0]
}

func (tm *terminal5) publish(t *testing.T, topic string, payload []byte) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pr, err := tm.c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload})
	if pr == nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
	return pr.ReasonCode
}

// Over MQTT 5, a receipt's Kafka headers arrive as user properties and the
// header mqtt.correlation_data as the correlation data (CONTRACT §4); the
// ACL answers a foreign subscription and a publish to another device's
// receipts topic with 0x87, and no receipt of B's reaches A.
func TestMQTT5PropertiesAndACL(t *testing.T) {
	e := newEnv(t, "")
	a := connect5(t, e.addr, "term-a")
	b := connect5(t, e.addr, "term-b")
	if code := b.subscribe(t, "terminals/term-b/receipts", 1); code != 1 {
		t.Fatalf("own subscribe: reason %#x, want 0x01", code)
	}
	for _, f := range []string{"terminals/term-b/receipts", "terminals/+/receipts", "#"} {
		if code := a.subscribe(t, f, 1); code != 0x87 {
			t.Fatalf("A subscribing %s: reason %#x, want 0x87 (not authorized)", f, code)
		}
	}
	if code := a.publish(t, "terminals/term-b/receipts", []byte("forged")); code != 0x87 {
		t.Fatalf("A publishing to B's receipts: reason %#x, want 0x87", code)
	}
	if code := a.subscribe(t, "terminals/term-a/receipts", 1); code != 1 {
		t.Fatalf("A's own subscribe: reason %#x", code)
	}

	e.produce("term-b", 0, 1,
		kgo.RecordHeader{Key: "mqtt.correlation_data", Value: []byte{0x00, 0xff, 'c', 'i', 'd'}},
		kgo.RecordHeader{Key: "receipt.kind", Value: []byte("sale")},
		kgo.RecordHeader{Key: "amount", Value: []byte("12.50")})
	testkit.Eventually(t, 30*time.Second, func() bool { return len(b.received()) == 1 }, "B got %d receipts", len(b.received()))
	p := b.received()[0]
	if p.Topic != "terminals/term-b/receipts" || string(p.Payload) != "term-b/0" || p.QoS != 1 {
		t.Fatalf("receipt %s %q qos %d", p.Topic, p.Payload, p.QoS)
	}
	if p.Properties == nil || string(p.Properties.CorrelationData) != "\x00\xffcid" {
		t.Fatalf("correlation data %q, want %q", p.Properties.CorrelationData, "\x00\xffcid")
	}
	props := map[string]string{}
	for _, u := range p.Properties.User {
		props[u.Key] = u.Value
	}
	if len(props) != 2 || props["receipt.kind"] != "sale" || props["amount"] != "12.50" {
		t.Fatalf("user properties %v, want receipt.kind=sale amount=12.50 and nothing else", p.Properties.User)
	}

	// A still gets only its own receipt, and nothing of B's.
	e.produce("term-a", 0, 1)
	testkit.Eventually(t, 30*time.Second, func() bool { return len(a.received()) >= 1 }, "A got nothing")
	if got := a.payloads(); len(got) != 1 || got[0] != "term-a/0" {
		t.Fatalf("A got %q, want only term-a/0", got)
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return e.totalPending() == 0 }, "pending %v", e.rc.Pending())
}

// With receipts.qos 2 the terminal's PUBCOMP completes the delivery: one
// confirmation per receipt, the outbox empties, and the next receipt goes
// out after the first is complete (order kept). A subscription at QoS 1
// lowers it to 1, which completes on PUBACK.
func TestQoS2Receipts(t *testing.T) {
	for _, subQoS := range []byte{2, 1} {
		t.Run(fmt.Sprintf("sub-qos-%d", subQoS), func(t *testing.T) {
			e := newEnv(t, "receipts: {qos: 2}\n")
			tm := connect5(t, e.addr, "term-q")
			tm.subscribe(t, "terminals/term-q/receipts", subQoS)
			e.produce("term-q", 0, 5)
			testkit.Eventually(t, 30*time.Second, func() bool { return len(tm.received()) >= 5 },
				"terminal got %d receipts, want 5", len(tm.received()))
			if got := tm.payloads(); !equal(got, want("term-q", 0, 5)) {
				t.Fatalf("got %q", got)
			}
			for _, p := range tm.received() {
				if p.QoS != subQoS {
					t.Fatalf("delivered at QoS %d, want %d", p.QoS, subQoS)
				}
			}
			testkit.Eventually(t, 10*time.Second, func() bool { return e.totalPending() == 0 }, "pending %v", e.rc.Pending())
			cons := testkit.Consume(t, e.kafka.Addrs, []string{confirmTopic})
			if recs := cons.WaitN(t, 5, 30*time.Second); len(recs) != 5 {
				t.Fatalf("%d confirmations, want 5", len(recs))
			}
			if all := cons.Poll(500 * time.Millisecond); len(all) != 5 {
				t.Fatalf("%d confirmations for 5 receipts", len(all))
			}
		})
	}
}

// QoS 2 to a 3.1.1 persistent session: receipts stored while it is offline
// arrive after it reconnects, each completed by PUBCOMP, in order.
func TestQoS2PersistentSession311(t *testing.T) {
	e := newEnv(t, "receipts: {qos: 2}\n")
	tm := connect(t, e.addr, "term-q", false)
	if tok := tm.c.Subscribe("terminals/term-q/receipts", 2, nil); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	e.produce("term-q", 0, 3)
	waitReceived(t, tm, want("term-q", 0, 3))
	testkit.Eventually(t, 10*time.Second, func() bool { return e.totalPending() == 0 }, "pending %v", e.rc.Pending())
	tm.c.Disconnect(100)
	e.produce("term-q", 3, 6)
	testkit.Eventually(t, 30*time.Second, func() bool { return e.pending("term-q") == 3 }, "stored: %v", e.rc.Pending())
	tm2 := connect(t, e.addr, "term-q", false)
	waitReceived(t, tm2, want("term-q", 3, 6))
	testkit.Eventually(t, 10*time.Second, func() bool { return e.totalPending() == 0 }, "pending %v", e.rc.Pending())
	cons := testkit.Consume(t, e.kafka.Addrs, []string{confirmTopic})
	cons.WaitN(t, 6, 30*time.Second)
	if all := cons.Poll(500 * time.Millisecond); len(all) != 6 {
		t.Fatalf("%d confirmations for 6 receipts", len(all))
	}
}

// Drops are counted by reason: a record naming no valid device, and
// receipts older than max_age.
func TestDroppedByReason(t *testing.T) {
	e := newEnv(t, "receipts: {max_age: 300ms}\n")
	e.produce("term-x", 0, 2)
	e.produce("bad/device", 0, 1)
	testkit.Eventually(t, 30*time.Second, func() bool { return e.rc.Dropped() == 3 }, "dropped %d", e.rc.Dropped())
	if d := e.rc.DroppedByReason(); d["max_age"] != 2 || d["invalid_device"] != 1 {
		t.Fatalf("dropped by reason %v, want max_age 2, invalid_device 1", d)
	}
}
