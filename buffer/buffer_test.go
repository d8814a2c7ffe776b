package buffer

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func open(t testing.TB, path string, o Options) *Buffer {
	t.Helper()
	o.Path = path
	b, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func rec(route, client string, i int) Record {
	return Record{
		Route: route, Received: time.Unix(1700000000, int64(i)), KafkaTopic: route + "-topic",
		Key: []byte(client), MQTTTopic: "terminals/" + client + "/x", ClientID: client,
		Payload: []byte(fmt.Sprintf("payload-%d", i)),
	}
}

func prio(m map[string]int) func(string) int { return func(r string) int { return m[r] } }

func TestRoundTripOrderAndDelete(t *testing.T) {
	b := open(t, filepath.Join(t.TempDir(), "b.db"), Options{})
	var want []Record
	for i := 0; i < 50; i++ {
		r := rec("tele", "c1", i)
		if i%5 == 0 {
			r = rec("pay", "c2", i)
			r.Headers = []Header{{Key: "mqtt.correlation_data", Value: []byte{0, 1, 2}}, {Key: "k", Value: nil}}
		}
		res, err := b.AppendWait(r)
		if err != nil {
			t.Fatal(err)
		}
		r.Seq = res.Seq
		want = append(want, r)
	}
	got, err := b.Read(nil, prio(map[string]int{"pay": 0, "tele": 5}), 1000, 1<<20)
	if err != nil || len(got) != 50 {
		t.Fatalf("read %d: %v", len(got), err)
	}
	// strict priority: all 10 payments first, then telemetry; FIFO inside each
	for i, r := range got {
		if (i < 10) != (r.Route == "pay") {
			t.Fatalf("record %d is %s: priority not honoured", i, r.Route)
		}
		if i > 0 && got[i-1].Route == r.Route && got[i-1].Seq >= r.Seq {
			t.Fatal("not FIFO within a route")
		}
	}
	bySeq := map[uint64]Record{}
	for _, r := range want {
		bySeq[r.Seq] = r
	}
	for _, r := range got {
		w := bySeq[r.Seq]
		if !bytes.Equal(r.Payload, w.Payload) || !r.Received.Equal(w.Received) || r.KafkaTopic != w.KafkaTopic ||
			string(r.Key) != string(w.Key) || r.ClientID != w.ClientID || r.MQTTTopic != w.MQTTTopic || len(r.Headers) != len(w.Headers) {
			t.Fatalf("record %d changed: %+v vs %+v", r.Seq, r, w)
		}
	}
	// read after a cursor skips what is in flight
	more, _ := b.Read(map[string]uint64{"pay": got[9].Seq}, prio(map[string]int{"pay": 0, "tele": 5}), 5, 1<<20)
	if len(more) != 5 || more[0].Route != "tele" {
		t.Fatalf("cursor read: %+v", more)
	}
	var refs []Ref
	for _, r := range got[:20] {
		refs = append(refs, Ref{Route: r.Route, Seq: r.Seq})
	}
	if err := b.Delete(refs); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(refs); err != nil { // repeated delete is harmless
		t.Fatal(err)
	}
	if n, _ := b.Total(); n != 30 {
		t.Fatalf("total %d after delete", n)
	}
	st := b.Stats()
	if st["pay"].Messages != 0 || st["tele"].Messages != 30 || st["tele"].Oldest.IsZero() {
		t.Fatalf("stats %+v", st)
	}
}

// gw.seq is persisted with the data: never reused across reopen, and nothing
// committed is missing after reopening.
func TestReopenKeepsDataAndSequence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	b, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	var last uint64
	for i := 0; i < 100; i++ {
		r, err := b.AppendWait(rec("r", "c", i))
		if err != nil {
			t.Fatal(err)
		}
		if r.Seq <= last {
			t.Fatal("seq not increasing")
		}
		last = r.Seq
	}
	recs, _ := b.Read(nil, prio(nil), 10, 1<<20)
	var refs []Ref
	for _, r := range recs {
		refs = append(refs, Ref{Route: "r", Seq: r.Seq})
	}
	b.Delete(refs)
	b.Close()
	b.Close() // twice is fine

	b = open(t, path, Options{})
	if n, _ := b.Total(); n != 90 {
		t.Fatalf("after reopen %d records, want 90", n)
	}
	r, err := b.AppendWait(rec("r", "c", 100))
	if err != nil || r.Seq != last+1 {
		t.Fatalf("seq after reopen %d, want %d (%v)", r.Seq, last+1, err)
	}
}

