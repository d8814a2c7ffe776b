package lossyfs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// node is a loopback node whose file data and namespace changes go through
// the FS's durability model.
type node struct {
	fs.LoopbackNode
	fs *FS
}

var (
	_ fs.NodeLookuper       = (*node)(nil)
	_ fs.NodeGetattrer      = (*node)(nil)
	_ fs.NodeSetattrer      = (*node)(nil)
	_ fs.NodeStatxer        = (*node)(nil)
	_ fs.NodeOpener         = (*node)(nil)
	_ fs.NodeCreater        = (*node)(nil)
	_ fs.NodeFsyncer        = (*node)(nil)
	_ fs.NodeRenamer        = (*node)(nil)
	_ fs.NodeUnlinker       = (*node)(nil)
	_ fs.NodeOpendirHandler = (*node)(nil)
	_ fs.NodeCopyFileRanger = (*node)(nil)
	_ fs.NodeTmpfiler       = (*node)(nil)
	_ fs.NodeMkdirer        = (*node)(nil)
	_ fs.NodeRmdirer        = (*node)(nil)
	_ fs.NodeMknoder        = (*node)(nil)
	_ fs.NodeSymlinker      = (*node)(nil)
	_ fs.NodeLinker         = (*node)(nil)
	_ fs.NodeSetxattrer     = (*node)(nil)
	_ fs.NodeRemovexattrer  = (*node)(nil)
	_ fs.FileReader         = (*handle)(nil)
	_ fs.FileWriter         = (*handle)(nil)
	_ fs.FileReleaser       = (*handle)(nil)
	_ fs.FileGetattrer      = (*handle)(nil)
	_ fs.FileFlusher        = (*handle)(nil)
	_ fs.FileAllocater      = (*handle)(nil)
	_ fs.FileFsyncdirer     = (*dirHandle)(nil)
	_ fs.FileReaddirenter   = (*dirHandle)(nil)
	_ fs.FileReleasedirer   = (*dirHandle)(nil)
	_ fs.FileSeekdirer      = (*dirHandle)(nil)
)

// backingPath is the node's path in the backing directory.
func (n *node) backingPath() string {
	return filepath.Join(n.fs.backing, n.Path(n.Root()))
}

// refuse counts and returns EROFS when the filesystem is read-only.
func (f *FS) refuse() syscall.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.faults.ReadOnly {
		f.stats.ReadOnly++
		return syscall.EROFS
	}
	return 0
}

// fixSize replaces a backing size with the size readers see.
func (f *FS) fixSize(ino uint64, size *uint64, blocks *uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if st := f.files[ino]; st != nil {
		*size = uint64(st.size)
		*blocks = (uint64(st.size) + 511) / 512
	}
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ch, errno := n.LoopbackNode.Lookup(ctx, name, out)
	if errno == 0 {
		n.fs.fixSize(out.Attr.Ino, &out.Attr.Size, &out.Attr.Blocks)
	}
	return ch, errno
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if h, ok := f.(*handle); ok {
		return h.Getattr(ctx, out)
	}
	if errno := n.LoopbackNode.Getattr(ctx, nil, out); errno != 0 {
		return errno
	}
	n.fs.fixSize(out.Attr.Ino, &out.Attr.Size, &out.Attr.Blocks)
	return 0
}

func (n *node) Statx(ctx context.Context, f fs.FileHandle, flags uint32, mask uint32, out *fuse.StatxOut) syscall.Errno {
	if errno := n.LoopbackNode.Statx(ctx, nil, flags, mask, out); errno != 0 {
		return errno
	}
	n.fs.fixSize(out.Statx.Ino, &out.Statx.Size, &out.Statx.Blocks)
	return 0
}

// Setattr keeps a size change in memory like a write; the rest passes
// through.
func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if errno := n.fs.refuse(); errno != 0 {
		return errno
	}
	if size, ok := in.GetSize(); ok {
		fd, closeFd, errno := n.fdFor(f)
		if errno != 0 {
			return errno
		}
		err := n.fs.truncate(fd, n.backingPath(), int64(size))
		closeFd()
		if err != nil {
			return fs.ToErrno(err)
		}
		in.Valid &^= fuse.FATTR_SIZE
	}
	if errno := n.LoopbackNode.Setattr(ctx, nil, in, out); errno != 0 {
		return errno
	}
	n.fs.fixSize(out.Attr.Ino, &out.Attr.Size, &out.Attr.Blocks)
	return 0
}

