package buffer

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// appendN appends n records of route, one commit each, and returns their seqs.
func appendN(t *testing.T, b *Buffer, route string, from, n int) []uint64 {
	t.Helper()
	var seqs []uint64
	for i := from; i < from+n; i++ {
		r, err := b.AppendWait(rec(route, "c", i))
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, r.Seq)
	}
	return seqs
}

func seqsOf(recs []Record) []uint64 {
	out := make([]uint64, len(recs))
	for i, r := range recs {
		out[i] = r.Seq
	}
	return out
}

func sameSeqs(t *testing.T, what string, got, want []uint64) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s: seqs %v, want %v", what, got, want)
	}
}

// A crash while one generation waits for its checkpoint and the next is
// being written: both are replayed, in order, the older is checkpointed at
// open, and the writer goes on after the newer one's last entry.
func TestJournalReplaysTwoGenerations(t *testing.T) {
	hold, entered := make(chan struct{}), make(chan struct{}, 8)
	checkpointHook = func() { entered <- struct{}{}; <-hold }
	defer func() { checkpointHook = nil }()
	dir := t.TempDir()
	path := filepath.Join(dir, "b.db")
	b := open(t, path, Options{JanitorInterval: time.Hour, PurgeInterval: time.Hour})
	want := appendN(t, b, "pay", 0, 30)
	b.dbMu.RLock()
	b.maybeCheckpoint(true) // generation 1 closes; its checkpoint is held
	b.dbMu.RUnlock()
	<-entered
	want = append(want, appendN(t, b, "pay", 30, 30)...) // generation 2
	b.dbMu.RLock()
	b.maybeCheckpoint(true) // refused: generation 1 is not in the file yet
	gen := b.jnl.cur
	b.dbMu.RUnlock()
	if gen != 2 {
		t.Fatalf("writing generation %d while 1 waits for its checkpoint, want 2", gen)
	}
	crashed := filepath.Join(dir, "crash.db")
	copyBuffer(t, path, crashed) // what a power cut leaves: nothing of it is in buffer.db
	checkpointHook = nil
	close(hold)

	c := open(t, crashed, Options{JanitorInterval: time.Hour, PurgeInterval: time.Hour})
	sameSeqs(t, "after the crash", seqsOf(readAll(t, c)), want)
	testPoll(t, func() bool { return c.jnl.applied.Load() == 1 })
	c.dbMu.RLock()
	cur, closing := c.jnl.cur, c.jnl.closing
	c.dbMu.RUnlock()
	if cur != 2 || closing != 1 {
		t.Fatalf("after replay writing generation %d (closing %d), want 2 (1)", cur, closing)
	}
	want = append(want, appendN(t, c, "pay", 60, 10)...)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	d := open(t, crashed, Options{JanitorInterval: time.Hour, PurgeInterval: time.Hour})
	if n := d.pending.len(); n != 0 {
		t.Fatalf("a clean close left %d blocks in the journal", n)
	}
	sameSeqs(t, "after a clean close", seqsOf(readAll(t, d)), want)
	if next := d.NextSeq(); next != want[len(want)-1]+1 {
		t.Fatalf("next seq %d, want %d", next, want[len(want)-1]+1)
	}
}

// A write that did not complete (a power cut between write and fdatasync
// keeps any part of it) ends the replay there: what came before is kept,
// and the next append goes where it began.
func TestJournalTornTail(t *testing.T) {
	for _, cut := range []string{"half an entry", "garbage", "a stale generation"} {
		t.Run(cut, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "b.db")
			b := open(t, path, Options{JanitorInterval: time.Hour, PurgeInterval: time.Hour})
			want := appendN(t, b, "pay", 0, 20)
			b.dbMu.RLock()
			jpath, off := b.jnl.paths[b.jnl.cur%2], b.jnl.off
			b.dbMu.RUnlock()
			crashed := filepath.Join(dir, "crash.db")
			copyBuffer(t, path, crashed)
			f, err := os.OpenFile(strings.Replace(jpath, path, crashed, 1), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			switch cut {
			case "half an entry":
				// the start of a copy of the last entry, as a torn write
				last, _ := os.ReadFile(jpath)
				f.WriteAt(last[off-40:off-10], off)
			case "garbage":
				f.WriteAt([]byte(strings.Repeat("\xa5", 300)), off)
			case "a stale generation":
				// a whole entry of generation 0 (what the file held before)
				e := &journal{files: [2]*os.File{f, f}, off: off, cur: 0}
				if err := e.append(1<<40, append(make([]byte, journalEntryHead), "stale"...)); err != nil {
					t.Fatal(err)
				}
			}
			f.Close()
			c := open(t, crashed, Options{JanitorInterval: time.Hour, PurgeInterval: time.Hour})
			sameSeqs(t, "after "+cut, seqsOf(readAll(t, c)), want)
			c.dbMu.RLock()
			got := c.jnl.off
			c.dbMu.RUnlock()
			if got != off {
				t.Fatalf("the writer goes on at %d, want %d (where the torn entry began)", got, off)
			}
			want = append(want, appendN(t, c, "pay", 20, 5)...)
			c.Close()
			d := open(t, crashed, Options{})
			sameSeqs(t, "appended after "+cut, seqsOf(readAll(t, d)), want)
		})
	}
}

// The journal of a buffer file that is gone (wiped, lost, moved aside as
// corrupt) belongs to another epoch: it is moved aside, not replayed into
// the new file.
func TestJournalOfAnotherFileMovedAside(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "b.db")
	b := open(t, path, Options{JanitorInterval: time.Hour})
	appendN(t, b, "pay", 0, 5)
	crashed := filepath.Join(dir, "crash.db")
	copyBuffer(t, path, crashed)
	if err := os.Remove(crashed); err != nil {
		t.Fatal(err)
	}
	c := open(t, crashed, Options{})
	if n, _ := c.Total(); n != 0 {
		t.Fatalf("a new buffer file replayed %d records of another file's journal", n)
	}
	kept, _ := filepath.Glob(crashed + ".journal-*.orphan-*")
	if len(kept) == 0 {
		t.Fatal("the other file's journal was not kept aside")
	}
	appendN(t, c, "pay", 0, 3)
	c.Close()
	d := open(t, crashed, Options{})
	if n, _ := d.Total(); n != 3 {
		t.Fatalf("%d records after reopen, want 3", n)
	}
}
