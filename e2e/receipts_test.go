package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/edgegw/gateway/internal/testkit"
)

const receiptsTopic = "receipts.e2e-gw" // receipts.{gateway_id} with the id newGateway writes

// receiptsPending reads receipts.pending_total from /status (-1 if unreadable).
func (g *gatewayProc) receiptsPending() int64 {
	resp, err := http.Get("http://" + g.admin + "/status")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var st struct {
		Receipts *struct {
			PendingTotal int64 `json:"pending_total"`
		} `json:"receipts"`
	}
	if json.NewDecoder(resp.Body).Decode(&st) != nil || st.Receipts == nil {
		return -1
	}
	return st.Receipts.PendingTotal
}

// receiver is a terminal that records the receipts it gets.
type receiver struct {
	mu  sync.Mutex
	got []string
}

func (r *receiver) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...)
}

func receiptClient(t *testing.T, addr, id string, clean bool, r *receiver) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetCleanSession(clean).
		SetAutoReconnect(false).SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			r.mu.Lock()
			r.got = append(r.got, string(m.Payload()))
			r.mu.Unlock()
		})
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

// produceReceipts may run in its own goroutine: it reports with t.Error.
func produceReceipts(t *testing.T, addrs []string, device string, n int) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.DefaultProduceTopic(receiptsTopic))
	if err != nil {
		t.Error(err)
		return
	}
	defer cl.Close()
	var recs []*kgo.Record
	for i := 0; i < n; i++ {
		recs = append(recs, &kgo.Record{Key: []byte(device), Value: fmt.Appendf(nil, "%s/%d", device, i)})
	}
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Error(err)
	}
}

// The gateway is SIGKILLed while it is consuming receipts for offline
// terminals (some stored, offsets not all committed). After the restart every
// receipt is in the outbox exactly once; a persistent session gets its
// receipts on reconnect without subscribing again, a never-connected device
// on its first subscribe, each exactly once and in order, with exactly one
// confirmation per receipt.
func TestReceiptsSurviveSIGKILL(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(3, receiptsTopic, "receipts.delivered", "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()

	var r1 receiver
	c := receiptClient(t, g.mqttAddr, "term-k", false, &r1)
	if tok := c.Subscribe("terminals/term-k/receipts", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	c.Disconnect(100)

	const n = 2000
	go produceReceipts(t, kafka.Addrs, "term-k", n)
	go produceReceipts(t, kafka.Addrs, "term-j", n)
	testkit.Eventually(t, 30*time.Second, func() bool { return g.receiptsPending() > 0 }, "no receipt stored")
	g.kill()
	g.start()
	testkit.Eventually(t, 60*time.Second, func() bool { return g.receiptsPending() >= 2*n },
		"pending %d after restart, want %d", g.receiptsPending(), 2*n)
	if p := g.receiptsPending(); p != 2*n {
		t.Fatalf("pending %d, want %d: stored twice", p, 2*n)
	}
	// and once more, killed while nothing is delivered yet
	g.kill()
	g.start()
	if p := g.receiptsPending(); p != 2*n {
		t.Fatalf("pending %d after second kill, want %d", p, 2*n)
	}

	var r2, r3 receiver
	receiptClient(t, g.mqttAddr, "term-k", false, &r2) // session present: no new subscribe
	cj := receiptClient(t, g.mqttAddr, "term-j", true, &r3)
	if tok := cj.Subscribe("terminals/term-j/receipts", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	for _, c := range []struct {
		dev string
		r   *receiver
	}{{"term-k", &r2}, {"term-j", &r3}} {
		testkit.Eventually(t, 60*time.Second, func() bool { return len(c.r.list()) >= n },
			"%s got %d of %d receipts", c.dev, len(c.r.list()), n)
		got := c.r.list()
		if len(got) != n {
			t.Fatalf("%s got %d receipts, want %d", c.dev, len(got), n)
		}
		for i, p := range got {
			if want := fmt.Sprintf("%s/%d", c.dev, i); p != want {
				t.Fatalf("%s receipt %d is %q, want %q", c.dev, i, p, want)
			}
		}
	}
	testkit.Eventually(t, 30*time.Second, func() bool { return g.receiptsPending() == 0 }, "pending %d", g.receiptsPending())

	cons := testkit.Consume(t, kafka.Addrs, []string{"receipts.delivered"})
	recs := cons.WaitN(t, 2*n, 60*time.Second)
	seen := map[string]bool{}
	for _, r := range recs {
		p, _ := header(r, "receipt.partition")
		o, _ := header(r, "receipt.offset")
		k := p + "/" + o
		if seen[k] {
			t.Fatalf("two confirmations for receipt %s", k)
		}
		seen[k] = true
	}
	if len(recs) != 2*n {
		t.Fatalf("%d confirmations, want %d", len(recs), 2*n)
	}
}
