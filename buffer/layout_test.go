package buffer

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// copyBuffer copies a buffer's file and its journal, as a crash leaves them.
func copyBuffer(t testing.TB, src, dst string) {
	t.Helper()
	copyFile(t, src, dst)
	for i, p := range journalPaths(src) {
		if _, err := os.Stat(p); err == nil {
			copyFile(t, p, journalPaths(dst)[i])
		}
	}
}

// A buffer file written by the first release (a bucket per route, a key per
// record; testdata/v1-buffer.db: 60 messages on two routes, the first 20
// delivered) opens, keeps every undelivered record with its seq, topic, key,
// headers and receive time, recognises a retransmission, and drains.
func TestUpgradeFromFirstFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	copyFile(t, "testdata/v1-buffer.db", path)
	b := open(t, path, Options{})
	st := b.Stats()
	if st["payments"].Messages != 27 || st["telemetry"].Messages != 13 {
		t.Fatalf("stats after upgrade: %+v, want 27 payments and 13 telemetry", st)
	}
	if b.NextSeq() != 61 {
		t.Fatalf("next seq %d, want 61", b.NextSeq())
	}
	recs, err := b.Read(nil, prio(map[string]int{"payments": 0, "telemetry": 5}), 1000, 1<<20)
	if err != nil || len(recs) != 40 {
		t.Fatalf("read %d records: %v", len(recs), err)
	}
	base := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	var last uint64
	for i, r := range recs {
		n := int(r.Seq) - 1 // message i got seq i+1
		route := "payments"
		if n%3 == 0 {
			route = "telemetry"
		}
		client := fmt.Sprintf("term-%d", n%4)
		if n < 20 || r.Route != route || r.KafkaTopic != route || string(r.Key) != client ||
			string(r.Payload) != fmt.Sprintf(`{"n":%d}`, n) || !r.Received.Equal(base.Add(time.Duration(n)*time.Second)) ||
			len(r.Headers) != 1 || string(r.Headers[0].Value) != fmt.Sprint(n) {
			t.Fatalf("record %d after upgrade: %+v", i, r)
		}
		if i == 27 {
			last = 0 // telemetry starts: FIFO again
		}
		if r.Seq <= last {
			t.Fatalf("record %d out of order: seq %d after %d", i, r.Seq, last)
		}
		last = r.Seq
	}
	// message 59 (client term-3, packet id 60) retransmitted: not stored twice
	dup := Record{Route: "payments", Received: time.Now(), KafkaTopic: "payments", Key: []byte("term-3"),
		MQTTTopic: "terminals/term-3/payments/x", ClientID: "term-3", Payload: []byte(`{"n":59}`)}
	ch := make(chan Result, 1)
	b.Append(&Append{Record: dup, Dedup: DedupKey{ClientID: "term-3", PacketID: 60, Dup: true}, Done: func(r Result) { ch <- r }})
	if r := <-ch; !r.Duplicate || r.Seq != 60 {
		t.Fatalf("retransmission after upgrade: %+v", r)
	}
	res, err := b.AppendWait(rec("payments", "term-1", 99))
	if err != nil || res.Seq != 61 {
		t.Fatalf("first new append: %+v %v", res, err)
	}
	refs := make([]Ref, len(recs))
	for i, r := range recs {
		refs[i] = Ref{Route: r.Route, Seq: r.Seq}
	}
	refs = append(refs, Ref{Route: "payments", Seq: 61})
	if err := b.Delete(refs); err != nil {
		t.Fatal(err)
	}
	b.Close()
	b2 := open(t, path, Options{})
	if n, _ := b2.Total(); n != 0 {
		t.Fatalf("%d records left after draining the upgraded file", n)
	}
	if b2.NextSeq() != 62 {
		t.Fatalf("next seq after drain and reopen: %d", b2.NextSeq())
	}
}

// perCommit appends n records one commit each and returns the writes bbolt
// made per commit (one per node, a node of one or more pages, plus the meta
// page) and the bytes this process caused to be written to storage per
// commit (/proc/self/io write_bytes: page-cache pages dirtied).
func perCommit(t *testing.T, b *Buffer, n int) (writes, bytes float64) {
	t.Helper()
	if err := b.Checkpoint(); err != nil { // what came before is not counted
		t.Fatal(err)
	}
	before, wb := pagesWritten(b), processWriteBytes(t)
	for i := 0; i < n; i++ {
		if _, err := b.AppendWait(rec("pay", "c", i)); err != nil {
			t.Fatal(err)
		}
	}
	// the checkpoint that puts them into the bbolt file is part of the cost
	if err := b.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	return float64(pagesWritten(b)-before) / float64(n), float64(processWriteBytes(t)-wb) / float64(n)
}