// fdFor returns a backing descriptor for the node: the handle's, or a new
// one to be closed with the returned function.
func (n *node) fdFor(f fs.FileHandle) (int, func(), syscall.Errno) {
	if h, ok := f.(*handle); ok {
		return h.fd, func() {}, 0
	}
	fd, err := syscall.Open(n.backingPath(), syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return -1, nil, fs.ToErrno(err)
	}
	return fd, func() { syscall.Close(fd) }, 0
}

func (f *FS) truncate(fd int, path string, size int64) error {
	var s syscall.Stat_t
	if err := syscall.Fstat(fd, &s); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	st, err := f.state(s.Ino, fd, path)
	if err != nil {
		return err
	}
	st.truncate(size)
	return nil
}

func writeFlags(flags uint32) bool {
	return flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if writeFlags(flags) {
		if errno := n.fs.refuse(); errno != 0 {
			return nil, 0, errno
		}
	}
	trunc := flags&syscall.O_TRUNC != 0
	fh, _, errno := n.LoopbackNode.Open(ctx, flags&^syscall.O_TRUNC)
	if errno != 0 {
		return nil, 0, errno
	}
	h, errno := n.fs.newHandle(fh, n)
	if errno != 0 {
		return nil, 0, errno
	}
	if trunc {
		if err := n.fs.truncate(h.fd, n.backingPath(), 0); err != nil {
			h.Release(ctx)
			return nil, 0, fs.ToErrno(err)
		}
	}
	// No FOPEN_DIRECT_IO: mmap needs the page cache.
	return h, 0, 0
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if errno := n.fs.refuse(); errno != 0 {
		return nil, nil, 0, errno
	}
	p := filepath.Join(n.backingPath(), name)
	_, existed := os.Lstat(p)
	ch, fh, _, errno := n.LoopbackNode.Create(ctx, name, flags&^syscall.O_TRUNC, mode, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	cn, _ := ch.Operations().(*node)
	h, errno := n.fs.newHandle(fh, cn)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	if existed != nil { // a new file: its name is not durable yet
		n.fs.mu.Lock()
		n.fs.created[h.ino] = p
		n.fs.mu.Unlock()
	} else if flags&syscall.O_TRUNC != 0 {
		if err := n.fs.truncate(h.fd, p, 0); err != nil {
			h.Release(ctx)
			return nil, nil, 0, fs.ToErrno(err)
		}
	}
	n.fs.fixSize(out.Attr.Ino, &out.Attr.Size, &out.Attr.Blocks)
	return ch, h, 0, 0
}

func (n *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EOPNOTSUPP
}

func (n *node) CopyFileRange(ctx context.Context, fhIn fs.FileHandle, offIn uint64, out *fs.Inode, fhOut fs.FileHandle, offOut uint64, length uint64, flags uint64) (uint32, syscall.Errno) {
	return 0, syscall.EOPNOTSUPP // the kernel falls back to read and write
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.fs.refuse(); errno != 0 {
		return nil, errno
	}
	return n.LoopbackNode.Mkdir(ctx, name, mode, out)
}

func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.fs.refuse(); errno != 0 {
		return nil, errno
	}
	return n.LoopbackNode.Mknod(ctx, name, mode, rdev, out)
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.fs.refuse(); errno != 0 {
		return nil, errno
	}
	return n.LoopbackNode.Symlink(ctx, target, name, out)
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.fs.refuse(); errno != 0 {
		return nil, errno
	}
	return n.LoopbackNode.Link(ctx, target, name, out)
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	if errno := n.fs.refuse(); errno != 0 {
		return errno
	}
	return n.LoopbackNode.Rmdir(ctx, name)
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	if errno := n.fs.refuse(); errno != 0 {
		return errno
	}
	return n.LoopbackNode.Setxattr(ctx, attr, data, flags)
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	if errno := n.fs.refuse(); errno != 0 {
		return errno
	}
	return n.LoopbackNode.Removexattr(ctx, attr)
}

// Unlink is durable at once; the file's unsynced changes go with it when it
// was the last name.
func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	if errno := n.fs.refuse(); errno != 0 {
		return errno
	}
	p := filepath.Join(n.backingPath(), name)
	var s syscall.Stat_t
	statErr := syscall.Lstat(p, &s)
	if errno := n.LoopbackNode.Unlink(ctx, name); errno != 0 {
		return errno
	}
	if statErr == nil {
		n.fs.mu.Lock()
		if s.Nlink <= 1 {
			delete(n.fs.files, s.Ino)
			delete(n.fs.created, s.Ino)
		}
		n.fs.mu.Unlock()
	}
	return 0
}

