package buffer

import (
	"bytes"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// fakeClock drives the buffer clock (Options.Elapsed) by hand.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) elapsed() time.Duration  { return time.Duration(c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// blockPages is the pages the blocks bucket takes (allocated, not in use).
func blockPages(t *testing.T, b *Buffer) int {
	var s bolt.BucketStats
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	if err := b.db.View(func(tx *bolt.Tx) error { s = tx.Bucket(blocksBucket).Stats(); return nil }); err != nil {
		t.Fatal(err)
	}
	return s.BranchPageN + s.BranchOverflowN + s.LeafPageN + s.LeafOverflowN
}

// checkpointAndRepack: a repack takes only blocks in the bbolt file, so the
// journal's are checkpointed first (in a running gateway a checkpoint is at
// most about a second behind, and a repack takes blocks 20 s old).
func checkpointAndRepack(b *Buffer) (int, error) {
	if err := b.Checkpoint(); err != nil {
		return 0, err
	}
	return b.repack()
}

func appendDedup(b *Buffer, r Record, k DedupKey) (Result, error) {
	ch := make(chan Result, 1)
	if err := b.Append(&Append{Record: r, Dedup: k, Done: func(r Result) { ch <- r }}); err != nil {
		return Result{}, err
	}
	res := <-ch
	return res, res.Err
}

func readAll(t *testing.T, b *Buffer) []Record {
	t.Helper()
	got, err := b.Read(nil, prio(map[string]int{"pay": 0, "tele": 5}), 1<<20, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func sameRecords(t *testing.T, what string, got, want []Record) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d records, want %d", what, len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Seq != w.Seq || g.Route != w.Route || !bytes.Equal(g.Payload, w.Payload) || g.MQTTTopic != w.MQTTTopic ||
			!g.Received.Equal(w.Received) || len(g.Headers) != len(w.Headers) {
			t.Fatalf("%s: record %d is seq %d %s %q, want seq %d %s %q", what, i, g.Seq, g.Route, g.Payload, w.Seq, w.Route, w.Payload)
		}
	}
}

// A backlog of one-message commits is merged into a few blocks: every record
// is kept with its seq, order, route, removals and dedup entry, across a
// reopen, and the blocks take a fraction of the pages.
func TestRepackKeepsEveryRecordAndShrinksTheBacklog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	var clk fakeClock
	opts := Options{JanitorInterval: time.Hour, PurgeInterval: time.Hour, CompactMinFile: 1 << 62, Elapsed: clk.elapsed}
	b := open(t, path, opts)
	payload := bytes.Repeat([]byte("x"), 250)
	var all []Record
	for i := 0; i < 900; i++ {
		route := "tele"
		if i%3 == 0 {
			route = "pay"
		}
		r := rec(route, fmt.Sprintf("c%d", i%7), i)
		r.Payload = append([]byte(fmt.Sprintf("%d-", i)), payload...)
		if i%4 == 0 {
			r.Headers = []Header{{Key: "mqtt.correlation_data", Value: []byte{byte(i)}}}
		}
		res, err := appendDedup(b, r, DedupKey{ClientID: r.ClientID, PacketID: uint16(i + 1)})
		if err != nil {
			t.Fatal(err)
		}
		r.Seq = res.Seq
		all = append(all, r)
		clk.advance(40 * time.Millisecond) // 36 s of one-message commits
	}
	// some delivered before the repack
	var refs []Ref
	for i := 0; i < len(all); i += 10 {
		refs = append(refs, Ref{Route: all[i].Route, Seq: all[i].Seq})
	}
	if err := b.Delete(refs); err != nil {
		t.Fatal(err)
	}
	want := func(skip func(i int) bool) []Record {
		var pay, tele []Record
		for i, r := range all {
			if skip(i) {
				continue
			}
			if r.Route == "pay" {
				pay = append(pay, r)
			} else {
				tele = append(tele, r)
			}
		}
		return append(pay, tele...)
	}
	delivered := func(i int) bool { return i%10 == 0 }
	sameRecords(t, "before the repack", readAll(t, b), want(delivered))
	statsBefore := b.Stats()
	if err := b.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	blocksBefore, pagesBefore := len(b.idx.blocks), blockPages(t, b)

	clk.advance(30 * time.Second)
	removed, err := checkpointAndRepack(b)
	if err != nil {
		t.Fatal(err)
	}
	blocksAfter, pagesAfter := len(b.idx.blocks), blockPages(t, b)
	t.Logf("repack: %d blocks -> %d (%d merged away), blocks bucket %d pages -> %d", blocksBefore, blocksAfter, removed, pagesBefore, pagesAfter)
	if removed != blocksBefore-blocksAfter || blocksAfter > 20 {
		t.Fatalf("repack left %d of %d blocks (reported %d removed)", blocksAfter, blocksBefore, removed)
	}
	if pagesAfter*2 > pagesBefore {
		t.Fatalf("repacked blocks take %d pages, before %d: not even halved", pagesAfter, pagesBefore)
	}
	sameRecords(t, "after the repack", readAll(t, b), want(delivered))
	for route, st := range b.Stats() {
		if st.Messages != statsBefore[route].Messages || st.Bytes != statsBefore[route].Bytes {
			t.Fatalf("route %s: %+v after the repack, %+v before", route, st, statsBefore[route])
		}
	}
	// a second pass finds nothing more to do
	if n, err := checkpointAndRepack(b); err != nil || n != 0 {
		t.Fatalf("second repack: %d, %v", n, err)
	}
	// the drain goes on after the repack, deep into merged blocks (each
	// route delivers a prefix: the marks written by purges cover it)
	gone := func(i int) bool {
		return i%10 == 0 || (all[i].Route == "pay" && i < 450) || (all[i].Route == "tele" && i < 300)
	}
	refs = refs[:0]
	for i := range all {
		if gone(i) {
			refs = append(refs, Ref{Route: all[i].Route, Seq: all[i].Seq})
		}
	}
	if err := b.Delete(refs); err != nil {
		t.Fatal(err)
	}
	sameRecords(t, "after deletes in merged blocks", readAll(t, b), want(gone))
	if err := b.purge(true); err != nil {
		t.Fatal(err)
	}

	// reopen: the merged blocks, the marks and the dedup entries are read back
	b.Close()
	b = open(t, path, opts)
	sameRecords(t, "after a reopen", readAll(t, b), want(gone))
	r := all[7]
	res, err := appendDedup(b, r, DedupKey{ClientID: r.ClientID, PacketID: 8, Dup: true})
	if err != nil || !res.Duplicate || res.Seq != r.Seq {
		t.Fatalf("retransmission of a repacked message: %+v, %v (want a duplicate of seq %d)", res, err, r.Seq)
	}
	refs = refs[:0]
	for _, r := range readAll(t, b) {
		refs = append(refs, Ref{Route: r.Route, Seq: r.Seq})
	}
	if err := b.Delete(refs); err != nil {
		t.Fatal(err)
	}
	if err := b.purge(true); err != nil {
		t.Fatal(err)
	}
	if n, _ := b.Total(); n != 0 || len(b.idx.blocks) != 0 {
		t.Fatalf("after delivering everything: %d records, %d blocks", n, len(b.idx.blocks))
	}
}

