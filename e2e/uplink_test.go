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

	const clients = 8
	var acked sync.Map // payload -> true
	var ackedN atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		id := fmt.Sprintf("crash-%d", c)
		cl := mqttClient(t, g.mqttAddr, id, true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				payload := fmt.Sprintf("%s/%d", id, i)
				tok := cl.Publish(fmt.Sprintf("terminals/%s/payments/x", id), 1, false, payload)
				if tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
					acked.Store(payload, true)
					ackedN.Add(1)
				} else {
					time.Sleep(20 * time.Millisecond) // disconnected: paho reconnects
				}
			}
		}()
	}
	for kill := 0; kill < 5; kill++ {
		target := ackedN.Load() + 200
		testkit.Eventually(t, 60*time.Second, func() bool { return ackedN.Load() >= target }, "publishes acked before kill %d", kill)
		g.kill()
		g.start()
	}
	target := ackedN.Load() + 200
	testkit.Eventually(t, 60*time.Second, func() bool { return ackedN.Load() >= target }, "publishes after the last restart")
	close(stop)
	wg.Wait()

	want := 0
	acked.Range(func(_, _ any) bool { want++; return true })
	cons := testkit.Consume(t, kafka.Addrs, []string{"payments"})
	var recs []*kgo.Record
	testkit.Eventually(t, 90*time.Second, func() bool {
		recs = cons.Poll(time.Second)
		present := map[string]bool{}
		for _, r := range recs {
			present[string(r.Value)] = true
		}
		missing := 0
		acked.Range(func(k, _ any) bool {
			if !present[k.(string)] {
				missing++
			}
			return true
		})
		return missing == 0
	}, "all %d acknowledged messages in Kafka", want)
	dups := 0
	seen := map[string]bool{}
	for _, r := range recs {
		if seen[string(r.Value)] {
			dups++
		}
		seen[string(r.Value)] = true
	}
	t.Logf("5 SIGKILLs: %d acknowledged, %d records in Kafka, %d duplicates (allowed with exactly_once: false)", want, len(recs), dups)
}

// Kafka refuses connections, then accepts TCP but never answers, then comes
// back, several times, while terminals publish: nothing acknowledged is lost
// and each client's order holds.
func TestKafkaFlappingLosesNothing(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.WithProxy(), testkit.Topics(3, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()

	const clients = 6
	var acked sync.Map
	var ackedN atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		id := fmt.Sprintf("flap-%d", c)
		cl := mqttClient(t, g.mqttAddr, id, false)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				payload := fmt.Sprintf("%s/%d", id, i)
				tok := cl.Publish(fmt.Sprintf("terminals/%s/telemetry/x", id), 1, false, payload)
				if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
					t.Errorf("publish while Kafka flaps: %v", tok.Error())
					return
				}
				acked.Store(payload, true)
				ackedN.Add(1)
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	for round := 0; round < 3; round++ {
		for _, m := range []testkit.Mode{testkit.Refuse, testkit.Hang, testkit.Pass} {
			kafka.SetMode(t, m)
			target, until := ackedN.Load()+150, time.Now().Add(1500*time.Millisecond)
			// each phase lasts long enough for requests to be stuck in it
			testkit.Eventually(t, 60*time.Second, func() bool { return ackedN.Load() >= target && time.Now().After(until) }, "publishes in mode %v", m)
		}
	}
	close(stop)
	wg.Wait()
	want := 0
	acked.Range(func(_, _ any) bool { want++; return true })
	cons := testkit.Consume(t, kafka.Addrs, []string{"telemetry"})
	var recs []*kgo.Record
	testkit.Eventually(t, 120*time.Second, func() bool {
		recs = cons.Poll(time.Second)
		present := map[string]bool{}
		for _, r := range recs {
			present[string(r.Value)] = true
		}
		ok := true
		acked.Range(func(k, _ any) bool { ok = present[k.(string)]; return ok })
		return ok
	}, "all %d acknowledged messages in Kafka", want)
	dups := checkOrder(t, recs)
	t.Logf("3 rounds refuse/hang/pass: %d acknowledged, %d records, %d duplicates", want, len(recs), dups)
}
