package buffer

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bolterrors "go.etcd.io/bbolt/errors"
)

// ErrUnusable wraps the error that made the buffer unusable (see Err).
var ErrUnusable = errors.New("buffer: unusable")

// health is the buffer's fatal state: once a failure leaves it without a
// usable file (a compaction swap that could not reopen the file, a directory
// fsync that failed after the swap), nothing more may be acknowledged and the
// process should exit so it is restarted on the file that is on disk.
type health struct {
	failErr  atomic.Pointer[error]
	failOnce sync.Once
	chOnce   sync.Once
	failed   chan struct{}
}

func (h *health) failedCh() chan struct{} {
	h.chOnce.Do(func() { h.failed = make(chan struct{}) })
	return h.failed
}

// Err is nil while the buffer is healthy and the fatal error once it is
// unusable.
func (b *Buffer) Err() error {
	if p := b.failErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Failed returns a channel closed when the buffer becomes unusable; Err then
// says why.
func (b *Buffer) Failed() <-chan struct{} { return b.failedCh() }

// fail marks the buffer unusable; the first error is kept.
func (b *Buffer) fail(err error) {
	b.failOnce.Do(func() {
		err = fmt.Errorf("%w: %w", ErrUnusable, err)
		b.failErr.Store(&err)
		b.log.Error("buffer: unusable; nothing more is acknowledged, the process must restart", "error", err)
		close(b.failedCh())
	})
}

// diskFull: the write failed for want of space; nothing about the file is
// in doubt once it is reopened, and ingest resumes when space returns.
func diskFull(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// ErrStorageFull refuses appends for a moment after the filesystem was
// full (it wraps syscall.ENOSPC, which the broker answers with 0x97).
var ErrStorageFull = fmt.Errorf("buffer: the filesystem is full: %w", syscall.ENOSPC)

// afterWriteFailure is called (by the writer, or a purge) after a write
// transaction failed. bbolt's handle is not to be trusted after that: a
// failed write can leave its freelist inconsistent (the next commit panics
// "page already freed"), and a failed fsync may have dropped dirty pages the
// page cache goes on showing, so a later commit would build on pages that
// never reached the disk (the "fsyncgate" lesson). The file is closed and
// opened again from what is on disk, and the in-memory state rebuilt from it
// (delivered-but-unpurged records are sent again: at-least-once). When that
// fails, or the disk went read-only, the buffer is unusable: nothing more is
// acknowledged and the process must restart.
func (b *Buffer) afterWriteFailure(cause error) {
	if b.Err() != nil || errors.Is(cause, ErrClosed) || errors.Is(cause, bolterrors.ErrDatabaseNotOpen) {
		return
	}
	if errors.Is(cause, syscall.EROFS) {
		b.fail(cause)
		return
	}
	if err := b.reopen(); err != nil {
		b.fail(fmt.Errorf("%w (reopening after it failed: %v)", cause, err))
		return
	}
	if diskFull(cause) {
		b.fullUntil.Store(time.Now().Add(fullBackoff).UnixNano())
	}
	b.log.Warn("buffer: a write failed; reopened the file from disk", "error", cause)
}

// fullBackoff: after the disk was full, appends are refused this long
// without trying (each try would cost a reopen).
const fullBackoff = time.Second

// reopen closes the file and opens it again, rebuilding the index; drop
// counters are kept.
func (b *Buffer) reopen() error {
	b.dbMu.Lock()
	defer b.dbMu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	drops := b.drops
	old := b.db
	_ = old.Close()
	b.db = nil
	// Read the files again from the disk, not from pages a failed fsync
	// left in the cache (Linux marks them clean; they may never be written).
	jp := journalPaths(b.opts.Path)
	for _, p := range []string{b.opts.Path, jp[0], jp[1]} {
		if f, err := os.Open(p); err == nil {
			dropCache(f)
			f.Close()
		}
	}
	if b.jnl != nil {
		b.jnl.close()
		b.jnl = nil
	}
	if err := b.openAndLoad(); err != nil {
		// Keep the closed handle, never nil: whatever still reads or
		// writes (the drain, the janitor, Close) gets bbolt's "database
		// not open" instead of a nil dereference.
		b.db = old
		return err
	}
	b.drops = drops
	return nil
}

// syncDir fsyncs a directory, so a rename or a new file in it is durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("buffer: sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("buffer: sync directory %s: %w", dir, err)
	}
	return nil
}
