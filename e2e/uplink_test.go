package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/edgegw/gateway/internal/testkit"
)

// 10,000 QoS-1 publishes from 20 clients all reach Kafka in the record format
// of CONTRACT §4, each client's in publish order.
func TestTenThousandPublishesReachKafka(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(3, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()

	const clients, perClient = 20, 500
	type sent struct {
		topic  string
		before time.Time
		after  time.Time
	}
	var mu sync.Mutex
	sentBy := map[string]sent{} // payload -> what and when
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		id := fmt.Sprintf("term-%02d", c)
		cl := mqttClient(t, g.mqttAddr, id, false)
		wg.Add(1)
		go func() {
			defer wg.Done()
			window := make(chan struct{}, 16) // publishes in flight per client
			var inner sync.WaitGroup
			for i := 0; i < perClient; i++ {
				kind := "telemetry"
				if i%4 == 0 {
					kind = "payments"
				}
				topic := fmt.Sprintf("terminals/%s/%s/%d", id, kind, i)
				payload := fmt.Sprintf("%s/%d", id, i)
				window <- struct{}{}
				before := time.Now()
				tok := cl.Publish(topic, 1, false, payload)
				inner.Add(1)
				go func() {
					defer inner.Done()
					defer func() { <-window }()
					if !tok.WaitTimeout(60*time.Second) || tok.Error() != nil {
						t.Errorf("publish %s: %v", payload, tok.Error())
						return
					}
					mu.Lock()
					sentBy[payload] = sent{topic: topic, before: before, after: time.Now()}
					mu.Unlock()
				}()
			}
			inner.Wait()
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	cons := testkit.Consume(t, kafka.Addrs, []string{"payments", "telemetry"})
	recs := cons.WaitN(t, clients*perClient, 60*time.Second)
	if len(recs) != clients*perClient {
		t.Fatalf("%d records in Kafka, want %d", len(recs), clients*perClient)
	}
	seqs := map[string]bool{}
	for _, r := range recs {
		s, ok := sentBy[string(r.Value)]
		if !ok {
			t.Fatalf("unexpected record value %q", r.Value)
		}
		client, _ := parsePayload(t, r.Value)
		wantTopic := "telemetry"
		if mqttTopicKind(s.topic) == "payments" {
			wantTopic = "payments"
		}
		if r.Topic != wantTopic || string(r.Key) != client {
			t.Fatalf("record %q: topic %s key %q", r.Value, r.Topic, r.Key)
		}
		// timestamp: when the gateway received it (ms precision in Kafka)
		if r.Timestamp.Before(s.before.Truncate(time.Millisecond)) || r.Timestamp.After(s.after) {
			t.Fatalf("record %q: timestamp %v outside publish window %v..%v", r.Value, r.Timestamp, s.before, s.after)
		}
		for key, want := range map[string]string{"mqtt.topic": s.topic, "mqtt.client_id": client, "gw.id": "e2e-gw"} {
			if got, _ := header(r, key); got != want {
				t.Fatalf("record %q: header %s = %q, want %q", r.Value, key, got, want)
			}
		}
		seq, _ := header(r, "gw.seq")
		if _, err := strconv.ParseUint(seq, 10, 64); err != nil || seqs[seq] {
			t.Fatalf("record %q: gw.seq %q missing, not decimal or repeated", r.Value, seq)
		}
		seqs[seq] = true
	}
	if dups := checkOrder(t, recs); dups != 0 {
		t.Fatalf("%d duplicates without any crash", dups)
	}
	if code := g.stop(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
}

func mqttTopicKind(topic string) string {
	if parts := strings.Split(topic, "/"); len(parts) > 2 {
		return parts[2]
	}
	return ""
}

// Kafka is down when the gateway starts: publishes are still acknowledged
// (they are on disk); when Kafka comes up, everything drains, no restart.
func TestKafkaDownAtStartDrainsWhenItComes(t *testing.T) {
	port := testkit.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	g := newGateway(t, []string{addr}, "")
	g.start()
	cl := mqttClient(t, g.mqttAddr, "term-x", false)
	const n = 300
	for i := 0; i < n; i++ {
		tok := cl.Publish(fmt.Sprintf("terminals/term-x/payments/%d", i), 1, false, fmt.Sprintf("term-x/%d", i))
		if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d with Kafka down: %v", i, tok.Error())
		}
	}
	time.Sleep(time.Second) // let the bridge fail a few times first (not a synchronisation)
	kafka := testkit.Kafka(t, testkit.Ports(port), testkit.Topics(3, "payments", "telemetry"))
	recs := testkit.Consume(t, kafka.Addrs, []string{"payments"}).WaitN(t, n, 90*time.Second)
	if dups := checkOrder(t, recs); len(recs)-dups != n {
		t.Fatalf("%d distinct records, want %d", len(recs)-dups, n)
	}
}

// A real gateway process is killed with SIGKILL repeatedly while clients
// publish and reconnect: every PUBACKed message reaches Kafka. Duplicates are
// allowed (a crash between Kafka's ack and the delete re-sends) and reported.
func TestSigkillLosesNothingAcknowledged(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(3, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()

	pubs := startPublishers(t, g.mqttAddr, "crash", "payments", 8, true)
	killWhilePublishing(t, g, pubs, 5, 200)

	recs := pubs.waitAllInKafka(t, kafka.Addrs, "payments")
	seen := map[string]bool{}
	bySeq := map[string]string{} // gw.seq -> payload: never reused, also across crashes
	dups := 0
	for _, r := range recs {
		if seen[string(r.Value)] {
			dups++
		}
		seen[string(r.Value)] = true
		seq, _ := header(r, "gw.seq")
		if prev, ok := bySeq[seq]; ok && prev != string(r.Value) {
			t.Fatalf("gw.seq %s given to both %q and %q", seq, prev, r.Value)
		}
		bySeq[seq] = string(r.Value)
	}
	t.Logf("5 SIGKILLs: %d acknowledged, %d records in Kafka, %d duplicates (allowed with exactly_once: false)", pubs.n.Load(), len(recs), dups)
}

// With kafka.exactly_once, 5 SIGKILLs while terminals publish (some of them
// mid-transaction, some between Kafka's commit and the buffer's delete):
// every acknowledged message reaches Kafka and a read_committed consumer
// sees each exactly once, in per-client order.
func TestSigkillExactlyOnceNoDuplicates(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(3, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.env = []string{"GATEWAY_KAFKA_EXACTLY_ONCE=true"}
	g.start()

	pubs := startPublishers(t, g.mqttAddr, "eos", "payments", 8, true)
	killWhilePublishing(t, g, pubs, 5, 300)

	recs := pubs.waitAllInKafka(t, kafka.Addrs, "payments", kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	seen := map[string]bool{}
	for _, r := range recs {
		if seen[string(r.Value)] {
			t.Fatalf("%s visible twice to a read_committed consumer", r.Value)
		}
		seen[string(r.Value)] = true
	}
	// Per-client order is not checked here: around a reconnect paho reports
	// a publish it is about to send again as complete (resume() re-claims
	// the packet id, which completes the waiting token with no error) before
	// any PUBACK, so this publisher sends the next message, which may reach
	// the gateway first. Order across Kafka failures is checked by the
	// flapping tests, whose clients stay connected.
	all := testkit.ReadAll(t, kafka.Addrs, "payments", kgo.FetchIsolationLevel(kgo.ReadUncommitted()))
	t.Logf("exactly-once, 5 SIGKILLs: %d acknowledged, %d committed records, 0 duplicates (%d in the log including aborted transactions)",
		pubs.n.Load(), len(recs), len(all))
}

// Kafka refuses connections, then accepts TCP but never answers, then comes
// back, several times, while terminals publish: nothing acknowledged is lost
// and each client's order holds.
func TestKafkaFlappingLosesNothing(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.WithProxy(), testkit.Topics(3, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()

	pubs := startPublishers(t, g.mqttAddr, "flap", "telemetry", 6, false)
	for round := 0; round < 3; round++ {
		for _, m := range []testkit.Mode{testkit.Refuse, testkit.Hang, testkit.Pass} {
			kafka.SetMode(t, m)
			until := time.Now().Add(1500 * time.Millisecond)
			pubs.waitMore(t, 150, fmt.Sprintf("publishes in mode %v", m))
			// each phase lasts long enough for requests to be stuck in it
			testkit.Eventually(t, 5*time.Second, func() bool { return time.Now().After(until) }, "phase %v", m)
		}
	}
	pubs.halt()
	recs := pubs.waitAllInKafka(t, kafka.Addrs, "telemetry")
	dups := checkOrder(t, recs)
	t.Logf("3 rounds refuse/hang/pass: %d acknowledged, %d records, %d duplicates", pubs.n.Load(), len(recs), dups)
}

// publishers are terminals publishing QoS 1 in a loop, one message in flight
// each, remembering every payload the gateway acknowledged.
type publishers struct {
	acked sync.Map // payload -> true
	n     atomic.Int64
	stop  chan struct{}
	wg    sync.WaitGroup
}

// startPublishers connects clients "<prefix>-<i>" publishing to
// terminals/<id>/<kind>/x. With reconnect, a failed publish is retried after
// paho reconnects (the gateway may be down); without, it fails the test.
func startPublishers(t *testing.T, addr, prefix, kind string, clients int, reconnect bool) *publishers {
	p := &publishers{stop: make(chan struct{})}
	for c := 0; c < clients; c++ {
		id := fmt.Sprintf("%s-%d", prefix, c)
		cl := mqttClient(t, addr, id, reconnect)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-p.stop:
					return
				default:
				}
				payload := fmt.Sprintf("%s/%d", id, i)
				tok := cl.Publish(fmt.Sprintf("terminals/%s/%s/x", id, kind), 1, false, payload)
				if tok.WaitTimeout(20*time.Second) && tok.Error() == nil {
					p.acked.Store(payload, true)
					p.n.Add(1)
					continue
				}
				if !reconnect {
					t.Errorf("publish %s: %v", payload, tok.Error())
					return
				}
				time.Sleep(20 * time.Millisecond) // disconnected: paho reconnects
			}
		}()
	}
	t.Cleanup(p.halt)
	return p
}

// waitMore waits until n more publishes were acknowledged.
func (p *publishers) waitMore(t *testing.T, n int64, what string) {
	t.Helper()
	target := p.n.Load() + n
	testkit.Eventually(t, 60*time.Second, func() bool { return p.n.Load() >= target }, "%s", what)
}

// halt stops publishing and waits for the clients; safe to call twice.
// killWhilePublishing SIGKILLs and restarts the gateway kills times, each
// after every more publishes were acknowledged, then halts the publishers
// once some more went through the last process.
func killWhilePublishing(t *testing.T, g *gatewayProc, pubs *publishers, kills int, every int64) {
	t.Helper()
	for kill := 0; kill < kills; kill++ {
		pubs.waitMore(t, every, fmt.Sprintf("publishes acked before kill %d", kill))
		g.kill()
		g.start()
	}
	pubs.waitMore(t, 200, "publishes after the last restart")
	pubs.halt()
}

func (p *publishers) halt() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	p.wg.Wait()
}

// waitAllInKafka waits until every acknowledged payload is in the topic and
// returns all records read.
func (p *publishers) waitAllInKafka(t *testing.T, addrs []string, topic string, opts ...kgo.Opt) []*kgo.Record {
	t.Helper()
	cons := testkit.Consume(t, addrs, []string{topic}, opts...)
	var recs []*kgo.Record
	testkit.Eventually(t, 120*time.Second, func() bool {
		recs = cons.Poll(time.Second)
		present := make(map[string]bool, len(recs))
		for _, r := range recs {
			present[string(r.Value)] = true
		}
		all := true
		p.acked.Range(func(k, _ any) bool { all = present[k.(string)]; return all })
		return all
	}, "all %d acknowledged messages in %s", p.n.Load(), topic)
	return recs
}
