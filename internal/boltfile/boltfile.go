// Package boltfile opens the gateway's bbolt state files (sessions.db,
// receipts.db) so that a corrupt file never stops or crashes the gateway: it
// is moved aside as <file>.corrupt-<time>, kept for inspection, and a fresh
// one is started, as the buffer does with buffer.db.
package boltfile

import (
	"errors"
	"fmt"
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
	return errors.Is(err, ErrCorrupt) || errors.Is(err, berrors.ErrInvalid) ||
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
