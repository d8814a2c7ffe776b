package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/edgegw/gateway/internal/boltfile"
)

// Report is a read-only look inside a buffer file, for `gateway buffer`.
type Report struct {
	Path      string        `json:"path"`
	FileBytes int64         `json:"file_bytes"`
	PageSize  int           `json:"page_size"`
	Format    string        `json:"format"` // "blocks", or "per-route keys (first release)"
	Epoch     string        `json:"epoch"`
	NextSeq   uint64        `json:"next_seq"`
	Blocks    int           `json:"blocks"`
	Routes    []RouteReport `json:"routes"`
	// Unpurged: read from a file, records delivered since the last purge
	// still count as undelivered (the running gateway knows better).
	FromFile bool `json:"from_file"`
}

// RouteReport is one route's undelivered backlog.
type RouteReport struct {
	Route    string    `json:"route"`
	Messages int64     `json:"messages"`
	Bytes    int64     `json:"bytes"`
	Oldest   time.Time `json:"oldest,omitempty"`
	FirstSeq uint64    `json:"first_seq,omitempty"`
	LastSeq  uint64    `json:"last_seq,omitempty"`
}

// ErrInUse is returned by InspectFile when a running gateway holds the file.
var ErrInUse = errors.New("buffer: the file is in use by a running gateway")

// Inspect reports on the open buffer.
func (b *Buffer) Inspect() Report {
	r := Report{Path: b.opts.Path, FileBytes: b.FileSize(), Format: "blocks", Epoch: b.epoch, NextSeq: b.NextSeq()}
	b.dbMu.RLock()
	r.PageSize = b.db.Info().PageSize
	b.dbMu.RUnlock()
	b.mu.Lock()
	r.Blocks = len(b.idx.blocks)
	b.mu.Unlock()
	for name, st := range b.Stats() {
		if st.Messages == 0 {
			continue
		}
		rr := RouteReport{Route: name, Messages: st.Messages, Bytes: st.Bytes, Oldest: st.Oldest}
		b.dbMu.RLock()
		_ = b.scanRoute(name, 0, func(h *blockHeader, _ []byte, i int) (bool, error) {
			if rr.FirstSeq == 0 {
				rr.FirstSeq = h.recs[i].seq
			}
			rr.LastSeq = h.recs[i].seq
			return true, nil
		})
		b.dbMu.RUnlock()
		r.Routes = append(r.Routes, rr)
	}
	sort.Slice(r.Routes, func(i, j int) bool { return r.Routes[i].Route < r.Routes[j].Route })
	return r
}

// Peek returns up to n undelivered records of route, oldest first.
func (b *Buffer) Peek(route string, n int) ([]Record, error) {
	var out []Record
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	err := b.scanRoute(route, 0, func(h *blockHeader, v []byte, i int) (bool, error) {
		if len(out) >= n {
			return false, nil
		}
		r, err := h.record(v, i)
		if err != nil {
			return false, err
		}
		out = append(out, r)
		return true, nil
	})
	return out, err
}

// OpenReadOnly opens a buffer file without changing it (no writer, no
// janitor, no upgrade of an old format): for `gateway buffer` on a copied
// file or one no gateway runs on. It fails with ErrInUse while a gateway
// holds the file.
func OpenReadOnly(path string) (*Buffer, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("buffer: %w", err)
	}
	if err := boltfile.Check(path); err != nil {
		return nil, fmt.Errorf("buffer: %w", err)
	}
	db, err := bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true, Timeout: 500 * time.Millisecond})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%w (%s); ask it instead: gateway buffer --admin ADDR", ErrInUse, path)
	}
	if err != nil {
		return nil, fmt.Errorf("buffer: open %s: %w", path, err)
	}
	b := &Buffer{db: db, opts: Options{Path: path, Elapsed: func() time.Duration { return 0 }}, log: slog.New(slog.DiscardHandler), idx: newIndex(), dedup: newDedupIndex(), marks: map[string]uint64{},
		drops: map[string]map[string]uint64{}, quit: make(chan struct{}), done: make(chan struct{}), janitorDone: make(chan struct{})}
	b.closed, b.readOnly = true, true
	close(b.done)
	close(b.janitorDone)
	var applied uint64
	err = func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("buffer: %w: %s: %v", errCorruptFile, path, r)
			}
		}()
		err = db.View(func(tx *bolt.Tx) error {
			if err := checkFormat(tx, path); err != nil {
				return err
			}
			if meta := tx.Bucket(metaBucket); meta != nil {
				if v := meta.Get(journalAppliedKey); len(v) == 8 {
					applied = binary.BigEndian.Uint64(v)
				}
				if v := meta.Get(seqKeyName); len(v) == 8 {
					b.nextSeq = binary.BigEndian.Uint64(v)
				}
				b.epoch = string(meta.Get(epochKey))
				if v := meta.Get(marksKey); v != nil {
					if b.marks, err = decodeMarks(v); err != nil {
						return err
					}
				}
			}
			if bk := tx.Bucket(blocksBucket); bk != nil {
				return b.indexBlocks(bk, false)
			}
			return nil
		})
		if err != nil {
			return err
		}
		// what the journal holds beyond the last checkpoint, read only
		return b.loadJournal(applied, false)
	}()
	if err != nil {
		db.Close()
		return nil, err
	}
	if b.hasFirstFormat() {
		db.Close()
		return nil, fmt.Errorf("buffer: %s is in the first release's format; the gateway converts it when it starts", path)
	}
	return b, nil
}

func (b *Buffer) hasFirstFormat() bool {
	found := false
	_ = b.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			if len(name) > len(routePrefix) && string(name[:len(routePrefix)]) == routePrefix {
				found = true
			}
			return nil
		})
	})
	return found
}
