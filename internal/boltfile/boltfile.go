// Package boltfile checks a bbolt file before bbolt maps it. bbolt trusts
// its meta page: a file cut short by a power cut or a failing card makes it
// read past the end of its mapping, a SIGBUS in one of its own goroutines
// that no recover can catch. Checking the meta pages against the file's size
// first turns that into an error the caller can act on (move the file aside).
package boltfile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

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
