package buffer

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
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
