package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sort"
	"syscall"
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
// janitor, no upgrade of an old format): for `gateway buffer` and `gateway
// deadletter ls` on a copied file or one no gateway runs on. It fails with
// ErrInUse while a gateway holds the file.
//
// It is run by root on a directory the service user can write, so it trusts
// nothing in it: buffer.db and its journal files must be regular files, not
// symbolic links (a planted link could point anywhere) nor devices or FIFOs
// (/dev/zero would be read until memory runs out), every file is opened
// read-only, and a journal file is read only up to maxInspectJournal.
func OpenReadOnly(path string) (*Buffer, error) {
	f, err := openInspected(path)
	if err != nil {
		return nil, fmt.Errorf("buffer: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("buffer: %w", err)
	}
	// Everything below opens the file by this name: on Linux the inode
	// vetted above, whatever is renamed over path meanwhile.
	name := path
	if fdPath := fmt.Sprintf("/proc/self/fd/%d", f.Fd()); runtime.GOOS == "linux" {
		if _, err := os.Stat(fdPath); err == nil {
			name = fdPath
		}
	}
	if err := boltfile.Check(name); err != nil {
		return nil, fmt.Errorf("buffer: %s: %w", path, err)
	}
	sameInode := func(n string, flag int, mode os.FileMode) (*os.File, error) {
		g, err := os.OpenFile(n, flag|syscall.O_NONBLOCK, mode)
		if err != nil {
			return nil, err
		}
		gi, err := g.Stat()
		if err != nil || !os.SameFile(fi, gi) {
			g.Close()
			return nil, fmt.Errorf("%s changed while it was opened", path)
		}
		return g, nil
	}
	db, err := bolt.Open(name, 0o400, &bolt.Options{ReadOnly: true, Timeout: 500 * time.Millisecond, OpenFile: sameInode})
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

// maxInspectJournal bounds a journal file read by a read-only look: far
// above what a gateway leaves (two files of 2 MiB, more only while one
// checkpoint is late), far below a box's memory.
const maxInspectJournal = 256 << 20

// openInspected opens a file of a data dir for reading without trusting it:
// not through a symbolic link, without blocking on a FIFO, and only if it
// is a regular file.
func openInspected(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%s is a symbolic link: refusing to follow it in a data dir (a gateway never makes one)", path)
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file (%s): refusing to read it", path, fi.Mode().Type())
	}
	return f, nil
}

// readJournalFile reads a journal file for loadJournal: as it is for the
// gateway's own buffer (write), vetted and bounded for a read-only look.
func (b *Buffer) readJournalFile(path string, write bool) ([]byte, error) {
	if write {
		return os.ReadFile(path)
	}
	f, err := openInspected(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tooLarge := fmt.Errorf("%s is larger than %d bytes, more than any journal a gateway writes: refusing to read it", path, maxInspectJournal)
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if fi.Size() > maxInspectJournal {
		return nil, tooLarge
	}
	data, err := io.ReadAll(io.LimitReader(f, maxInspectJournal+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxInspectJournal {
		return nil, tooLarge // it grew while it was read
	}
	return data, nil
}

// JournalEpoch is the buffer epoch written in the header of the journal of
// the buffer file at dbPath ("" if there is no journal), read without
// trusting the data dir. A running gateway's journal carries its epoch, so
// a tool can tell which gateway holds a data dir.
func JournalEpoch(dbPath string) (string, error) {
	epoch := ""
	for _, p := range journalPaths(dbPath) {
		f, err := openInspected(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		h := make([]byte, journalHeaderSize)
		_, err = io.ReadFull(f, h)
		f.Close()
		if err != nil {
			continue
		}
		if e, ok := journalEpoch(h); ok && epoch == "" {
			epoch = e
		}
	}
	return epoch, nil
}
