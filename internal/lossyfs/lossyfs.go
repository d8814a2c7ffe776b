// Package lossyfs is a pass-through FUSE filesystem for tests that forgets
// what was not made durable, the way a power cut does.
//
// Every write and size change since a file's last fsync/fdatasync is kept in
// memory, not in the backing file; reads see them laid over the synced
// backing bytes. PowerCut unmounts, throws the pending changes away (or keeps
// a random part of them, as a disk cache might), and mounts again, so the
// kernel's page cache holds nothing stale.
//
// The durability model, kept deliberately simple:
//
//   - File data and size: exact. What an fsync or fdatasync of the file
//     covered survives a cut; nothing else does (modes KeepPrefix and
//     KeepRandom may keep some of the rest).
//   - A file created since its directory's last fsync, and never fsync'd
//     itself, vanishes at a cut.
//   - A rename is undone at a cut unless the directory it happened in (both,
//     for a move between directories) was fsync'd afterwards; a file it
//     replaced comes back.
//   - Unlink, mkdir, rmdir, symlink and link are durable at once (lenient: a
//     real filesystem may undo them too).
//
// Faults on command (SetFaults): ENOSPC once a number of bytes were written,
// EIO on the next fsync(s) (the pending data of that file is then dropped:
// the "fsyncgate" behaviour of Linux, where a failed fsync may have discarded
// the dirty pages), a delay on every fsync, and read-only (EROFS on every
// change).
//
// Mounting needs /dev/fuse and root (the mount is made with mount(2)
// directly; fusermount is not needed). Available reports whether it can.
package lossyfs

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Mode is what a power cut keeps of the writes that were not synced.
type Mode int

const (
	// DropAll keeps nothing that was not synced.
	DropAll Mode = iota
	// KeepPrefix keeps a random prefix of each file's unsynced changes, in
	// the order they were made (a disk that writes in order and lost power
	// part way).
	KeepPrefix
	// KeepRandom keeps a random subset of each file's unsynced changes, cut
	// into 4 KiB pieces (a disk cache that reorders: a later write may
	// survive without an earlier one, and a write may be torn).
	KeepRandom
)