// Many concurrent appenders share commits (group commit), each gets its own
// result, and the Done order matches commit order.
func TestGroupCommitManyClients(t *testing.T) {
	var mu sync.Mutex
	var commits, records int
	b := open(t, filepath.Join(t.TempDir(), "b.db"), Options{AfterCommit: func(s []uint64) {
		mu.Lock()
		commits++
		records += len(s)
		mu.Unlock()
	}})
	var wg sync.WaitGroup
	for c := 0; c < 50; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				if _, err := b.AppendWait(rec("r", fmt.Sprint("c", c), i)); err != nil {
					t.Error(err)
					return
				}
			}
		}(c)
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if records != 2000 {
		t.Fatalf("%d records committed", records)
	}
	if commits >= records {
		t.Fatalf("%d commits for %d records: no group commit", commits, records)
	}
	t.Logf("%d records in %d commits", records, commits)
}

func TestFailedCommitReportsEveryAppend(t *testing.T) {
	boom := errors.New("disk full")
	b := open(t, filepath.Join(t.TempDir(), "b.db"), Options{BeforeCommit: func([]uint64) error { return boom }})
	_, err := b.AppendWait(rec("r", "c", 1))
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if n, _ := b.Total(); n != 0 {
		t.Fatal("failed append counted")
	}
	b.Close()
	if _, err := b.AppendWait(rec("r", "c", 2)); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
}

func TestDedupWithinBatchAndAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	b, _ := Open(Options{Path: path})
	results := make(chan Result, 3)
	r := rec("r", "c", 1)
	// original and its DUP in the same batch: stored once
	b.Append(&Append{Record: r, Dedup: DedupKey{ClientID: "c", PacketID: 5}, Done: func(x Result) { results <- x }})
	b.Append(&Append{Record: r, Dedup: DedupKey{ClientID: "c", PacketID: 5, Dup: true}, Done: func(x Result) { results <- x }})
	a, d := <-results, <-results
	if a.Duplicate || !d.Duplicate || d.Seq != a.Seq {
		t.Fatalf("original %+v dup %+v", a, d)
	}
	b.Close()
	b = open(t, path, Options{})
	b.Append(&Append{Record: r, Dedup: DedupKey{ClientID: "c", PacketID: 5, Dup: true}, Done: func(x Result) { results <- x }})
	if x := <-results; !x.Duplicate {
		t.Fatal("DUP after reopen stored again")
	}
	// a DUP with different content under the same id is a different message
	r2 := rec("r", "c", 2)
	b.Append(&Append{Record: r2, Dedup: DedupKey{ClientID: "c", PacketID: 5, Dup: true}, Done: func(x Result) { results <- x }})
	if x := <-results; x.Duplicate {
		t.Fatal("different payload treated as duplicate")
	}
	if n, _ := b.Total(); n != 2 {
		t.Fatalf("total %d", n)
	}
}

