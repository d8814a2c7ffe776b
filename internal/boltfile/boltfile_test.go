package boltfile

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func opts() *bolt.Options { return &bolt.Options{Timeout: time.Second} }

// makeDB writes a file with a few buckets and keys.
func makeDB(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, opts())
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for b := range 4 {
			bk, err := tx.CreateBucket([]byte(fmt.Sprintf("b%d", b)))
			if err != nil {
				return err
			}
			for i := range 500 {
				if err := bk.Put([]byte(fmt.Sprintf("key-%05d", i)), bytes.Repeat([]byte{byte(i)}, 100)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
}

// Garbage, a file with its data pages overwritten (bbolt panics or fails its
// check on those), and a truncated file: each is moved aside and a fresh,
// usable file takes its place; a healthy file is left alone.
func TestOpenQuarantinesCorruptFiles(t *testing.T) {
	for _, tc := range []struct {
		name    string
		corrupt func(t *testing.T, path string)
	}{
		{"garbage", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte(strings.Repeat("garbage ", 4096)), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"bad pages", func(t *testing.T, path string) {
			makeDB(t, path)
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			ps := os.Getpagesize()
			// pages 2.. hold the freelist, the root and the buckets' pages
			if _, err := f.WriteAt(bytes.Repeat([]byte{0xA5}, 12*ps), int64(2*ps)); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated", func(t *testing.T, path string) {
			makeDB(t, path)
			if err := os.Truncate(path, 100); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.db")
			tc.corrupt(t, path)
			loaded := 0
			db, moved, cause, err := Open(path, opts(), func(db *bolt.DB) error {
				loaded++
				return db.Update(func(tx *bolt.Tx) error {
					_, err := tx.CreateBucketIfNotExists([]byte("x"))
					return err
				})
			}, time.Now())
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			defer db.Close()
			if moved == "" || cause == nil || !IsCorrupt(cause) {
				t.Fatalf("moved %q, cause %v", moved, cause)
			}
			if _, err := os.Stat(moved); err != nil {
				t.Fatalf("the corrupt file was not kept: %v", err)
			}
			if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("x")).Put([]byte("k"), []byte("v")) }); err != nil {
				t.Fatalf("the fresh file is not usable: %v", err)
			}
		})
	}
	t.Run("healthy", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "state.db")
		makeDB(t, path)
		db, moved, cause, err := Open(path, opts(), nil, time.Now())
		if err != nil || moved != "" || cause != nil {
			t.Fatalf("healthy file: moved %q cause %v err %v", moved, cause, err)
		}
		db.Close()
	})
}