// A merged block keeps the newest clock of its members, so max_age may come
// late (by less than repackWindow) but never early.
func TestRepackNeverExpiresEarly(t *testing.T) {
	var clk fakeClock
	const maxAge = 30 * time.Second
	b := open(t, filepath.Join(t.TempDir(), "b.db"), Options{JanitorInterval: time.Hour, PurgeInterval: time.Hour,
		Elapsed: clk.elapsed, Limits: limits(0, map[string]Policy{"tele": {MaxAge: maxAge}})})
	committed := map[uint64]time.Duration{}
	for i := 0; i < 200; i++ {
		res, err := b.AppendWait(rec("tele", "c", i))
		if err != nil {
			t.Fatal(err)
		}
		committed[res.Seq] = clk.elapsed()
		clk.advance(100 * time.Millisecond)
	}
	clk.advance(25 * time.Second) // 45 s
	if n, err := checkpointAndRepack(b); err != nil || n < 150 {
		t.Fatalf("repack merged %d: %v", n, err)
	}
	for clk.elapsed() < 65*time.Second {
		if err := b.expire(); err != nil {
			t.Fatal(err)
		}
		kept := map[uint64]bool{}
		for _, r := range readAll(t, b) {
			kept[r.Seq] = true
		}
		for seq, at := range committed {
			if clk.elapsed()-at < maxAge && !kept[seq] {
				t.Fatalf("at %v seq %d (committed at %v) expired after %v, before max_age %v", clk.elapsed(), seq, at, clk.elapsed()-at, maxAge)
			}
			if clk.elapsed()-at >= maxAge+repackWindow*time.Millisecond && kept[seq] {
				t.Fatalf("at %v seq %d (committed at %v) still kept after %v", clk.elapsed(), seq, at, clk.elapsed()-at)
			}
		}
		clk.advance(250 * time.Millisecond)
	}
}