func (m Mode) String() string {
	switch m {
	case DropAll:
		return "drop-all"
	case KeepPrefix:
		return "keep-prefix"
	case KeepRandom:
		return "keep-random"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Faults are the injected failures; the zero value injects none. SetFaults
// replaces them as a whole.
type Faults struct {
	// NoSpaceAfter > 0: writes fail with ENOSPC once this many bytes were
	// written since SetFaults (a write that would cross the limit fails
	// whole, and so does every write after it: the disk stays full until
	// SetFaults). 0 = unlimited.
	NoSpaceAfter int64
	// FsyncEIO is how many of the next fsyncs of files (not directories) fail
	// with EIO; the file's unsynced changes are dropped with each failure.
	FsyncEIO int
	// FsyncEIOMatch, if set, limits FsyncEIO to files whose base name
	// contains it (e.g. "buffer.db").
	FsyncEIOMatch string
	// FsyncEIOKeepsPages models what Linux filesystems commonly do after a
	// failed fsync: the written pages stay readable (the page cache keeps
	// them, marked clean) but never reach the disk, not even with a later
	// successful fsync; a power cut loses them. False: they are dropped at
	// once and reads go back to the synced bytes.
	FsyncEIOKeepsPages bool
	// FsyncDelay is added to every fsync of a file or directory (eMMC and SD
	// cards take 5-20 ms).
	FsyncDelay time.Duration
	// ReadOnly refuses every change with EROFS, including opening a file for
	// writing and fsyncing a file that has unsynced changes.
	ReadOnly bool
	// BeforeFsync, if set, is called as an fsync of a file or directory
	// (backing path) begins, before FsyncDelay. A fault test kills the
	// process there: an fsync whose caller dies during the delay does not
	// happen, so the cut lands inside that commit.
	BeforeFsync func(path string, dir bool)
}

// Stats count what the filesystem saw since Mount.
type Stats struct {
	Fsyncs       int64 // fsync/fdatasync of files that succeeded
	DirFsyncs    int64
	FailedFsyncs int64 // EIO injected
	BytesWritten int64 // bytes accepted by write
	NoSpace      int64 // writes refused with ENOSPC
	ReadOnly     int64 // changes refused with EROFS
	PowerCuts    int64
	// Lost counts, over all cuts, the unsynced changes dropped and the
	// files and renames undone.
	LostWrites, LostFiles, UndoneRenames int64
}

// Options configure Mount.
type Options struct {
	// Seed for the random choices of KeepPrefix and KeepRandom; 0 = random.
	Seed uint64
	// Debug logs every FUSE request to stderr.
	Debug bool
}

// FS is a mounted lossy filesystem.
type FS struct {
	backing, mountpoint, stash string
	opts                       Options

	mu       sync.Mutex
	server   *fuse.Server
	files    map[uint64]*fileState // backing inode -> unsynced changes
	created  map[uint64]string     // backing inode -> backing path, not yet durable
	renames  []rename              // not yet durable, in order
	faults   Faults
	written  int64 // bytes since SetFaults, for NoSpaceAfter
	full     bool  // NoSpaceAfter was reached
	stats    Stats
	rng      *rand.Rand
	stashSeq int
}

type rename struct {
	ino      uint64
	from, to string // backing paths
	stashed  string // the replaced file, hard-linked aside; "" if none
	// which directories were fsync'd since
	fromSynced, toSynced bool
}

// op is one change: a write of data at off, or (data == nil) a size change
// to off.
type op struct {
	off  int64
	data []byte
	kind opKind
}

type opKind uint8

const (
	pending opKind = iota // not synced yet
	ghost                 // its fsync failed: readable, never durable
	synced                // in the backing file; kept only to order reads after a ghost
)

// fileState is a file's history since it was last fully in its backing
// file: reads replay it, in order, over the backing bytes.
type fileState struct {
	path string // backing path, for a cut after the handle closed
	size int64  // the size readers see
	ops  []op
}

// pending returns the changes not yet synced.
func (st *fileState) pending() []op {
	var out []op
	for _, o := range st.ops {
		if o.kind == pending {
			out = append(out, o)
		}
	}
	return out
}

// settle marks the pending changes as kind (synced or ghost) or, with drop,
// removes them; it reports whether the state can go (nothing left that
// reads need).
func (st *fileState) settle(kind opKind, drop bool, backingSize int64) (done bool) {
	kept := st.ops[:0]
	ghosts := false
	for _, o := range st.ops {
		if o.kind == pending {
			if drop {
				continue
			}
			o.kind = kind
		}
		ghosts = ghosts || o.kind == ghost
		kept = append(kept, o)
	}
	st.ops = kept
	if !ghosts {
		return true
	}
	st.size = backingSize
	for _, o := range st.ops {
		if o.data == nil {
			st.size = o.off
		} else {
			st.size = max(st.size, o.off+int64(len(o.data)))
		}
	}
	return false
}

// Available reports whether this process can mount FUSE filesystems (root
// and /dev/fuse), with the reason when it cannot.
func Available() (bool, string) {
	if os.Geteuid() != 0 {
		return false, "lossyfs: mounting FUSE needs root"
	}
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Sprintf("lossyfs: /dev/fuse: %v", err)
	}
	f.Close()
	return true, ""
}

// Mount serves backing at mountpoint (both directories must exist).
func Mount(backing, mountpoint string, opts Options) (*FS, error) {
	backing, err := filepath.Abs(backing)
	if err != nil {
		return nil, err
	}
	f := &FS{
		backing:    backing,
		mountpoint: mountpoint,
		stash:      backing + ".lossyfs-stash",
		opts:       opts,
		files:      map[uint64]*fileState{},
		created:    map[uint64]string{},
	}
	seed := opts.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	f.rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	if err := os.MkdirAll(f.stash, 0o700); err != nil {
		return nil, fmt.Errorf("lossyfs: %w", err)
	}
	if err := f.mount(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *FS) mount() error {
	var st syscall.Stat_t
	if err := syscall.Stat(f.backing, &st); err != nil {
		return fmt.Errorf("lossyfs: backing %s: %w", f.backing, err)
	}
	root := &fs.LoopbackRoot{Path: f.backing, Dev: uint64(st.Dev)}
	root.NewNode = func(r *fs.LoopbackRoot, _ *fs.Inode, _ string, _ *syscall.Stat_t) fs.InodeEmbedder {
		return &node{LoopbackNode: fs.LoopbackNode{RootData: r}, fs: f}
	}
	rootNode := &node{LoopbackNode: fs.LoopbackNode{RootData: root}, fs: f}
	root.RootNode = rootNode
	zero := time.Duration(0)
	srv, err := fs.Mount(f.mountpoint, rootNode, &fs.Options{
		// Sizes change under the kernel when a fault drops data; short
		// attribute caching keeps it honest.
		AttrTimeout:  &zero,
		EntryTimeout: &zero,
		MountOptions: fuse.MountOptions{
			FsName:            "lossyfs",
			Name:              "lossyfs",
			DirectMountStrict: true,
			Debug:             f.opts.Debug,
			// MAP_SHARED mmap (bbolt's reads) needs the page cache: no
			// direct_io anywhere. Writes go through to us synchronously
			// (no writeback cache), so every write is seen here at once.
		},
	})
	if err != nil {
		return fmt.Errorf("lossyfs: mount %s: %w", f.mountpoint, err)
	}
	f.mu.Lock()
	f.server = srv
	f.mu.Unlock()
	return nil
}

// Mountpoint is where the filesystem is mounted.
func (f *FS) Mountpoint() string { return f.mountpoint }

// Backing is the directory that holds the synced bytes.
func (f *FS) Backing() string { return f.backing }

// SetFaults replaces the injected faults and restarts the ENOSPC count.
func (f *FS) SetFaults(x Faults) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = x
	f.written = 0
	f.full = false
}

// Faults returns the faults in force (FsyncEIO counts down as it fires).
func (f *FS) Faults() Faults {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.faults
}

// Stats returns the counters.
func (f *FS) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

// Pending is the number of unsynced changes held in memory, over all files.
func (f *FS) Pending() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, st := range f.files {
		n += len(st.pending())
	}
	return n
}

