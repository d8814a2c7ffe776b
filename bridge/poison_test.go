package bridge

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/internal/testkit"
	"github.com/edgegw/gateway/rules"
)

func appendRec(t testing.TB, buf *buffer.Buffer, route, topic, client string, payload []byte) uint64 {
	t.Helper()
	res, err := buf.AppendWait(buffer.Record{Route: route, Received: time.Now(), KafkaTopic: topic, Key: []byte(client),
		MQTTTopic: "terminals/" + client + "/" + route, ClientID: client, Payload: payload})
	if err != nil {
		t.Fatal(err)
	}
	return res.Seq
}

func payloads(t testing.TB, addrs []string, topic string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, r := range testkit.ReadAll(t, addrs, topic) {
		out[string(r.Value)] = true
	}
	return out
}

// A 1.5 MB payment (over kafka.max_message_bytes) ahead of small messages on
// its own and another route: it is set aside at once, counted per route and
// reason, the small ones are all delivered, the link stays up, and the dead
// letter can be re-sent (here once the limits were raised).
func TestOversizedRecordIsSetAside(t *testing.T) {
	for _, eo := range []bool{false, true} {
		t.Run(fmt.Sprintf("exactly_once=%v", eo), func(t *testing.T) {
			k := testkit.Kafka(t, testkit.Topics(2, "payments", "telemetry"),
				testkit.With(kfake.BrokerConfigs(map[string]string{"message.max.bytes": "4000000"})))
			buf := openBuffer(t)
			big := bytes.Repeat([]byte("x"), 1_500_000)
			bigSeq := appendRec(t, buf, "payments", "payments", "t1", big)
			for i := range 20 {
				appendRec(t, buf, "payments", "payments", "t1", []byte(fmt.Sprintf("pay-%d", i)))
				appendRec(t, buf, "telemetry", "telemetry", "t1", []byte(fmt.Sprintf("tel-%d", i)))
			}
			reg := prometheus.NewRegistry()
			b := startBridge(t, buf, k.Addrs, func(o *Options) { o.Kafka.ExactlyOnce = eo; o.Registerer = reg })
			waitDrained(t, buf, 30*time.Second)
			if got := len(payloads(t, k.Addrs, "payments")) + len(payloads(t, k.Addrs, "telemetry")); got != 40 {
				t.Fatalf("%d of 40 small records delivered", got)
			}
			dl, err := buf.DeadLetters(0)
			if err != nil {
				t.Fatal(err)
			}
			if len(dl) != 1 || dl[0].ID != bigSeq || dl[0].Reason != ReasonTooLarge || dl[0].Route != "payments" || len(dl[0].Record.Payload) != len(big) {
				t.Fatalf("dead letters: %+v", dl)
			}
			if n := testutil.ToFloat64(b.m.deadLetters.WithLabelValues("payments", ReasonTooLarge)); n != 1 {
				t.Fatalf("gateway_dead_letters_total{payments,too_large} = %v", n)
			}
			if st := b.Link().State; st != StateUp {
				t.Fatalf("link %s while Kafka answers", st)
			}
			b.Close()

			// Re-send once the operator raised kafka.max_message_bytes.
			if n, err := buf.ResendDeadLetters([]uint64{dl[0].ID}); err != nil || n != 1 {
				t.Fatalf("resend: %d, %v", n, err)
			}
			startBridge(t, buf, k.Addrs, func(o *Options) { o.Kafka.ExactlyOnce = eo; o.Kafka.MaxMessageBytes = 3_000_000 })
			waitDrained(t, buf, 30*time.Second)
			if p := payloads(t, k.Addrs, "payments"); !p[string(big)] {
				t.Fatal("the re-sent record did not reach Kafka")
			}
			if dl, _ := buf.DeadLetters(0); len(dl) != 0 {
				t.Fatalf("%d dead letters left after the resend", len(dl))
			}
		})
	}
}

// The broker's own limit is lower than the gateway's: the broker refuses the
// whole batch holding the big record. Only that record may be set aside; the
// small ones around it (same key, same partition) all arrive, in order.
func TestBrokerRefusalSetsAsideOnlyTheCulprit(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(1, "payments"),
		testkit.With(kfake.BrokerConfigs(map[string]string{"message.max.bytes": "100000"})))
	buf := openBuffer(t)
	for i := range 30 {
		appendRec(t, buf, "payments", "payments", "t1", []byte(fmt.Sprintf("a-%02d", i)))
	}
	big := make([]byte, 200_000)
	rand.Read(big) // incompressible: the broker's limit applies to the compressed batch
	bigSeq := appendRec(t, buf, "payments", "payments", "t1", big)
	for i := range 30 {
		appendRec(t, buf, "payments", "payments", "t1", []byte(fmt.Sprintf("b-%02d", i)))
	}
	startBridge(t, buf, k.Addrs, nil)
	waitDrained(t, buf, 60*time.Second)
	recs := testkit.ReadAll(t, k.Addrs, "payments")
	var got []string
	seen := map[string]bool{}
	for _, r := range recs {
		if !seen[string(r.Value)] {
			seen[string(r.Value)] = true
			got = append(got, string(r.Value))
		}
	}
	if len(got) != 60 {
		t.Fatalf("%d of 60 small records delivered", len(got))
	}
	for i := 1; i < len(got); i++ {
		if got[i] < got[i-1] {
			t.Fatalf("order: %s after %s", got[i], got[i-1])
		}
	}
	dl, _ := buf.DeadLetters(0)
	if len(dl) != 1 || dl[0].ID != bigSeq || dl[0].Reason != ReasonTooLarge {
		t.Fatalf("dead letters: %+v", dl)
	}
}