// DESIGN: after a large backlog is written and deleted, appends stay fast
// (NoFreelistSync + map freelist). Issue 2 asks: 1,000,000 records appended
// and drained, then append speed within 2x of a fresh file. The comparison is
// a ratio measured side by side; it is skipped with -short.
func TestAppendSpeedAfterLargeDrain(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 1,000,000 records")
	}
	dir := t.TempDir()
	measure := func(b *Buffer) time.Duration {
		start := time.Now()
		for i := 0; i < 300; i++ {
			if _, err := b.AppendWait(rec("r", "c", i)); err != nil {
				t.Fatal(err)
			}
		}
		return time.Since(start)
	}
	fresh := open(t, filepath.Join(dir, "fresh.db"), Options{})
	used := open(t, filepath.Join(dir, "used.db"), Options{})

	// fill with 1,000,000 records through the group-commit path, then drain
	const n = 1_000_000
	var wg sync.WaitGroup
	payload := bytes.Repeat([]byte("x"), 200)
	sem := make(chan struct{}, 4096)
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		r := Record{Route: "r", Received: time.Now(), KafkaTopic: "t", Key: []byte("k"), ClientID: "c", MQTTTopic: "x", Payload: payload}
		used.Append(&Append{Record: r, Done: func(res Result) {
			if res.Err != nil {
				t.Error(res.Err)
			}
			<-sem
			wg.Done()
		}})
	}
	wg.Wait()
	for {
		recs, err := used.Read(nil, prio(nil), 20000, 64<<20)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			break
		}
		refs := make([]Ref, len(recs))
		for i, r := range recs {
			refs[i] = Ref{Route: r.Route, Seq: r.Seq}
		}
		if err := used.Delete(refs); err != nil {
			t.Fatal(err)
		}
	}
	// interleave the measurements so machine noise hits both alike
	var f, u []time.Duration
	for round := 0; round < 3; round++ {
		f = append(f, measure(fresh))
		u = append(u, measure(used))
	}
	mf, mu := median(f), median(u)
	ratio := float64(mu) / float64(mf)
	t.Logf("300 fsync'd appends: fresh %v, after 1M drained %v (ratio %.2f, file %d MiB)", mf, mu, ratio, used.FileSize()>>20)
	if ratio > 2 {
		t.Fatalf("append after a 1M drain is %.2fx slower than fresh (limit 2x)", ratio)
	}
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}

func FuzzRecordDecode(f *testing.F) {
	r := rec("r", "c", 1)
	r.Headers = []Header{{Key: "a", Value: []byte("b")}}
	f.Add(r.marshal(nil))
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 200})
	f.Fuzz(func(t *testing.T, data []byte) {
		var x Record
		if err := x.unmarshal(data); err != nil {
			return
		}
		// whatever decodes survives re-encoding unchanged (the bytes may
		// differ: the decoder accepts non-canonical varints the writer never
		// produces)
		var y Record
		if err := y.unmarshal(x.marshal(nil)); err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if !y.Received.Equal(x.Received) || y.KafkaTopic != x.KafkaTopic || !bytes.Equal(y.Key, x.Key) ||
			y.MQTTTopic != x.MQTTTopic || y.ClientID != x.ClientID || !bytes.Equal(y.Payload, x.Payload) ||
			len(y.Headers) != len(x.Headers) {
			t.Fatalf("record changed by re-encoding: %+v vs %+v", x, y)
		}
		for i := range x.Headers {
			if x.Headers[i].Key != y.Headers[i].Key || !bytes.Equal(x.Headers[i].Value, y.Headers[i].Value) {
				t.Fatalf("header %d changed", i)
			}
		}
	})
}