// Unmount unmounts; unsynced changes stay in memory (a later PowerCut or
// Sync decides their fate) only while the FS value lives. Processes using
// the mount must have exited.
func (f *FS) Unmount() error {
	f.mu.Lock()
	srv := f.server
	f.server = nil
	f.mu.Unlock()
	if srv == nil {
		return nil
	}
	if err := srv.Unmount(); err != nil {
		f.mu.Lock()
		f.server = srv
		f.mu.Unlock()
		return fmt.Errorf("lossyfs: unmount %s: %w", f.mountpoint, err)
	}
	srv.Wait()
	return nil
}

// Close writes every unsynced change to the backing files (a clean
// shutdown), unmounts and removes the stash.
func (f *FS) Close() error {
	err := f.Unmount()
	f.mu.Lock()
	defer f.mu.Unlock()
	for ino, st := range f.files {
		if e := st.applyPath(st.pending()); e != nil && err == nil {
			err = e
		}
		delete(f.files, ino)
	}
	f.created = map[uint64]string{}
	f.renames = nil
	os.RemoveAll(f.stash)
	return err
}

// PowerCut unmounts, discards what was not durable as mode says, and mounts
// again with the surviving bytes. Every process using the mount must be dead
// (kill it with SIGKILL first): an unmount with open files fails and nothing
// is discarded.
func (f *FS) PowerCut(mode Mode) error {
	if err := f.Unmount(); err != nil {
		return err
	}
	f.mu.Lock()
	f.stats.PowerCuts++
	for _, ino := range sortedInos(f.files) {
		st := f.files[ino]
		p := st.pending()
		keep := f.choose(mode, p)
		f.stats.LostWrites += int64(len(p) - len(keep))
		if len(keep) > 0 {
			_ = st.applyPath(keep)
		}
		delete(f.files, ino)
	}
	// renames first, newest first, so names are back where the creates
	// happened
	for i := len(f.renames) - 1; i >= 0; i-- {
		r := f.renames[i]
		if ino, err := inoOf(r.to); err == nil && ino == r.ino {
			if err := os.Rename(r.to, r.from); err == nil {
				f.stats.UndoneRenames++
				if p, ok := f.created[r.ino]; ok && p == r.to {
					f.created[r.ino] = r.from
				}
			}
		}
		if r.stashed != "" {
			_ = os.Rename(r.stashed, r.to)
		}
	}
	f.renames = nil
	for ino, p := range f.created {
		if got, err := inoOf(p); err == nil && got == ino {
			if os.Remove(p) == nil {
				f.stats.LostFiles++
			}
		}
	}
	f.created = map[uint64]string{}
	_ = os.RemoveAll(f.stash)
	_ = os.MkdirAll(f.stash, 0o700)
	f.mu.Unlock()
	return f.mount()
}