// Repacks while terminals publish and the drain reads and deletes, with the
// link dropping so backlogs age: every acknowledged record is read by the
// drain, in order per route, none is skipped.
func TestRepackWhileIngestAndDrainRun(t *testing.T) {
	var clk fakeClock
	b := open(t, filepath.Join(t.TempDir(), "b.db"), Options{JanitorInterval: time.Hour, PurgeInterval: time.Hour, Elapsed: clk.elapsed})
	const writers, each = 4, 400
	var acked sync.Map
	var linkDown atomic.Bool
	var ackedN atomic.Int64
	linkDown.Store(true)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				route := []string{"pay", "tele"}[i%2]
				res, err := b.AppendWait(rec(route, fmt.Sprintf("w%d", w), i))
				if err != nil {
					t.Error(err)
					return
				}
				acked.Store(res.Seq, route)
				clk.advance(50 * time.Millisecond)
				// the link is down for the first 50 s and again for a while
				n := ackedN.Add(1)
				linkDown.Store(n < 1000 || (n > 1200 && n < 1450))
			}
		}()
	}
	stopRepack := make(chan struct{})
	var repacked atomic.Int64
	go func() {
		for {
			select {
			case <-stopRepack:
				return
			default:
			}
			n, err := checkpointAndRepack(b)
			if err != nil {
				t.Error(err)
				return
			}
			repacked.Add(int64(n))
			_ = b.purge(false)
			time.Sleep(time.Millisecond)
		}
	}()
	read := map[uint64]bool{}
	after := map[string]uint64{}
	go func() { wg.Wait(); close(done) }()
	finished := false
	for {
		select {
		case <-done:
			finished = true
			linkDown.Store(false)
		default:
		}
		if linkDown.Load() {
			time.Sleep(time.Millisecond)
			continue
		}
		recs, err := b.Read(after, prio(nil), 64, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		var refs []Ref
		for _, r := range recs {
			if r.Seq <= after[r.Route] {
				t.Fatalf("route %s: seq %d read after %d", r.Route, r.Seq, after[r.Route])
			}
			after[r.Route] = r.Seq
			read[r.Seq] = true
			refs = append(refs, Ref{Route: r.Route, Seq: r.Seq})
		}
		if err := b.Delete(refs); err != nil {
			t.Fatal(err)
		}
		if finished && len(recs) == 0 {
			break
		}
	}
	close(stopRepack)
	n := 0
	acked.Range(func(k, _ any) bool {
		n++
		if !read[k.(uint64)] {
			t.Errorf("acknowledged seq %d never read by the drain", k)
		}
		return true
	})
	if n != writers*each {
		t.Fatalf("%d acknowledged, want %d", n, writers*each)
	}
	if total, _ := b.Total(); total != 0 {
		t.Fatalf("%d records left after the drain", total)
	}
	t.Logf("%d records, %d blocks merged away by repacks meanwhile", n, repacked.Load())
	if repacked.Load() == 0 {
		t.Fatal("no repack happened: the test proved nothing")
	}
}

// Right after an outage the drain takes the backlog in seconds: what it will
// reach within repackHorizon is not rewritten first. Once nothing leaves
// (the link is down again), the rest is repacked.
func TestRepackLeavesWhatTheDrainIsAboutToTake(t *testing.T) {
	var clk fakeClock
	b := open(t, filepath.Join(t.TempDir(), "b.db"), Options{JanitorInterval: time.Hour, PurgeInterval: time.Hour, Elapsed: clk.elapsed})
	if _, err := checkpointAndRepack(b); err != nil { // the first pass: no rate known yet
		t.Fatal(err)
	}
	var refs []Ref
	for i := 0; i < 1000; i++ {
		res, err := b.AppendWait(rec("tele", "c", i))
		if err != nil {
			t.Fatal(err)
		}
		if i < 400 {
			refs = append(refs, Ref{Route: "tele", Seq: res.Seq})
		}
		clk.advance(30 * time.Millisecond)
	}
	clk.advance(30 * time.Second)
	if err := b.Delete(refs); err != nil { // the drain is taking hundreds a second
		t.Fatal(err)
	}
	if n, err := checkpointAndRepack(b); err != nil || n != 0 {
		t.Fatalf("while the drain runs the repack merged %d blocks (%v): they were about to be delivered", n, err)
	}
	time.Sleep(10 * time.Millisecond)
	if n, err := checkpointAndRepack(b); err != nil || n < 500 {
		t.Fatalf("once nothing left, the repack merged %d blocks (%v), want the waiting ones", n, err)
	}
}