// Rename is undone by a power cut until the directories involved are
// fsync'd; a file it replaces is kept aside (hard link) to come back then.
func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if errno := n.fs.refuse(); errno != 0 {
		return errno
	}
	np, ok := newParent.(*node)
	if !ok || flags != 0 {
		return n.LoopbackNode.Rename(ctx, name, newParent, newName, flags)
	}
	from := filepath.Join(n.backingPath(), name)
	to := filepath.Join(np.backingPath(), newName)
	var s syscall.Stat_t
	if err := syscall.Lstat(from, &s); err != nil {
		return fs.ToErrno(err)
	}
	stashed := ""
	var ts syscall.Stat_t
	if syscall.Lstat(to, &ts) == nil && ts.Mode&syscall.S_IFMT == syscall.S_IFREG {
		n.fs.mu.Lock()
		n.fs.stashSeq++
		stashed = filepath.Join(n.fs.stash, fmt.Sprintf("%d", n.fs.stashSeq))
		n.fs.mu.Unlock()
		if err := os.Link(to, stashed); err != nil {
			stashed = ""
		}
	}
	if errno := n.LoopbackNode.Rename(ctx, name, newParent, newName, flags); errno != 0 {
		if stashed != "" {
			os.Remove(stashed)
		}
		return errno
	}
	f := n.fs
	f.mu.Lock()
	defer f.mu.Unlock()
	if st := f.files[s.Ino]; st != nil {
		st.path = to
	}
	if _, ok := f.created[s.Ino]; ok {
		f.created[s.Ino] = to
	}
	if stashed != "" {
		if ts.Nlink <= 1 {
			// the replaced file's unsynced data dies with its name
			delete(f.files, ts.Ino)
		}
	}
	f.renames = append(f.renames, rename{ino: s.Ino, from: from, to: to, stashed: stashed})
	return 0
}

func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, fl, errno := n.LoopbackNode.OpendirHandle(ctx, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	d, ok := fh.(loopDir)
	if !ok {
		return fh, fl, 0
	}
	return &dirHandle{loopDir: d, n: n}, fl, 0
}

// Fsync makes a file's changes durable (or fails them, as the faults say);
// for a directory it makes the creates and renames in it durable.
func (n *node) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	fsys := n.fs
	fsys.mu.Lock()
	delay, hook := fsys.faults.FsyncDelay, fsys.faults.BeforeFsync
	fsys.mu.Unlock()
	if hook != nil {
		hook(n.backingPath(), n.IsDir())
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			// Interrupted. The Go runtime signals its threads (preemption)
			// and a real fsync is not interruptible, so only a caller that
			// died makes the fsync not happen (a cut during a slow fsync);
			// otherwise it completes as if nothing had happened.
			if callerDied(ctx) {
				t.Stop()
				return syscall.EINTR
			}
			<-t.C
		}
	}
	if n.IsDir() {
		return n.fsyncDir()
	}
	fd, closeFd, errno := n.fdFor(f)
	if errno != 0 {
		return errno
	}
	defer closeFd()
	var s syscall.Stat_t
	if err := syscall.Fstat(fd, &s); err != nil {
		return fs.ToErrno(err)
	}
	fsys.mu.Lock()
	st := fsys.files[s.Ino]
	var todo []op
	if st != nil {
		todo = st.pending()
	}
	x := &fsys.faults
	if x.FsyncEIO > 0 && (x.FsyncEIOMatch == "" || containsBase(n.backingPath(), x.FsyncEIOMatch)) {
		x.FsyncEIO--
		fsys.stats.FailedFsyncs++
		fsys.stats.LostWrites += int64(len(todo))
		if st != nil && st.settle(ghost, !x.FsyncEIOKeepsPages, backingSize(fd)) {
			delete(fsys.files, s.Ino)
		}
		fsys.mu.Unlock()
		if len(todo) > 0 && !x.FsyncEIOKeepsPages {
			// What readers see must drop back to the synced bytes. Not
			// from inside this request: the kernel holds the inode.
			go n.NotifyContent(0, 0)
		}
		return syscall.EIO
	}
	if len(todo) > 0 && x.ReadOnly {
		fsys.stats.ReadOnly++
		fsys.mu.Unlock()
		return syscall.EROFS
	}
	// apply under the lock: a write racing the sync must not slip between
	// applying and forgetting
	// The backing file is not synced: the host does not lose power, and a
	// real sync under the lock would serialize every file's fsync.
	err := apply(fd, todo)
	if err == nil {
		if st != nil && st.settle(synced, false, backingSize(fd)) {
			delete(fsys.files, s.Ino)
		}
		fsys.stats.Fsyncs++
		delete(fsys.created, s.Ino) // fsync of a new file makes its name durable too
	}
	fsys.mu.Unlock()
	return fs.ToErrno(err)
}