func processWriteBytes(t *testing.T) int64 {
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Skipf("no /proc/self/io: %v", err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "write_bytes: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	t.Skip("no write_bytes in /proc/self/io")
	return 0
}

// Flash wear is a budget: at one message per commit, a commit writes its
// journal entry (one 4 KiB page of the page cache, sometimes two), and its
// share of a checkpoint, which writes many blocks into the bbolt file in
// one transaction. The first format wrote ~7 nodes in three buckets and
// ~33 KB per commit, the blocks without a journal ~15 KB (5 nodes); a
// change that brings either back fails here.
func TestPagesWrittenPerCommit(t *testing.T) {
	b := open(t, filepath.Join(t.TempDir(), "b.db"), Options{})
	fresh, freshBytes := perCommit(t, b, 200)
	// a backlog of 20,000 one-record blocks deepens the tree
	var wg sync.WaitGroup
	for i := 0; i < 20000; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.AppendWait(rec("tele", "c", i))
		}()
		if i%64 == 63 {
			wg.Wait()
		}
	}
	wg.Wait()
	deep, deepBytes := perCommit(t, b, 200)
	t.Logf("per one-message commit: %.2f page writes and %.0f bytes written on a fresh file, %.2f and %.0f with a backlog",
		fresh, freshBytes, deep, deepBytes)
	if fresh > 0.5 || deep > 0.5 {
		t.Fatalf("bbolt node writes per commit %.2f fresh, %.2f with a backlog: want at most 0.5 (checkpoints share them)", fresh, deep)
	}
	if freshBytes > 6<<10 || deepBytes > 6<<10 {
		t.Fatalf("bytes written per commit %.0f fresh, %.0f with a backlog: want at most 6 KiB", freshBytes, deepBytes)
	}
	// acknowledging writes nothing at all
	recs, _ := b.Read(nil, prio(nil), 5000, 64<<20)
	refs := make([]Ref, len(recs))
	for i, r := range recs {
		refs[i] = Ref{Route: r.Route, Seq: r.Seq}
	}
	before := pagesWritten(b)
	if err := b.Delete(refs); err != nil {
		t.Fatal(err)
	}
	if w := pagesWritten(b) - before; w != 0 {
		t.Fatalf("Delete of %d records wrote %d pages; it must write nothing", len(refs), w)
	}
}

// Delivered records leave the file only with a purge; a crash before it
// re-sends them (at-least-once), and never loses an undelivered one.
func TestDeliveredUntilPurgeAndMarks(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "b.db")
	b := open(t, path, Options{PurgeInterval: time.Hour, JanitorInterval: time.Hour})
	var seqs []uint64
	for i := 0; i < 30; i++ {
		route := []string{"pay", "tele"}[i%2]
		r, err := b.AppendWait(rec(route, "c", i))
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, r.Seq)
	}
	// deliver the first 10 of "pay" (odd positions are tele)
	var refs []Ref
	for i := 0; i < 20; i += 2 {
		refs = append(refs, Ref{Route: "pay", Seq: seqs[i]})
	}
	b.Delete(refs)
	// a copy of the files now is what a crash leaves: the deliveries are not in it
	crashed := filepath.Join(dir, "crash.db")
	copyBuffer(t, path, crashed)
	c := open(t, crashed, Options{})
	if n := c.Stats()["pay"].Messages; n != 15 {
		t.Fatalf("after a crash before the purge: %d pay records, want all 15 (delivered ones are sent again)", n)
	}
	c.Close()
	// after a purge the marks keep them delivered even though their blocks
	// (shared with undelivered tele records) remain
	if err := b.purge(true); err != nil {
		t.Fatal(err)
	}
	copyBuffer(t, path, crashed)
	c = open(t, crashed, Options{})
	st := c.Stats()
	if st["pay"].Messages != 5 || st["tele"].Messages != 15 {
		t.Fatalf("after purge and crash: %+v, want 5 pay and 15 tele", st)
	}
	got, _ := c.Read(nil, prio(map[string]int{"pay": 0, "tele": 1}), 100, 1<<20)
	if len(got) != 20 || got[0].Seq != seqs[20] {
		t.Fatalf("read after purge and crash: %d records, first seq %d (want 20, %d)", len(got), got[0].Seq, seqs[20])
	}
}

