package buffer

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A compaction whose swap cannot complete (the new file cannot be renamed
// into place and the old one cannot be reopened) leaves no usable file: the
// buffer must say so (Err, Failed), refuse every append, and what it
// acknowledged must still be on disk. The swap is made to fail for real: the
// file's name is taken by a non-empty directory (the open file lives on under
// another name), so the rename and the reopen both fail.
func TestFailedCompactionSwap(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "buffer.db")
	b, err := Open(Options{Path: path, JanitorInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for i := range 20 {
		if _, err := b.AppendWait(rec("pay", "c", i)); err != nil {
			t.Fatal(err)
		}
	}
	if b.Err() != nil {
		t.Fatalf("healthy buffer reports %v", b.Err())
	}
	saved := path + ".saved"
	if err := os.Rename(path, saved); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(path, "in-the-way"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Compact(); err == nil {
		t.Fatal("the compaction swap succeeded although its target is a directory")
	}
	select {
	case <-b.Failed():
	default:
		t.Fatal("Failed() not closed after a failed swap")
	}
	if !errors.Is(b.Err(), ErrUnusable) {
		t.Fatalf("Err() = %v, want ErrUnusable", b.Err())
	}
	if _, err := b.AppendWait(rec("pay", "c", 99)); err == nil {
		t.Fatal("an append was acknowledged by an unusable buffer")
	}
	// Nothing acknowledged is lost: the old file holds every record.
	if err := os.RemoveAll(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(saved, path); err != nil {
		t.Fatal(err)
	}
	b2 := open(t, path, Options{})
	if n, _ := b2.Total(); n != 20 {
		t.Fatalf("reopened buffer holds %d records, want 20", n)
	}
}