// The dedup entries of delivered (purged) blocks move to the dedup log, which
// keeps about its newest dedupLogKeep entries across prunes and reopens: a
// recent retransmission is still recognised after both.
func TestDedupLogPruneAndReload(t *testing.T) {
	defer func(k int) { dedupLogKeep = k }(dedupLogKeep)
	dedupLogKeep = 200
	path := filepath.Join(t.TempDir(), "b.db")
	b, _ := Open(Options{Path: path})
	send := func(b *Buffer, i int, dup bool) Result {
		ch := make(chan Result, 1)
		r := rec("r", "c", i)
		b.Append(&Append{Record: r, Dedup: DedupKey{ClientID: fmt.Sprint("c", i%7), PacketID: uint16(i), Dup: dup},
			Done: func(x Result) { ch <- x }})
		return <-ch
	}
	for i := 1; i <= 1000; i++ {
		res := send(b, i, false)
		// delivered at once, purged every 100: the log grows and is pruned
		if err := b.Delete([]Ref{{Route: "r", Seq: res.Seq}}); err != nil {
			t.Fatal(err)
		}
		if i%100 == 0 {
			if err := b.purge(true); err != nil {
				t.Fatal(err)
			}
		}
	}
	var onDisk, blocks int
	b.db.View(func(tx *bolt.Tx) error {
		blocks = tx.Bucket(blocksBucket).Stats().KeyN
		return tx.Bucket(dedupBucket).ForEach(func(k, v []byte) error { onDisk += dedupCount(k, v); return nil })
	})
	if blocks != 0 {
		t.Fatalf("%d delivered blocks left after purge", blocks)
	}
	if onDisk < 200 || onDisk > 250+100 {
		t.Fatalf("%d entries on disk after pruning, want about 200..350", onDisk)
	}
	b.Close()
	b = open(t, path, Options{})
	if r := send(b, 999, true); !r.Duplicate {
		t.Fatal("recent retransmission not recognised after prune and reopen")
	}
	if r := send(b, 5, true); r.Duplicate {
		t.Fatal("a retransmission older than the kept log was taken for a duplicate")
	}
}

func FuzzDedupBatchDecode(f *testing.F) {
	f.Add(encodeDedupBatch([]dedupEntry{{client: "c", pid: 7, hash: 9, seq: 3}}))
	f.Add([]byte{5, 0})
	f.Fuzz(func(t *testing.T, v []byte) {
		if entries, err := decodeDedupBatch(v); err == nil && len(entries) > len(v) {
			t.Fatal("more entries than bytes")
		}
	})
}

// DeleteThrough removes exactly a route's records at or below the mark:
// nothing above it, nothing of another route.
func TestDeleteThrough(t *testing.T) {
	b := open(t, filepath.Join(t.TempDir(), "b.db"), Options{})
	var seqs []uint64
	for i := 0; i < 20; i++ {
		route := "tele"
		if i%2 == 1 {
			route = "pay"
		}
		res, err := b.AppendWait(rec(route, "c1", i))
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, res.Seq)
	}
	// through the 10th record: tele has 5 at or below it (i = 0,2,4,6,8)
	n, err := b.DeleteThrough("tele", seqs[9])
	if err != nil || n != 5 {
		t.Fatalf("deleted %d: %v", n, err)
	}
	if n, err := b.DeleteThrough("tele", seqs[9]); err != nil || n != 0 {
		t.Fatalf("repeated: deleted %d: %v", n, err)
	}
	if n, err := b.DeleteThrough("nosuchroute", 1<<62); err != nil || n != 0 {
		t.Fatalf("unknown route: deleted %d: %v", n, err)
	}
	st := b.Stats()
	if st["tele"].Messages != 5 || st["pay"].Messages != 10 {
		t.Fatalf("stats after delete: %+v", st)
	}
	got, err := b.Read(nil, prio(nil), 100, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range got {
		if r.Route == "tele" && r.Seq <= seqs[9] {
			t.Fatalf("record %d at or below the mark survived", r.Seq)
		}
	}
	if len(got) != 15 {
		t.Fatalf("read %d records, want 15", len(got))
	}
}

func TestEpochKeptAcrossReopenAndNewForNewFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "buffer.db")
	b, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	e1 := b.Epoch()
	if len(e1) != 32 {
		t.Fatalf("epoch %q: want 32 hex chars", e1)
	}
	b.Close()
	b, err = Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Epoch(); got != e1 {
		t.Fatalf("epoch changed across reopen: %q then %q", e1, got)
	}
	b.Close()
	os.Remove(path)
	b, err = Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got := b.Epoch(); got == e1 {
		t.Fatalf("a new file kept the old epoch %q", got)
	}
}
