package buffer

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// editFile changes a closed buffer file with bbolt directly.
func editFile(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// A downgrade: a file a newer release wrote (a newer file format, or a
// block of a newer version) is refused with a message naming it, neither
// misread nor moved aside as corrupt; back with the release that reads it,
// every record is there.
func TestNewerFormatRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(tx *bolt.Tx) error
	}{
		{"file format 3", func(tx *bolt.Tx) error {
			return tx.Bucket(metaBucket).Put(formatKey, seqKey(fileFormat+1))
		}},
		{"block version 3", func(tx *bolt.Tx) error {
			bk := tx.Bucket(blocksBucket)
			k, _ := bk.Cursor().First()
			blk := bk.Bucket(k)
			if blk == nil {
				return errors.New("block is not a bucket")
			}
			ik, v := blk.Cursor().First()
			nv := append([]byte(nil), v...)
			nv[0] = blockVersion + 1
			return blk.Put(ik, nv)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "buffer.db")
			b := open(t, path, Options{})
			for i := 0; i < 5; i++ {
				if _, err := b.AppendWait(rec("pay", "c", i)); err != nil {
					t.Fatal(err)
				}
			}
			b.Close()
			var undo []byte
			editFile(t, path, func(tx *bolt.Tx) error {
				undo = snapshotFirstBlock(tx)
				return tc.edit(tx)
			})
			before, _ := os.ReadFile(path)

			_, err := Open(Options{Path: path})
			if !errors.Is(err, ErrNewerFormat) {
				t.Fatalf("open of a newer file: %v, want ErrNewerFormat", err)
			}
			t.Logf("refused: %v", err)
			if _, rerr := OpenReadOnly(path); !errors.Is(rerr, ErrNewerFormat) {
				t.Fatalf("read-only open of a newer file: %v", rerr)
			}
			after, _ := os.ReadFile(path)
			if string(before) != string(after) {
				t.Fatal("the refused file was changed")
			}
			if m, _ := filepath.Glob(path + ".corrupt-*"); len(m) > 0 {
				t.Fatalf("the refused file was moved aside: %v", m)
			}

			// back with the release that wrote it (here: undo the edit)
			editFile(t, path, func(tx *bolt.Tx) error {
				if err := tx.Bucket(metaBucket).Put(formatKey, seqKey(fileFormat)); err != nil {
					return err
				}
				return restoreFirstBlock(tx, undo)
			})
			b = open(t, path, Options{})
			if n, _ := b.Total(); n != 5 {
				t.Fatalf("%d records after going back, want 5", n)
			}
		})
	}
}

// snapshotFirstBlock and restoreFirstBlock undo an edit of the first block.
func snapshotFirstBlock(tx *bolt.Tx) []byte {
	bk := tx.Bucket(blocksBucket)
	k, _ := bk.Cursor().First()
	ik, v := bk.Bucket(k).Cursor().First()
	return append(append(append([]byte(nil), byte(len(ik))), ik...), v...)
}

func restoreFirstBlock(tx *bolt.Tx, snap []byte) error {
	bk := tx.Bucket(blocksBucket)
	k, _ := bk.Cursor().First()
	n := int(snap[0])
	return bk.Bucket(k).Put(snap[1:1+n], snap[1+n:])
}

// The first release (0.2) reads its dedup log from the last key down and
// stops on a value it cannot decode (it then moves the file aside whole).
// This is its check, as in buffer/dedup.go of that release: a count larger
// than the value is corrupt. A file in this format must make it stop
// there, before it could take the file for an empty buffer.
func TestFirstReleaseStopsOnThisFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	b := open(t, path, Options{PurgeInterval: 1 << 40})
	send := func(b *Buffer, i int, dup bool) Result {
		ch := make(chan Result, 1)
		b.Append(&Append{Record: rec("pay", "c", i), Dedup: DedupKey{ClientID: "c", PacketID: uint16(i + 1), Dup: dup}, Done: func(r Result) { ch <- r }})
		return <-ch
	}
	for i := 0; i < 20; i++ {
		res := send(b, i, false)
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		if i < 10 {
			b.Delete([]Ref{{Route: "pay", Seq: res.Seq}})
		}
	}
	if err := b.purge(true); err != nil { // real dedup batches in the log too
		t.Fatal(err)
	}
	b.Close()
	db, err := bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *bolt.Tx) error {
		dd := tx.Bucket([]byte("dedup2"))
		if dd == nil || dd.Stats().KeyN < 2 {
			t.Fatal("no dedup log with entries and the guard")
		}
		k, v := dd.Cursor().Last()
		n, w := binary.Uvarint(v)
		if w <= 0 || n <= uint64(len(v)) {
			t.Fatalf("the first release would decode the last dedup value (key %x, count %d in %d bytes)", k, n, len(v))
		}
		return nil
	})
	db.Close()
	// and this release reads it: the retransmission of a purged message is
	// known from the log, the undelivered ten are there
	b = open(t, path, Options{})
	if r := send(b, 3, true); !r.Duplicate {
		t.Fatalf("retransmission of a purged message after reopen: %+v", r)
	}
	if n, _ := b.Total(); n != 10 {
		t.Fatalf("%d records after reopen, want 10", n)
	}
}