func (f *FS) choose(mode Mode, ops []op) []op {
	switch mode {
	case KeepPrefix:
		return ops[:f.rng.IntN(len(ops)+1)]
	case KeepRandom:
		var keep []op
		for _, o := range ops {
			if o.data == nil {
				if f.rng.IntN(2) == 0 {
					keep = append(keep, o)
				}
				continue
			}
			for i := 0; i < len(o.data); i += 4096 {
				j := min(i+4096, len(o.data))
				if f.rng.IntN(2) == 0 {
					keep = append(keep, op{off: o.off + int64(i), data: o.data[i:j]})
				}
			}
		}
		return keep
	}
	return nil
}

func inoOf(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// state returns the unsynced state of the file open as fd at path, creating
// it; f.mu must be held.
func (f *FS) state(ino uint64, fd int, path string) (*fileState, error) {
	if st := f.files[ino]; st != nil {
		return st, nil
	}
	var s syscall.Stat_t
	if err := syscall.Fstat(fd, &s); err != nil {
		return nil, err
	}
	st := &fileState{path: path, size: s.Size}
	f.files[ino] = st
	return st, nil
}

// read fills buf from off: the synced backing bytes with the unsynced
// changes laid over them in order.
func (st *fileState) read(fd int, buf []byte, off int64) (int, error) {
	if off >= st.size {
		return 0, nil
	}
	n := int(min(int64(len(buf)), st.size-off))
	buf = buf[:n]
	clear(buf)
	// the backing bytes (zeros past its end), then every change in order:
	// the result is the file's whole history, whatever part is synced
	if _, err := preadFull(fd, buf, off); err != nil {
		return 0, err
	}
	end := off + int64(n)
	for _, o := range st.ops {
		if o.data == nil {
			if o.off < end {
				clear(buf[max(o.off-off, 0):])
			}
			continue
		}
		oEnd := o.off + int64(len(o.data))
		if oEnd <= off || o.off >= end {
			continue
		}
		from, to := max(o.off, off), min(oEnd, end)
		copy(buf[from-off:to-off], o.data[from-o.off:to-o.off])
	}
	return n, nil
}

func preadFull(fd int, buf []byte, off int64) (int, error) {
	done := 0
	for done < len(buf) {
		n, err := syscall.Pread(fd, buf[done:], off+int64(done))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		if n == 0 {
			break // the backing file is shorter: the rest reads as zeros
		}
		done += n
	}
	return done, nil
}

func (st *fileState) write(data []byte, off int64) {
	st.ops = append(st.ops, op{off: off, data: append([]byte(nil), data...)})
	st.size = max(st.size, off+int64(len(data)))
}

func (st *fileState) truncate(size int64) {
	st.ops = append(st.ops, op{off: size})
	st.size = size
}

// apply writes ops to the backing file open as fd (without syncing).
func apply(fd int, ops []op) error {
	for _, o := range ops {
		if o.data == nil {
			if err := syscall.Ftruncate(fd, o.off); err != nil {
				return err
			}
			continue
		}
		for done := 0; done < len(o.data); {
			n, err := syscall.Pwrite(fd, o.data[done:], o.off+int64(done))
			if err == syscall.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			done += n
		}
	}
	return nil
}

// applyPath writes ops to the backing file by path; a file that no longer
// exists has nothing to keep.
func (st *fileState) applyPath(ops []op) error {
	fd, err := syscall.Open(st.path, syscall.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return nil
		}
		return err
	}
	defer syscall.Close(fd)
	return apply(fd, ops)
}

// sortedInos makes a cut with a given seed repeatable.
func sortedInos(m map[uint64]*fileState) []uint64 {
	out := make([]uint64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