// The child of TestKillDuringPurgeAndCompaction: appends, delivers, purges
// and compacts in a loop, printing "A seq" once a record is acknowledged and
// "D seq" just before it is delivered, until it is killed.
func TestHelperPurgeCompactLoop(t *testing.T) {
	path := os.Getenv("BUFFER_KILL_HELPER")
	if path == "" {
		t.Skip("helper process only")
	}
	b, err := Open(Options{Path: path, PurgeInterval: 10 * time.Millisecond, JanitorInterval: 5 * time.Millisecond, CompactMinFile: 1 << 20})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(3)
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	payload := bytes.Repeat([]byte("x"), 2000)
	for round := 0; ; round++ {
		var wg sync.WaitGroup
		for i := 0; i < 200; i++ {
			wg.Add(1)
			r := Record{Route: []string{"pay", "tele"}[i%2], Received: time.Now(), KafkaTopic: "t", Payload: payload}
			b.Append(&Append{Record: r, Done: func(res Result) {
				if res.Err == nil {
					mu.Lock()
					fmt.Fprintf(out, "A %d\n", res.Seq)
					mu.Unlock()
				}
				wg.Done()
			}})
		}
		wg.Wait()
		mu.Lock()
		out.Flush()
		mu.Unlock()
		recs, _ := b.Read(nil, prio(nil), 150, 1<<30)
		refs := make([]Ref, len(recs))
		for i, r := range recs {
			refs[i] = Ref{Route: r.Route, Seq: r.Seq}
			fmt.Fprintf(out, "D %d\n", r.Seq)
		}
		out.Flush()
		b.Delete(refs)
		if round%5 == 4 {
			b.purge(true)
		}
		if round%20 == 19 {
			b.Compact()
		}
	}
}

// kill -9 at random moments while the lazy delete purges and compaction
// swaps files: every acknowledged record not yet handed to delivery is
// still there after each restart.
func TestKillDuringPurgeAndCompaction(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	path := filepath.Join(t.TempDir(), "b.db")
	acked, delivered := map[uint64]bool{}, map[uint64]bool{}
	for run := 0; run < 6; run++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperPurgeCompactLoop$")
		cmd.Env = append(os.Environ(), "BUFFER_KILL_HELPER="+path)
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1<<16)
		go func() {
			s := bufio.NewScanner(stdout)
			for s.Scan() {
				lines <- s.Text()
			}
			close(lines)
		}()
		time.Sleep(time.Duration(300+rand.IntN(900)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		for l := range lines {
			f := strings.Fields(l)
			if len(f) != 2 {
				if strings.HasPrefix(l, "ERR") {
					t.Fatalf("helper: %s", l)
				}
				continue
			}
			seq, _ := strconv.ParseUint(f[1], 10, 64)
			switch f[0] {
			case "A":
				acked[seq] = true
			case "D":
				delivered[seq] = true
			}
		}
		cmd.Wait()
		b, err := Open(Options{Path: path, JanitorInterval: time.Hour})
		if err != nil {
			t.Fatalf("run %d: reopen: %v", run, err)
		}
		present := map[uint64]bool{}
		recs, err := b.Read(nil, prio(nil), 1<<30, 1<<40)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			present[r.Seq] = true
		}
		b.Close()
		lost := 0
		for s := range acked {
			if !delivered[s] && !present[s] {
				lost++
			}
		}
		if lost > 0 {
			t.Fatalf("run %d: %d acknowledged, undelivered records lost (%d acked so far)", run, lost, len(acked))
		}
		t.Logf("run %d: %d acknowledged so far, %d in the file", run, len(acked), len(present))
	}
	if len(acked) == 0 {
		t.Fatal("the helper acknowledged nothing")
	}
}

var _ = io.Discard

func pagesWritten(b *Buffer) int64 {
	st := b.db.Stats()
	return st.TxStats.GetWrite()
}

