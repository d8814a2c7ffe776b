package config

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultWatchDebounce is how long a Watcher waits after the last change
// before it reads the file: editors write in several steps.
const DefaultWatchDebounce = 200 * time.Millisecond

// Watcher watches a config file for changes on disk and hands every new,
// distinct content to a callback, loaded and validated (or with the load
// error). It watches the file's directory rather than the file, so it also
// sees editors and deploy tools that write a new file and rename it over the
// old one (vim, kubectl's ..data symlink swap, `mv`).
type Watcher struct {
	path     string
	debounce time.Duration
	fn       func(*Config, error)
	log      *slog.Logger
	fsw      *fsnotify.Watcher

	last      []byte // content last handed to fn (or present at start)
	done      chan struct{}
	closeOnce sync.Once
}

// WatchOptions configure Watch. Zero values take defaults.
type WatchOptions struct {
	// Debounce is the quiet time after the last event before the file is
	// read (default DefaultWatchDebounce).
	Debounce time.Duration
	// Logger gets watch errors; nil discards.
	Logger *slog.Logger
}

// Watch starts watching path. fn is called from one goroutine, one call at a
// time, with the result of Load each time the file's content differs from
// what it was at the last call (or at Watch). A file that is missing or
// unreadable for a moment (mid-rename) is not reported until it is back.
func Watch(path string, opts WatchOptions, fn func(*Config, error)) (*Watcher, error) {
	if fn == nil {
		return nil, errors.New("config: watch: callback is required")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("config: watch %s: %w", path, err)
	}
	if opts.Debounce <= 0 {
		opts.Debounce = DefaultWatchDebounce
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	initial, err := os.ReadFile(abs)
	if err != nil {
		return nil, fmt.Errorf("config: watch: %w", err)
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("config: watch: %w", err)
	}
	if err := fsw.Add(filepath.Dir(abs)); err != nil {
		fsw.Close()
		return nil, fmt.Errorf("config: watch %s: %w", filepath.Dir(abs), err)
	}
	w := &Watcher{path: abs, debounce: opts.Debounce, fn: fn, log: opts.Logger, fsw: fsw, last: initial, done: make(chan struct{})}
	go w.loop()
	return w, nil
}

// Close stops watching and waits for a callback in progress. Safe to call
// twice.
func (w *Watcher) Close() error {
	var err error
	w.closeOnce.Do(func() {
		err = w.fsw.Close()
		<-w.done
	})
	return err
}

func (w *Watcher) loop() {
	defer close(w.done)
	base := filepath.Base(w.path)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case ev, ok := <-w.fsw.Events:
			if !ok {
				timer.Stop()
				return
			}
			// Only our file, or (for a symlinked config) anything in the
			// directory: the content comparison filters out the rest.
			if filepath.Base(ev.Name) != base && !w.symlinked() {
				continue
			}
			timer.Reset(w.debounce)
		case err, ok := <-w.fsw.Errors:
			if !ok {
				timer.Stop()
				return
			}
			w.log.Warn("config watch error", "path", w.path, "error", err)
			// Events may have been lost: look at the file anyway.
			timer.Reset(w.debounce)
		case <-timer.C:
			w.check()
		}
	}
}

func (w *Watcher) symlinked() bool {
	fi, err := os.Lstat(w.path)
	return err == nil && fi.Mode()&os.ModeSymlink != 0
}

// check reads the file and reports it if its content changed.
func (w *Watcher) check() {
	data, err := os.ReadFile(w.path)
	if err != nil {
		// Gone or unreadable for a moment (a rename in progress): the
		// event that brings it back triggers another check.
		w.log.Debug("config file not readable; waiting for it to come back", "path", w.path, "error", err)
		return
	}
	if bytes.Equal(data, w.last) {
		return
	}
	w.last = data
	w.fn(Parse(data, os.Environ()))
}