// A route whose topic does not exist (no auto-creation) waits alone: the
// healthy route beside it delivers, /status can say why it waits, and once
// the topic exists it drains by itself.
func TestMissingTopicWaitsAlone(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(2, "payments"))
	buf := openBuffer(t)
	for i := range 10 {
		appendRec(t, buf, "audit", "audit", "t1", []byte(fmt.Sprintf("audit-%d", i)))
	}
	for i := range 20 {
		appendRec(t, buf, "payments", "payments", "t1", []byte(fmt.Sprintf("pay-%d", i)))
	}
	b := startBridge(t, buf, k.Addrs, nil)
	testkit.Eventually(t, 20*time.Second, func() bool { return buf.Stats()["payments"].Messages == 0 }, "the healthy route did not drain beside the waiting one")
	w, ok := b.Waiting()["audit"]
	if !ok || w.Reason != WaitTopicMissing || w.Topic != "audit" {
		t.Fatalf("audit route waiting: %+v %v", w, ok)
	}
	if st := b.Link().State; st != StateUp {
		t.Fatalf("link %s while Kafka answers", st)
	}
	// New payments keep flowing while audit waits.
	appendRec(t, buf, "payments", "payments", "t1", []byte("pay-late"))
	testkit.Eventually(t, 20*time.Second, func() bool { return buf.Stats()["payments"].Messages == 0 }, "a later payment did not drain")

	cfg := sarama.NewConfig()
	cfg.Version = sarama.V2_8_0_0
	adm, err := sarama.NewClusterAdmin(k.Addrs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	if err := adm.CreateTopic("audit", &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: -1}, false); err != nil {
		t.Fatal(err)
	}
	waitDrained(t, buf, 60*time.Second)
	if n := len(payloads(t, k.Addrs, "audit")); n != 10 {
		t.Fatalf("%d of 10 audit records delivered after the topic appeared", n)
	}
	if _, still := b.Waiting()["audit"]; still {
		t.Fatal("audit still reported waiting after it drained")
	}
}

// An idle drain notices that Kafka stopped answering: the link is "up"
// exactly while Kafka answers, not merely while nothing is sent.
func TestIdleLinkProbe(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(1, "payments"), testkit.WithProxy())
	buf := openBuffer(t)
	appendRec(t, buf, "payments", "payments", "t1", []byte("one"))
	b := startBridge(t, buf, k.Addrs, nil)
	waitDrained(t, buf, 30*time.Second)
	testkit.Eventually(t, 10*time.Second, func() bool { return b.Link().State == StateUp }, "never up")
	k.SetMode(t, testkit.Refuse)
	testkit.Eventually(t, 30*time.Second, func() bool { return b.Link().State == StateDown }, "idle link still reported %s with Kafka refusing", b.Link().State)
	if e := b.Link().LastError; !strings.Contains(e, "probe") && !strings.Contains(e, "connect") {
		t.Logf("last error: %s", e)
	}
	k.SetMode(t, testkit.Pass)
	testkit.Eventually(t, 60*time.Second, func() bool { return b.Link().State == StateUp }, "link not back up")
	appendRec(t, buf, "payments", "payments", "t1", []byte("two"))
	waitDrained(t, buf, 30*time.Second)
}