// What a waiting backlog of 200-byte telemetry takes on disk, per message,
// against what it counts in the budget: before the repack and after. Fails
// when a repacked backlog takes more than 1.25 times its budget.
func TestBacklogFootprint(t *testing.T) {
	for _, perCommit := range []int{1, 8} {
		var clk fakeClock
		b := open(t, filepath.Join(t.TempDir(), "b.db"), Options{JanitorInterval: time.Hour, PurgeInterval: time.Hour, Elapsed: clk.elapsed})
		const n = 2400
		for i := 0; i < n; i += perCommit {
			var wg sync.WaitGroup
			for j := i; j < i+perCommit; j++ {
				id := fmt.Sprintf("term-%04d", j%500)
				wg.Add(1)
				err := b.Append(&Append{Record: Record{Route: "telemetry", Received: time.Now(), KafkaTopic: "telemetry", Key: []byte(id),
					MQTTTopic: "terminals/" + id + "/telemetry", ClientID: id, Payload: make([]byte, 200)},
					Dedup: DedupKey{ClientID: id, PacketID: uint16(j + 1)}, Done: func(Result) { wg.Done() }})
				if err != nil {
					t.Fatal(err)
				}
			}
			wg.Wait()
			clk.advance(50 * time.Millisecond)
		}
		_, budget := b.Total()
		if err := b.Checkpoint(); err != nil {
			t.Fatal(err)
		}
		before := blockPages(t, b) * pageSize
		clk.advance(30 * time.Second)
		for {
			k, err := checkpointAndRepack(b)
			if err != nil {
				t.Fatal(err)
			}
			if k == 0 {
				break
			}
		}
		after := blockPages(t, b) * pageSize
		t.Logf("%d per commit: %d B/msg in the budget; on disk %d B/msg (%.2fx) before the repack, %d B/msg (%.2fx) after",
			perCommit, budget/n, before/n, float64(before)/float64(budget), after/n, float64(after)/float64(budget))
		if float64(after) > 1.25*float64(budget) {
			t.Errorf("%d per commit: a repacked backlog takes %.2f times its budget on disk", perCommit, float64(after)/float64(budget))
		}
	}
}

// Blocks left for a drain that then stops (the link dropped again) are
// repacked by a later pass, even when blocks behind them were repacked.
func TestRepackReturnsToWhatTheDrainLeft(t *testing.T) {
	var clk fakeClock
	b := open(t, filepath.Join(t.TempDir(), "b.db"), Options{JanitorInterval: time.Hour, PurgeInterval: time.Hour, Elapsed: clk.elapsed})
	if _, err := checkpointAndRepack(b); err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for i := 0; i < 1000; i++ {
		res, err := b.AppendWait(rec("tele", "c", i))
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, res.Seq)
		clk.advance(30 * time.Millisecond)
	}
	clk.advance(30 * time.Second)
	// a trickle: a few records a second leave, so the horizon covers some
	// of the backlog, not all of it
	var refs []Ref
	for _, s := range seqs[:3] {
		refs = append(refs, Ref{Route: "tele", Seq: s})
	}
	if err := b.Delete(refs); err != nil {
		t.Fatal(err)
	}
	first, err := checkpointAndRepack(b)
	if err != nil {
		t.Fatal(err)
	}
	// the link is gone: nothing leaves any more
	time.Sleep(10 * time.Millisecond)
	for {
		n, err := checkpointAndRepack(b)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	b.mu.Lock()
	small := 0
	for _, bi := range b.idx.blocks {
		if bi.live > 0 && bi.n == 1 {
			small++
		}
	}
	b.mu.Unlock()
	t.Logf("first pass merged %d blocks; one-record blocks left at the end: %d", first, small)
	if small > 2 {
		t.Fatalf("%d one-record blocks were never repacked", small)
	}
}
