package buffer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// The buffer file says which format it is in, so that a release never
// misreads a file a newer release wrote (a downgrade). Format 1 is the first
// release's (a bucket per route, converted at open by migrate.go); format 2
// is blocks (block.go); format 3 is blocks with a journal in front
// (journal.go), whose files a format-2 release would not read. A file of a
// newer format is refused, not moved aside
// as corrupt: it is intact, and the release that wrote it can drain it.
const fileFormat = 3

var formatKey = []byte("format") // in the meta bucket: the file's format, 8 bytes

// ErrNewerFormat: the file was written by a newer release.
var ErrNewerFormat = errors.New("buffer: the file was written by a newer gateway release")

// firstReleaseGuard keeps the first release (0.2) off a file in this format.
// That release knows nothing of blocks: it would see an empty buffer, count
// gw.seq on from a stale counter and, once upgraded again, collide with the
// blocks it never saw. It reads its dedup log from the last key down, so a
// last key whose value it cannot decode (a count larger than the value)
// makes it stop and move the file aside whole, as it does with any file it
// cannot read; this release skips the key.
var (
	firstReleaseGuardKey = bytes.Repeat([]byte{0xff}, 8)
	firstReleaseGuard    = []byte{0xff, 0xff, 0x03} // uvarint 65535 entries in 3 bytes
)

// checkFormat refuses a file of a format newer than this release reads.
func checkFormat(tx *bolt.Tx, path string) error {
	meta := tx.Bucket(metaBucket)
	if meta == nil {
		return nil
	}
	v := meta.Get(formatKey)
	if v == nil {
		return nil // formats 1 and early 2 files did not say
	}
	if len(v) != 8 {
		return fmt.Errorf("%w: format key of %d bytes", ErrCorruptRecord, len(v))
	}
	if f := binary.BigEndian.Uint64(v); f > fileFormat {
		return newerFormat(path, fmt.Sprintf("file format %d, this release reads up to %d", f, fileFormat))
	}
	return nil
}

func newerFormat(path, what string) error {
	return fmt.Errorf("%w (%s): %s; refusing to start rather than misread it: run the newer release to drain it, or move the file aside",
		ErrNewerFormat, what, path)
}

// formatMarked reports whether the file already says its format and has the
// guard, so opening it needs no write transaction.
func formatMarked(tx *bolt.Tx) bool {
	meta, dd := tx.Bucket(metaBucket), tx.Bucket(dedupBucket)
	if meta == nil || dd == nil || dd.Get(firstReleaseGuardKey) == nil {
		return false
	}
	v := meta.Get(formatKey)
	return len(v) == 8 && binary.BigEndian.Uint64(v) == fileFormat
}

// markFormat writes the format and the guard.
func markFormat(tx *bolt.Tx) error {
	if err := tx.Bucket(metaBucket).Put(formatKey, seqKey(fileFormat)); err != nil {
		return err
	}
	return tx.Bucket(dedupBucket).Put(firstReleaseGuardKey, firstReleaseGuard)
}

// newerBlockError: a block of a version newer than this release reads;
// indexBlocks turns it into the ErrNewerFormat message naming the file.
type newerBlockError struct {
	key     uint64
	version byte
}

func (e *newerBlockError) Error() string {
	return fmt.Sprintf("block %d is of version %d, this release reads up to %d", e.key, e.version, blockVersion)
}