// A route renamed by a reload (pay-old -> payments, same topic): the backlog
// buffered under the old name is older than what the same client published
// since under the new one, and must reach Kafka first.
func TestRenamedRouteBacklogDrainsFirst(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(1, "payments"))
	cfg, err := config.Parse([]byte(`
kafka: {brokers: ["127.0.0.1:1"]}
routes:
  - {name: telemetry, match: "terminals/+/telemetry/#", kafka_topic: telemetry, priority: 5}
  - {name: payments, match: "terminals/+/payments/#", kafka_topic: payments, priority: 0}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	buf := openBuffer(t)
	for i := range 10 {
		appendRec(t, buf, "pay-old", "payments", "t1", []byte(fmt.Sprintf("%02d", i)))
	}
	for i := 10; i < 20; i++ {
		appendRec(t, buf, "payments", "payments", "t1", []byte(fmt.Sprintf("%02d", i)))
	}
	startBridge(t, buf, k.Addrs, func(o *Options) { o.Priority = rules.Compile(cfg).Priority })
	waitDrained(t, buf, 30*time.Second)
	var got []string
	for _, r := range testkit.ReadAll(t, k.Addrs, "payments") {
		got = append(got, string(r.Value))
	}
	for i := 1; i < len(got); i++ {
		if got[i] < got[i-1] {
			t.Fatalf("client t1's messages out of order in Kafka: %v", got)
		}
	}
	if len(got) != 20 {
		t.Fatalf("%d of 20 delivered", len(got))
	}
}

// A route whose topic the gateway's principal may not write waits alone,
// reason not_authorized; the authorized route beside it drains.
func TestUnauthorizedTopicWaitsAlone(t *testing.T) {
	lit := kmsg.ACLResourcePatternTypeLiteral
	k := testkit.Kafka(t, testkit.Topics(1, "payments", "audit", "ledger"), testkit.With(kfake.EnableSASL(), kfake.EnableACLs(),
		kfake.Superuser("PLAIN", "admin", "admin-pw"),
		kfake.User("PLAIN", "gw", "gw-pw",
			kfake.ACL{Resource: kmsg.ACLResourceTypeTopic, Name: "payments", Pattern: lit, Operation: kmsg.ACLOperationWrite, Allow: true},
			kfake.ACL{Resource: kmsg.ACLResourceTypeTopic, Name: "payments", Pattern: lit, Operation: kmsg.ACLOperationDescribe, Allow: true},
			kfake.ACL{Resource: kmsg.ACLResourceTypeCluster, Name: "kafka-cluster", Pattern: lit, Operation: kmsg.ACLOperationIdempotentWrite, Allow: true},
			// ledger: visible, not writable (refused at produce time)
			kfake.ACL{Resource: kmsg.ACLResourceTypeTopic, Name: "ledger", Pattern: lit, Operation: kmsg.ACLOperationDescribe, Allow: true},
		)))
	buf := openBuffer(t)
	for i := range 5 {
		appendRec(t, buf, "audit", "audit", "t1", []byte(fmt.Sprintf("audit-%d", i)))
		appendRec(t, buf, "ledger", "ledger", "t1", []byte(fmt.Sprintf("ledger-%d", i)))
	}
	for i := range 20 {
		appendRec(t, buf, "payments", "payments", "t1", []byte(fmt.Sprintf("pay-%d", i)))
	}
	b := startBridge(t, buf, k.Addrs, func(o *Options) {
		o.Kafka.SASL = config.SASL{Mechanism: "PLAIN", Username: "gw", Password: "gw-pw"}
		o.PresenceInterval = -1
	})
	testkit.Eventually(t, 30*time.Second, func() bool { return buf.Stats()["payments"].Messages == 0 },
		"the authorized route did not drain beside the unauthorized one: %v, waiting %v, link %+v", buf.Stats(), b.Waiting(), b.Link())
	for _, route := range []string{"audit", "ledger"} {
		testkit.Eventually(t, 30*time.Second, func() bool { return b.Waiting()[route].Reason == WaitNotAuthorized },
			"%s not waiting as not authorized: %+v", route, b.Waiting())
		if n := buf.Stats()[route].Messages; n != 5 {
			t.Fatalf("%s: %d of 5 records still buffered", route, n)
		}
	}
	// Later payments keep flowing while both wait.
	appendRec(t, buf, "payments", "payments", "t1", []byte("pay-late"))
	testkit.Eventually(t, 30*time.Second, func() bool { return buf.Stats()["payments"].Messages == 0 }, "a later payment did not drain")
}

// With kafka.dead_letter_topic set, a record set aside is also copied there
// (a too-large one with an empty value), with the reason and origin in headers.
func TestDeadLetterTopicCopy(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(1, "payments", "dead-letters"))
	buf := openBuffer(t)
	appendRec(t, buf, "payments", "payments", "t1", bytes.Repeat([]byte("z"), 1_200_000))
	appendRec(t, buf, "payments", "payments", "t1", []byte("small"))
	startBridge(t, buf, k.Addrs, func(o *Options) { o.Kafka.DeadLetterTopic = "dead-letters" })
	waitDrained(t, buf, 30*time.Second)
	recs := testkit.Consume(t, k.Addrs, []string{"dead-letters"}).WaitN(t, 1, 30*time.Second)
	h := headerMap(recs[0])
	if h["gw.dead_letter.reason"] != ReasonTooLarge || h["gw.dead_letter.topic"] != "payments" || h["gw.dead_letter.size"] != "1200000" ||
		len(recs[0].Value) != 0 || h["gw.epoch"] != buf.Epoch() {
		t.Fatalf("dead-letter copy: headers %v, value %d bytes", h, len(recs[0].Value))
	}
	if dl, _ := buf.DeadLetters(0); len(dl) != 1 {
		t.Fatalf("%d dead letters stored", len(dl))
	}
}
