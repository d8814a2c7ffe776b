// Package boltfile opens the gateway's bbolt state files (sessions.db,
// receipts.db) so that a corrupt file never stops or crashes the gateway: it
// is moved aside as <file>.corrupt-<time>, kept for inspection, and a fresh
// one is started, as the buffer does with buffer.db.
//
// Check comes first everywhere: bbolt trusts its meta page, and a file cut
// short by a power cut or a failing card makes it read past the end of its
// mapping, a SIGBUS in one of bbolt's own goroutines (the freelist scan of
// NoFreelistSync) that no recover can catch.
package boltfile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// ErrCorrupt marks a file whose content is not a readable bbolt database:
// bbolt refused it (ErrInvalid, ErrChecksum, ErrVersionMismatch,
// ErrInvalidMapping), its consistency check failed, or reading it panicked.
var ErrCorrupt = errors.New("corrupt bbolt file")

// IsCorrupt reports whether err means the file's content is bad (so it is
// moved aside), as opposed to a lock held by another process, a permission,
// a full disk or an I/O error, where the file must stay where it is.
func IsCorrupt(err error) bool {
	return errors.Is(err, ErrCorrupt) || errors.Is(err, ErrTruncated) || errors.Is(err, ErrNoMeta) ||
		errors.Is(err, berrors.ErrInvalid) ||
		errors.Is(err, berrors.ErrChecksum) || errors.Is(err, berrors.ErrVersionMismatch) ||
		errors.Is(err, berrors.ErrInvalidMapping)
}

// Verify opens the file at path (if it exists), runs bbolt's consistency
// check and reads every key of every bucket, then closes it. A corrupt file
// gives an error IsCorrupt recognises; bbolt's panics on bad pages become
// such errors.
func Verify(path string, opts *bolt.Options) (err error) {
	if _, serr := os.Stat(path); errors.Is(serr, os.ErrNotExist) {
		return nil
	}
	if err := Check(path); err != nil {
		return err
	}
	var db *bolt.DB
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %s: %v", ErrCorrupt, path, r)
		}
		if db != nil {
			if cerr := db.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}
	}()
	db, err = bolt.Open(path, 0o600, opts)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	return db.View(func(tx *bolt.Tx) error {
		for cerr := range tx.Check() {
			if cerr != nil {
				return fmt.Errorf("%w: %s: %v", ErrCorrupt, path, cerr)
			}
		}
		return tx.ForEach(func(_ []byte, b *bolt.Bucket) error { return walk(b) })
	})
}

func walk(b *bolt.Bucket) error {
	return b.ForEach(func(k, v []byte) error {
		if v == nil {
			if nb := b.Bucket(k); nb != nil {
				return walk(nb)
			}
		}
		return nil
	})
}

// Quarantine moves a corrupt file aside as <path>.corrupt-<UTC time> and
// returns the new name; the directory is fsync'd so the move is durable.
func Quarantine(path string, now time.Time) (string, error) {
	dst := fmt.Sprintf("%s.corrupt-%s", path, now.UTC().Format("20060102T150405Z"))
	if err := os.Rename(path, dst); err != nil {
		return "", err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return dst, err
	}
	defer d.Close()
	return dst, d.Sync()
}

// VerifyOrQuarantine checks the file at path and moves it aside when it is
// corrupt, returning where it went ("" if it was fine or absent). Errors
// other than corruption are returned and leave the file in place.
func VerifyOrQuarantine(path string, opts *bolt.Options, now time.Time) (string, error) {
	err := Verify(path, opts)
	if err == nil {
		return "", nil
	}
	if !IsCorrupt(err) {
		return "", err
	}
	moved, qerr := Quarantine(path, now)
	if qerr != nil {
		return "", fmt.Errorf("%w (and moving it aside failed: %v)", err, qerr)
	}
	return moved, err
}

// Open opens path and runs load on it; bbolt's panics become errors. When the
// file is corrupt (at open, in load, or per Verify) it is moved aside, a fresh
// file is opened and loaded, and the quarantine's name is returned with the
// corruption error (for the log); err is nil then.
func Open(path string, opts *bolt.Options, load func(*bolt.DB) error, now time.Time) (db *bolt.DB, moved string, cause, err error) {
	moved, cause = VerifyOrQuarantine(path, opts, now)
	if cause != nil && moved == "" {
		return nil, "", nil, cause
	}
	db, err = openLoad(path, opts, load)
	if err != nil && IsCorrupt(err) && moved == "" {
		cause = err
		if moved, err = Quarantine(path, now); err != nil {
			return nil, "", nil, fmt.Errorf("%w (and moving it aside failed: %v)", cause, err)
		}
		db, err = openLoad(path, opts, load)
	}
	return db, moved, cause, err
}

func openLoad(path string, opts *bolt.Options, load func(*bolt.DB) error) (db *bolt.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			if db != nil {
				db.Close()
				db = nil
			}
			err = fmt.Errorf("%w: %s: %v", ErrCorrupt, path, r)
		}
	}()
	db, err = bolt.Open(path, 0o600, opts)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if load != nil {
		if err := load(db); err != nil {
			db.Close()
			return nil, err
		}
	}
	return db, nil
}

// ErrTruncated: the newest valid meta page names pages past the end of the
// file.
var ErrTruncated = errors.New("bbolt file is shorter than its meta page says")

// ErrNoMeta: neither meta page is valid.
var ErrNoMeta = errors.New("bbolt file has no valid meta page")

const (
	magic      = 0xED0CDAED
	pageHeader = 16 // id, flags, count, overflow
	metaSize   = 64 // magic..txid, then the checksum
)

type meta struct {
	pageSize uint32
	pgid     uint64 // high water mark: pages in use
	txid     uint64
}

// Check reports whether the file at path can be mapped safely. A missing or
// empty file is fine (bbolt creates it).
func Check(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() == 0 {
		return nil
	}
	var best *meta
	// meta page 0 is at offset 0; meta page 1 at offset pageSize, read from
	// page 0 if valid, else tried at the usual sizes
	m0, _ := readMeta(f, 0)
	offsets := []int64{1024, 2048, 4096, 8192, 16384, 65536}
	if m0 != nil {
		best = m0
		offsets = []int64{int64(m0.pageSize)}
	}
	for _, off := range offsets {
		m1, _ := readMeta(f, off)
		if m1 != nil && int64(m1.pageSize) == off {
			if best == nil || m1.txid > best.txid {
				best = m1
			}
			break
		}
	}
	if best == nil {
		return fmt.Errorf("%s: %w", path, ErrNoMeta)
	}
	if need := int64(best.pgid) * int64(best.pageSize); need > fi.Size() {
		return fmt.Errorf("%s: %w (%d bytes, needs %d)", path, ErrTruncated, fi.Size(), need)
	}
	return nil
}

func readMeta(r io.ReaderAt, off int64) (*meta, error) {
	buf := make([]byte, pageHeader+metaSize)
	if _, err := r.ReadAt(buf, off); err != nil {
		return nil, err
	}
	m := buf[pageHeader:]
	le := binary.LittleEndian
	if le.Uint32(m[0:]) != magic {
		return nil, ErrNoMeta
	}
	h := fnv.New64a()
	h.Write(m[:56])
	if h.Sum64() != le.Uint64(m[56:]) {
		return nil, ErrNoMeta
	}
	return &meta{pageSize: le.Uint32(m[8:]), pgid: le.Uint64(m[40:]), txid: le.Uint64(m[48:])}, nil
}
