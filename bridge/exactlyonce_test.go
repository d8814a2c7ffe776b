package bridge

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/internal/testkit"
)

func readCommitted(t testing.TB, addrs []string, topic string) []*kgo.Record {
	t.Helper()
	return testkit.ReadAll(t, addrs, topic, kgo.FetchIsolationLevel(kgo.ReadCommitted()))
}

func exactlyOnce(o *Options) { o.Kafka.ExactlyOnce = true }

// A crash after Kafka committed a batch but before the buffer deleted it:
// the next run finds the marks and sends nothing twice. Simulated by putting
// back a copy of the buffer file taken before the drain, which is what the
// disk holds when the process dies between the commit and the delete.
func TestExactlyOnceAfterCommitBeforeDelete(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(4, "payments"))
	dir := t.TempDir()
	path := filepath.Join(dir, "buffer.db")
	buf, err := buffer.Open(buffer.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	a := newAppender(buf, "payments", "payments", 12)
	a.append(t, 2000)
	if err := buf.Close(); err != nil {
		t.Fatal(err)
	}
	copyFile(t, path, filepath.Join(dir, "before-drain.db"))

	buf, err = buffer.Open(buffer.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	b := startBridge(t, buf, k.Addrs, func(o *Options) { exactlyOnce(o); o.MaxBatchRecords = 300 })
	waitDrained(t, buf, 60*time.Second)
	b.Close()
	buf.Close()
	if got := readCommitted(t, k.Addrs, "payments"); len(got) != 2000 {
		t.Fatalf("first run: %d committed records, want 2000", len(got))
	}

	// the deletes "never happened": every record is back in the buffer
	copyFile(t, filepath.Join(dir, "before-drain.db"), path)
	buf = openAt(t, path)
	if n, _ := buf.Total(); n != 2000 {
		t.Fatalf("restored buffer holds %d", n)
	}
	// two more records the first run never saw
	a.buf = buf
	a.append(t, 2)
	startBridge(t, buf, k.Addrs, exactlyOnce)
	waitDrained(t, buf, 60*time.Second)
	recs := readCommitted(t, k.Addrs, "payments")
	if dups := checkDelivery(t, recs, a.recs); dups != 0 {
		t.Fatalf("%d duplicates visible to a read_committed consumer", dups)
	}
	if len(recs) != 2002 {
		t.Fatalf("%d committed records, want 2002", len(recs))
	}
	var last *kgo.Record
	for _, r := range readCommitted(t, k.Addrs, OffsetsTopic) {
		if string(r.Key) == markKey(gwID) {
			last = r
		}
	}
	var mv markValue
	if last == nil || json.Unmarshal(last.Value, &mv) != nil || mv.Epoch != buf.Epoch() || mv.Marks["payments"] != a.last() {
		t.Fatalf("last mark %+v, want epoch %s with payments through %d", mv, buf.Epoch(), a.last())
	}
}

// Kafka refusing and hanging while batches are in transactions: aborted
// transactions are invisible to read_committed consumers, nothing is lost,
// nothing is seen twice, per-key order holds.
func TestExactlyOnceFlappingLink(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for network timeouts")
	}
	k := testkit.Kafka(t, testkit.Topics(4, "payments"), testkit.WithProxy())
	buf := openBuffer(t)
	a := newAppender(buf, "payments", "payments", 12)
	b := startBridge(t, buf, k.Addrs, func(o *Options) { exactlyOnce(o); o.MaxBatchRecords = 100 })

	stopAppending := a.keepAppending(t)
	acked := func() uint64 { return b.Link().SentRecords }
	for cycle := range 2 {
		before := acked()
		k.SetMode(t, testkit.Pass)
		testkit.Eventually(t, 60*time.Second, func() bool { return acked() > before+200 }, "cycle %d: no progress while passing", cycle)
		k.SetMode(t, testkit.Refuse)
		testkit.Eventually(t, 30*time.Second, func() bool { return b.Link().State == StateDown }, "cycle %d: refuse: link not reported down", cycle)
		k.SetMode(t, testkit.Pass)
		testkit.Eventually(t, 60*time.Second, func() bool { return acked() > before+400 }, "cycle %d: no progress after refuse", cycle)
		k.SetMode(t, testkit.Hang)
		testkit.Eventually(t, 60*time.Second, func() bool { return b.Link().State == StateDown }, "cycle %d: hang: link not reported down", cycle)
	}
	k.SetMode(t, testkit.Pass)
	stopAppending()
	waitDrained(t, buf, 120*time.Second)
	recs := readCommitted(t, k.Addrs, "payments")
	dups := checkDelivery(t, recs, a.recs)
	all := testkit.ReadAll(t, k.Addrs, "payments", kgo.FetchIsolationLevel(kgo.ReadUncommitted()))
	t.Logf("exactly-once flapping: %d appended, %d committed, %d in the log incl. aborted", a.count(), len(recs), len(all))
	if dups != 0 {
		t.Fatalf("%d duplicates visible to a read_committed consumer", dups)
	}
}

func openAt(t testing.TB, path string) *buffer.Buffer {
	t.Helper()
	buf, err := buffer.Open(buffer.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { buf.Close() })
	return buf
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// A transaction whose commit fails after Kafka acknowledged every record of
// it: the records are invisible to read_committed consumers, so none of them
// may leave the buffer; the next session sends them again, once.
func TestExactlyOnceFailedCommitDeletesNothing(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(4, "payments"))
	var failed atomic.Int32
	k.Cluster.ControlKey(int16(kmsg.EndTxn), func(req kmsg.Request) (kmsg.Response, error, bool) {
		r := req.(*kmsg.EndTxnRequest)
		if !r.Commit || failed.Load() > 0 {
			return nil, nil, false
		}
		failed.Add(1)
		resp := r.ResponseKind().(*kmsg.EndTxnResponse)
		resp.ErrorCode = kerr.InvalidTxnState.Code
		return resp, nil, true
	})
	buf := openBuffer(t)
	a := newAppender(buf, "payments", "payments", 12)
	a.append(t, 500)
	startBridge(t, buf, k.Addrs, exactlyOnce)
	waitDrained(t, buf, 60*time.Second)
	if failed.Load() != 1 {
		t.Fatalf("the commit failure was not injected (%d)", failed.Load())
	}
	recs := readCommitted(t, k.Addrs, "payments")
	if dups := checkDelivery(t, recs, a.recs); dups != 0 {
		t.Fatalf("%d duplicates visible to a read_committed consumer", dups)
	}
	all := testkit.ReadAll(t, k.Addrs, "payments", kgo.FetchIsolationLevel(kgo.ReadUncommitted()))
	if len(all) <= len(recs) {
		t.Fatalf("the failed transaction left no records in the log (%d vs %d committed): the test did not exercise an abort", len(all), len(recs))
	}
}
