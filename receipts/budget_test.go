package receipts

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/internal/testkit"
	"github.com/edgegw/gateway/rules"
)

// budgetLimits is the gateway's wiring (cmd/gateway bufferLimits): payments
// never evicted, confirmations allowed into reserve bytes beyond the budget.
func budgetLimits(budget, reserve int64) *buffer.Limits {
	return &buffer.Limits{MaxDiskBytes: budget, Reserve: reserve, Routes: func(name string) (buffer.Policy, bool) {
		if name == rules.ConfirmRoute {
			return buffer.Policy{OnFull: "reject", UseReserve: true}, true
		}
		return buffer.Policy{OnFull: "reject"}, true
	}}
}

// fillBudget appends payments (their topic does not exist yet, so they stay)
// until the buffer refuses one for the global budget.
func fillBudget(t *testing.T, buf *buffer.Buffer) {
	t.Helper()
	size := 1000
	for i := 0; ; i++ {
		_, err := buf.AppendWait(buffer.Record{Route: "payments", KafkaTopic: "payments", Received: time.Now(),
			ClientID: "t", Key: []byte("t"), MQTTTopic: "terminals/t/payments", Payload: bytes.Repeat([]byte("p"), size)})
		if err == buffer.ErrDiskFull {
			if size == 0 {
				return // not even an empty record fits
			}
			size /= 4
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if i > 10000 {
			t.Fatal("the budget never filled")
		}
	}
}

// Terminals filled the disk budget during a long outage; receipts still come
// in and are acknowledged by their terminal. Their confirmations go into the
// room reserved for them: every receipt is confirmed, none is lost.
func TestConfirmationsUseTheReserveWhenTheBudgetIsFull(t *testing.T) {
	e := newEnv(t, "", func(e *env) { e.limits = budgetLimits(200_000, 64<<10) })
	fillBudget(t, e.buf)
	tm := connect(t, e.addr, "term-1", true)
	tm.subscribe(t, "terminals/term-1/receipts")
	e.produce("term-1", 0, 20)
	waitReceived(t, tm, want("term-1", 0, 20))
	testkit.Eventually(t, 20*time.Second, func() bool { return e.pending("term-1") == 0 }, "outbox: %v", e.rc.Pending())
	recs := testkit.Consume(t, e.kafka.Addrs, []string{confirmTopic}).WaitN(t, 20, 30*time.Second)
	if len(recs) != 20 {
		t.Fatalf("%d confirmations for 20 acknowledged receipts", len(recs))
	}
}

// Without room even in the reserve, an acknowledged receipt stays in the
// outbox (not sent again) until its confirmation is stored; once the
// payments drain, every confirmation goes up.
func TestReceiptStaysUntilItsConfirmationIsStored(t *testing.T) {
	e := newEnv(t, "", func(e *env) { e.limits = budgetLimits(200_000, 0); e.sweep = 200 * time.Millisecond })
	fillBudget(t, e.buf)
	tm := connect(t, e.addr, "term-1", true)
	tm.subscribe(t, "terminals/term-1/receipts")
	e.produce("term-1", 0, 5)
	waitReceived(t, tm, want("term-1", 0, 5))
	// Acknowledged, confirmation refused: still in the outbox.
	testkit.Eventually(t, 20*time.Second, func() bool { return testutil.ToFloat64(e.rc.mConfirm.WithLabelValues("failed")) >= 5 },
		"the confirmations were never refused")
	if n := e.pending("term-1"); n != 5 {
		t.Fatalf("%d of 5 acknowledged receipts left the outbox without a stored confirmation", n)
	}
	// Make room: the payments topic appears and the backlog drains.
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V2_8_0_0
	adm, err := sarama.NewClusterAdmin(e.kafka.Addrs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	if err := adm.CreateTopic("payments", &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: -1}, false); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 60*time.Second, func() bool { return e.pending("term-1") == 0 }, "outbox: %v", e.rc.Pending())
	recs := testkit.Consume(t, e.kafka.Addrs, []string{confirmTopic}).WaitN(t, 5, 60*time.Second)
	seen := map[string]bool{}
	for _, r := range recs {
		seen[headerOf(r, "receipt.offset")] = true
	}
	if len(seen) != 5 {
		t.Fatalf("%d distinct confirmations, want 5 (%s)", len(seen), fmt.Sprint(seen))
	}
	if got := tm.received(); len(got) != 5 {
		t.Fatalf("receipts delivered %d times to the terminal, want 5: %q", len(got), got)
	}
}

// A terminal subscribed at QoS 0 gets its receipts at QoS 0 (MQTT: the
// delivery QoS is the lower of the two); it never acknowledges them, so no
// confirmation goes up for them: they are counted as unconfirmed. A QoS 1
// subscriber beside it is confirmed as usual.
func TestQoS0ReceiptsAreNotConfirmed(t *testing.T) {
	e := newEnv(t, "")
	t0 := connect(t, e.addr, "term-0", true)
	if tok := t0.c.Subscribe("terminals/term-0/receipts", 0, nil); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	t1 := connect(t, e.addr, "term-1", true)
	t1.subscribe(t, "terminals/term-1/receipts")
	e.produce("term-0", 0, 3)
	e.produce("term-1", 0, 3)
	waitReceived(t, t0, want("term-0", 0, 3))
	waitReceived(t, t1, want("term-1", 0, 3))
	testkit.Eventually(t, 20*time.Second, func() bool { return e.totalPending() == 0 }, "outbox: %v", e.rc.Pending())
	testkit.Eventually(t, 20*time.Second, func() bool { return testutil.ToFloat64(e.rc.mUnconfirmed) == 3 }, "unconfirmed %v", testutil.ToFloat64(e.rc.mUnconfirmed))
	recs := testkit.Consume(t, e.kafka.Addrs, []string{confirmTopic}).WaitN(t, 3, 30*time.Second)
	testkit.Eventually(t, 20*time.Second, func() bool { n, _ := e.buf.Total(); return n == 0 }, "confirmations not drained")
	recs = testkit.ReadAll(t, e.kafka.Addrs, confirmTopic)
	for _, r := range recs {
		if string(r.Key) != "term-1" {
			t.Fatalf("a confirmation for %s, which never acknowledged anything", r.Key)
		}
	}
	if len(recs) != 3 {
		t.Fatalf("%d confirmations, want 3 (term-1's)", len(recs))
	}
}