// After a write transaction fails the bbolt handle is not trusted (a failed
// write can leave its freelist inconsistent; a failed fsync may have dropped
// pages the cache still shows): the file is reopened from disk and ingest
// goes on, with nothing acknowledged lost. A read-only disk makes the buffer
// unusable; a full one refuses appends for a moment, then resumes.
func TestWriteFailureReopensOrStops(t *testing.T) {
	var fail atomic.Pointer[error]
	b := open(t, filepath.Join(t.TempDir(), "b.db"), Options{BeforeCommit: func([]uint64) error {
		if p := fail.Load(); p != nil {
			return *p
		}
		return nil
	}})
	var acked []uint64
	for i := 0; i < 5; i++ {
		r, err := b.AppendWait(rec("pay", "c", i))
		if err != nil {
			t.Fatal(err)
		}
		acked = append(acked, r.Seq)
	}
	eio := fmt.Errorf("injected fsync: %w", syscall.EIO)
	fail.Store(&eio)
	if _, err := b.AppendWait(rec("pay", "c", 99)); err == nil {
		t.Fatal("a failed commit was acknowledged")
	}
	fail.Store(nil)
	r, err := b.AppendWait(rec("pay", "c", 6))
	if err != nil || b.Err() != nil {
		t.Fatalf("after an EIO the buffer should reopen and go on: %v, Err %v", err, b.Err())
	}
	acked = append(acked, r.Seq)
	got, _ := b.Read(nil, prio(nil), 100, 1<<20)
	if len(got) != len(acked) {
		t.Fatalf("after the reopen %d records, want the %d acknowledged", len(got), len(acked))
	}

	nospc := fmt.Errorf("injected write: %w", syscall.ENOSPC)
	fail.Store(&nospc)
	if _, err := b.AppendWait(rec("pay", "c", 98)); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("disk full: %v", err)
	}
	fail.Store(nil)
	if _, err := b.AppendWait(rec("pay", "c", 97)); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("right after a full disk appends are refused without trying: %v", err)
	}
	testPoll(t, func() bool { _, err := b.AppendWait(rec("pay", "c", 7)); return err == nil })

	erofs := fmt.Errorf("injected: %w", syscall.EROFS)
	fail.Store(&erofs)
	b.AppendWait(rec("pay", "c", 96))
	fail.Store(nil)
	select {
	case <-b.Failed():
	case <-time.After(10 * time.Second):
		t.Fatal("a read-only disk did not make the buffer unusable")
	}
	if _, err := b.AppendWait(rec("pay", "c", 8)); !errors.Is(err, ErrUnusable) {
		t.Fatalf("an unusable buffer acknowledged an append: %v", err)
	}
}

// A write fails and reopening the file fails too (its name is taken by a
// directory): the buffer is unusable, and everything that still uses it
// (the drain's Read, a delete, Close with its final purge) gets an error,
// never a nil dereference.
func TestFailedReopenLeavesNoNilHandle(t *testing.T) {
	var fail atomic.Pointer[error]
	path := filepath.Join(t.TempDir(), "b.db")
	b, err := Open(Options{Path: path, BeforeCommit: func([]uint64) error {
		if p := fail.Load(); p != nil {
			return *p
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := b.AppendWait(rec("pay", "c", 1))
	if err != nil {
		t.Fatal(err)
	}
	b.Delete([]Ref{{Route: "pay", Seq: r.Seq}}) // something for the final purge to do
	if err := os.Rename(path, path+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	eio := fmt.Errorf("injected fsync: %w", syscall.EIO)
	fail.Store(&eio)
	if _, err := b.AppendWait(rec("pay", "c", 2)); err == nil {
		t.Fatal("a failed commit was acknowledged")
	}
	select {
	case <-b.Failed():
	case <-time.After(10 * time.Second):
		t.Fatal("a failed reopen did not make the buffer unusable")
	}
	if _, err := b.Read(nil, prio(nil), 10, 1<<20); err == nil {
		t.Log("Read of an unusable buffer returned no error (nothing indexed)")
	}
	if err := b.purge(true); err == nil {
		t.Log("purge of an unusable buffer returned no error (nothing to purge)")
	}
	if err := b.Close(); err != nil {
		t.Logf("Close: %v", err)
	}
}