// callerDied reports whether the thread that made the request was killed:
// SIGKILL pending for it or its process. (A killed thread cannot exit while
// its request is with us: the kernel waits for our answer.)
func callerDied(ctx context.Context) bool {
	caller, ok := fuse.FromContext(ctx)
	if !ok {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", caller.Pid))
	if err != nil {
		return true
	}
	const sigkill = 1 << (9 - 1)
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "SigPnd" && k != "ShdPnd") {
			continue
		}
		if mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64); err == nil && mask&sigkill != 0 {
			return true
		}
	}
	return false
}

func backingSize(fd int) int64 {
	var s syscall.Stat_t
	if syscall.Fstat(fd, &s) != nil {
		return 0
	}
	return s.Size
}

func containsBase(path, sub string) bool {
	base := filepath.Base(path)
	for i := 0; i+len(sub) <= len(base); i++ {
		if base[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func (n *node) fsyncDir() syscall.Errno {
	dir := n.backingPath()
	f := n.fs
	if fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0); err == nil {
		_ = syscall.Fsync(fd)
		syscall.Close(fd)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stats.DirFsyncs++
	for ino, p := range f.created {
		if filepath.Dir(p) == dir {
			delete(f.created, ino)
		}
	}
	kept := f.renames[:0]
	for _, r := range f.renames {
		// durable once both directories were synced since
		if filepath.Dir(r.from) == dir {
			r.fromSynced = true
		}
		if filepath.Dir(r.to) == dir {
			r.toSynced = true
		}
		if r.fromSynced && r.toSynced {
			if r.stashed != "" {
				os.Remove(r.stashed)
			}
			continue
		}
		kept = append(kept, r)
	}
	f.renames = kept
	return 0
}

// handle is an open file: reads overlay the unsynced changes, writes are
// kept in memory until fsync.
type handle struct {
	fs  *FS
	lf  *fs.LoopbackFile // owns fd
	fd  int
	ino uint64
	n   *node
}

func (f *FS) newHandle(fh fs.FileHandle, n *node) (*handle, syscall.Errno) {
	lf, ok := fh.(*fs.LoopbackFile)
	if !ok {
		return nil, syscall.EIO
	}
	fd, ok := lf.PassthroughFd()
	if !ok {
		lf.Release(context.Background())
		return nil, syscall.EBADF
	}
	var s syscall.Stat_t
	if err := syscall.Fstat(fd, &s); err != nil {
		lf.Release(context.Background())
		return nil, fs.ToErrno(err)
	}
	return &handle{fs: f, lf: lf, fd: fd, ino: s.Ino, n: n}, 0
}

func (h *handle) Read(ctx context.Context, buf []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h.fs.mu.Lock()
	st := h.fs.files[h.ino]
	if st == nil {
		h.fs.mu.Unlock()
		n, err := preadFull(h.fd, buf, off)
		if err != nil {
			return nil, fs.ToErrno(err)
		}
		return fuse.ReadResultData(buf[:n]), 0
	}
	n, err := st.read(h.fd, buf, off)
	h.fs.mu.Unlock()
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	return fuse.ReadResultData(buf[:n]), 0
}

func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	f := h.fs
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.faults.ReadOnly {
		f.stats.ReadOnly++
		return 0, syscall.EROFS
	}
	if lim := f.faults.NoSpaceAfter; lim > 0 && (f.full || f.written+int64(len(data)) > lim) {
		f.full = true
		f.stats.NoSpace++
		return 0, syscall.ENOSPC
	}
	path := ""
	if h.n != nil {
		path = h.n.backingPath()
	}
	st, err := f.state(h.ino, h.fd, path)
	if err != nil {
		return 0, fs.ToErrno(err)
	}
	st.write(data, off)
	f.written += int64(len(data))
	f.stats.BytesWritten += int64(len(data))
	return uint32(len(data)), 0
}

func (h *handle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	var s syscall.Stat_t
	if err := syscall.Fstat(h.fd, &s); err != nil {
		return fs.ToErrno(err)
	}
	out.FromStat(&s)
	h.fs.fixSize(out.Attr.Ino, &out.Attr.Size, &out.Attr.Blocks)
	return 0
}

func (h *handle) Flush(ctx context.Context) syscall.Errno { return 0 }

func (h *handle) Release(ctx context.Context) syscall.Errno { return h.lf.Release(ctx) }

func (h *handle) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	return syscall.EOPNOTSUPP
}

// loopDir is what go-fuse's loopback directory handle provides.
type loopDir interface {
	fs.FileReaddirenter
	fs.FileReleasedirer
	fs.FileSeekdirer
	fs.FileFsyncdirer
}

// dirHandle routes a directory fsync through the durability model.
type dirHandle struct {
	loopDir
	n *node
}

func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	return d.n.Fsync(ctx, nil, flags)
}
