package lossyfs

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestMain(m *testing.M) {
	// Whatever touches the mount through mmap runs in a child process: a
	// page fault that waits for this process's own FUSE server cannot be
	// preempted, and the next stop-the-world GC deadlocks the two.
	if p := os.Getenv("LOSSYFS_BOLT_CHILD"); p != "" {
		boltChild(p)
		return
	}
	if p := os.Getenv("LOSSYFS_BOLT_CHECK"); p != "" {
		boltCheck(p)
		return
	}
	if p := os.Getenv("LOSSYFS_MMAP_CHILD"); p != "" {
		mmapChild(p)
		return
	}
	os.Exit(m.Run())
}

// mount mounts a fresh lossy filesystem, or skips the test when FUSE cannot
// be mounted here.
func mount(t *testing.T) *FS {
	t.Helper()
	if ok, why := Available(); !ok {
		t.Skipf("skipping: %s (run as root with /dev/fuse to test the lossy filesystem)", why)
	}
	dir := t.TempDir()
	backing, mnt := filepath.Join(dir, "backing"), filepath.Join(dir, "mnt")
	for _, d := range []string{backing, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f, err := Mount(backing, mnt, Options{Seed: 1})
	if err != nil {
		t.Skipf("skipping: cannot mount FUSE here: %v", err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return f
}

func writeAt(t *testing.T, fh *os.File, s string, off int64) {
	t.Helper()
	if _, err := fh.WriteAt([]byte(s), off); err != nil {
		t.Fatalf("write %q at %d: %v", s, off, err)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestOnlySyncedBytesSurviveAPowerCut(t *testing.T) {
	f := mount(t)
	p := filepath.Join(f.Mountpoint(), "data")
	fh, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	writeAt(t, fh, "synced!!", 0)
	if err := fh.Sync(); err != nil {
		t.Fatal(err)
	}
	writeAt(t, fh, "X", 0)
	writeAt(t, fh, "-and-unsynced", 8)
	// reads see unsynced writes laid over the synced bytes
	if got := readFile(t, p); got != "Xynced!!-and-unsynced" {
		t.Fatalf("before the cut: %q", got)
	}
	if got := readFile(t, filepath.Join(f.Backing(), "data")); got != "synced!!" {
		t.Fatalf("backing file holds %q, want only the synced bytes", got)
	}
	fh.Close()
	if err := f.PowerCut(DropAll); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, p); got != "synced!!" {
		t.Fatalf("after the cut: %q, want only the synced bytes", got)
	}
	if st := f.Stats(); st.LostWrites != 2 || st.PowerCuts != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestSizeChangesAreUnsyncedToo(t *testing.T) {
	f := mount(t)
	p := filepath.Join(f.Mountpoint(), "data")
	fh, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	orig := strings.Repeat("a", 8192)
	writeAt(t, fh, orig, 0)
	if err := fh.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := fh.Truncate(100); err != nil {
		t.Fatal(err)
	}
	writeAt(t, fh, "b", 200) // grows again: 100..200 must read as zeros
	got := readFile(t, p)
	want := strings.Repeat("a", 100) + strings.Repeat("\x00", 100) + "b"
	if got != want {
		t.Fatalf("after truncate and write: %d bytes %q..., want %d", len(got), got[95:min(len(got), 110)], len(want))
	}
	if fi, _ := os.Stat(p); fi.Size() != 201 {
		t.Fatalf("size %d, want 201", fi.Size())
	}
	fh.Close()
	if err := f.PowerCut(DropAll); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, p); got != orig {
		t.Fatalf("after the cut: %d bytes, want the synced 8192", len(got))
	}
}

func TestNamesFollowDirectoryFsync(t *testing.T) {
	f := mount(t)
	m := f.Mountpoint()
	put := func(name, data string, sync bool) {
		fh, err := os.Create(filepath.Join(m, name))
		if err != nil {
			t.Fatal(err)
		}
		writeAt(t, fh, data, 0)
		if sync {
			if err := fh.Sync(); err != nil {
				t.Fatal(err)
			}
		}
		fh.Close()
	}
	syncDir := func() {
		d, err := os.Open(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Sync(); err != nil {
			t.Fatal(err)
		}
		d.Close()
	}
	put("kept", "old", true)
	put("new-unsynced", "x", false)
	put("swap.tmp", "new", true)
	if err := os.Rename(filepath.Join(m, "swap.tmp"), filepath.Join(m, "kept")); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(m, "kept")); got != "new" {
		t.Fatalf("after rename: %q", got)
	}
	if err := f.PowerCut(DropAll); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(m, "new-unsynced")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a file never synced, in a directory never synced, survived: %v", err)
	}
	if got := readFile(t, filepath.Join(m, "kept")); got != "old" {
		t.Fatalf("rename without a directory fsync survived: kept = %q", got)
	}
	if got := readFile(t, filepath.Join(m, "swap.tmp")); got != "new" {
		t.Fatalf("swap.tmp = %q, want its synced data back under its old name", got)
	}
	// the same rename, then a directory fsync: it stays
	if err := os.Rename(filepath.Join(m, "swap.tmp"), filepath.Join(m, "kept")); err != nil {
		t.Fatal(err)
	}
	put("dir-synced", "y", false)
	syncDir()
	if err := f.PowerCut(DropAll); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(m, "kept")); got != "new" {
		t.Fatalf("rename followed by a directory fsync was undone: %q", got)
	}
	if got := readFile(t, filepath.Join(m, "dir-synced")); got != "" {
		t.Fatalf("dir-synced = %q, want the (empty) synced file", got)
	}
}

func TestNoSpaceAfterLimitAndBack(t *testing.T) {
	f := mount(t)
	fh, err := os.Create(filepath.Join(f.Mountpoint(), "data"))
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	f.SetFaults(Faults{NoSpaceAfter: 10000})
	writeAt(t, fh, strings.Repeat("a", 8000), 0)
	if _, err := fh.WriteAt(bytes.Repeat([]byte("b"), 4000), 8000); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write past the limit: %v, want ENOSPC", err)
	}
	if _, err := fh.WriteAt([]byte("c"), 8000); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("a small write once full: %v, want ENOSPC (the disk stays full)", err)
	}
	f.SetFaults(Faults{})
	writeAt(t, fh, strings.Repeat("b", 4000), 8000)
	if f.Stats().NoSpace == 0 {
		t.Fatalf("stats %+v", f.Stats())
	}
}

func TestFsyncEIODropsTheUnsyncedData(t *testing.T) {
	f := mount(t)
	p := filepath.Join(f.Mountpoint(), "buffer.db")
	fh, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	writeAt(t, fh, "good", 0)
	if err := fh.Sync(); err != nil {
		t.Fatal(err)
	}
	writeAt(t, fh, "lost", 4)
	f.SetFaults(Faults{FsyncEIO: 1, FsyncEIOMatch: "buffer"})
	if err := fh.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("fsync: %v, want EIO", err)
	}
	fh.Close()
	// a fresh open drops the page cache (no FOPEN_KEEP_CACHE)
	if got := readFile(t, p); got != "good" {
		t.Fatalf("after the failed fsync: %q, want the data of the last good sync", got)
	}
	fh, err = os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	writeAt(t, fh, "next", 4)
	if err := fh.Sync(); err != nil {
		t.Fatalf("the fault fires once: %v", err)
	}
	if got := readFile(t, filepath.Join(f.Backing(), "buffer.db")); got != "goodnext" {
		t.Fatalf("backing %q", got)
	}
}

func TestFsyncDelay(t *testing.T) {
	f := mount(t)
	fh, err := os.Create(filepath.Join(f.Mountpoint(), "data"))
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	f.SetFaults(Faults{FsyncDelay: 30 * time.Millisecond})
	start := time.Now()
	if err := fh.Sync(); err != nil {
		t.Fatal(err)
	}
	// a lower bound only: it cannot flake on a slow machine
	if took := time.Since(start); took < 30*time.Millisecond {
		t.Fatalf("fsync took %v with a 30ms delay", took)
	}
}

func TestReadOnly(t *testing.T) {
	f := mount(t)
	p := filepath.Join(f.Mountpoint(), "data")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.SetFaults(Faults{ReadOnly: true})
	if _, err := os.OpenFile(p, os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("open for writing: %v, want EROFS", err)
	}
	if _, err := os.Create(filepath.Join(f.Mountpoint(), "new")); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("create: %v, want EROFS", err)
	}
	if got := readFile(t, p); got != "x" {
		t.Fatalf("read %q", got)
	}
}

// bbolt reads through a MAP_SHARED mmap: pages written but not synced must
// be visible there too.
func TestMmapSeesUnsyncedWrites(t *testing.T) {
	f := mount(t)
	p := filepath.Join(f.Mountpoint(), "data")
	fh, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if err := fh.Truncate(8192); err != nil {
		t.Fatal(err)
	}
	writeAt(t, fh, "hello", 4096)
	out, err := child("LOSSYFS_MMAP_CHILD=" + p).Output()
	if err != nil {
		t.Fatalf("mmap child: %v", err)
	}
	if got := string(out); got != "hello" {
		t.Fatalf("mmap reads %q", got)
	}
}

// child is this test binary run as a helper process.
func child(env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	return cmd
}

func mmapChild(p string) {
	fh, err := os.Open(p)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	m, err := syscall.Mmap(int(fh.Fd()), 0, 8192, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Stdout.Write(m[4096:4101])
}

func TestKeepPrefixKeepsAPrefix(t *testing.T) {
	f := mount(t)
	p := filepath.Join(f.Mountpoint(), "data")
	for round := 0; round < 5; round++ {
		fh, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if err := fh.Truncate(0); err != nil {
			t.Fatal(err)
		}
		if err := fh.Sync(); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 6; i++ {
			writeAt(t, fh, strconv.Itoa(i), int64(i))
		}
		fh.Close()
		if err := f.PowerCut(KeepPrefix); err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, p); got != "012345"[:len(got)] {
			t.Fatalf("round %d: %q is not a prefix of the writes", round, got)
		}
	}
}

// A bbolt database on the mount, written by a child process that is killed
// at random moments, keeps exactly its committed transactions across power
// cuts (every mode), and passes bbolt's own consistency check.
func TestBoltSurvivesPowerCuts(t *testing.T) {
	f := mount(t)
	path := filepath.Join(f.Mountpoint(), "test.db")
	rng := rand.New(rand.NewPCG(2, 3))
	cuts := 12
	if testing.Short() {
		cuts = 4
	}
	// slow syncs, so that kills land inside commits
	f.SetFaults(Faults{FsyncDelay: time.Millisecond})
	next := uint64(0)
	for cut := 0; cut < cuts; cut++ {
		cmd := child("LOSSYFS_BOLT_CHILD="+path, fmt.Sprintf("LOSSYFS_BOLT_FROM=%d", next))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		want := 5 + rng.IntN(60)
		acked := next
		sc := bufio.NewScanner(out)
		for n := 0; sc.Scan(); n++ {
			v, err := strconv.ParseUint(strings.TrimPrefix(sc.Text(), "ok "), 10, 64)
			if err != nil {
				t.Fatalf("child said %q", sc.Text())
			}
			acked = v + 1
			if n == want {
				// at a random moment of a later commit; the rest of the
				// pipe is what committed before the kill
				time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
				cmd.Process.Kill()
			}
		}
		cmd.Wait()
		mode := Mode(cut % 3)
		if err := f.PowerCut(mode); err != nil {
			t.Fatal(err)
		}
		res, err := child("LOSSYFS_BOLT_CHECK="+path, fmt.Sprintf("LOSSYFS_BOLT_ACKED=%d", acked)).Output()
		if err != nil {
			t.Fatalf("cut %d (%v): %s%v", cut, mode, res, err)
		}
		n, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(string(res)), "keys "), 10, 64)
		if err != nil {
			t.Fatalf("cut %d (%v): check said %q", cut, mode, res)
		}
		// the commit in flight at the kill may have made it
		if n != acked && n != acked+1 {
			t.Fatalf("cut %d (%v): %d keys, acknowledged %d", cut, mode, n, acked)
		}
		next = n
	}
	st := f.Stats()
	t.Logf("%d cuts: %+v", cuts, st)
	if st.LostWrites == 0 {
		t.Fatal("no unsynced write was ever dropped: the test proved nothing")
	}
}

func key(i uint64) []byte { return binary.BigEndian.AppendUint64(nil, i) }

func value(i uint64) []byte {
	r := rand.New(rand.NewPCG(i, i))
	return bytes.Repeat([]byte{byte(i)}, 100+r.IntN(6000))
}

// boltChild commits one key per transaction forever, printing each after
// its commit returned.
func boltChild(path string) {
	from, _ := strconv.ParseUint(os.Getenv("LOSSYFS_BOLT_FROM"), 10, 64)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(1)
	}
	w := bufio.NewWriter(os.Stdout)
	for i := from; ; i++ {
		err := db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("b"))
			if err != nil {
				return err
			}
			if i > 10 && i%3 == 0 { // deletes free pages for reuse
				if err := b.Delete(key(i - 10)); err != nil {
					return err
				}
				if err := b.Put(key(i-10), value(i-10)); err != nil {
					return err
				}
			}
			return b.Put(key(i), value(i))
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		fmt.Fprintf(w, "ok %d\n", i)
		w.Flush()
	}
}

// boltCheck opens the database, runs bbolt's consistency check and verifies
// every acknowledged key; it prints "keys N" or fails.
func boltCheck(path string) {
	acked, _ := strconv.ParseUint(os.Getenv("LOSSYFS_BOLT_ACKED"), 10, 64)
	fail := func(err error) {
		fmt.Printf("%v\n", err)
		os.Exit(1)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		fail(fmt.Errorf("open: %w", err))
	}
	defer db.Close()
	var n uint64
	err = db.View(func(tx *bolt.Tx) error {
		for e := range tx.Check() {
			return fmt.Errorf("check: %w", e)
		}
		b := tx.Bucket([]byte("b"))
		if b == nil {
			if acked > 0 {
				return fmt.Errorf("bucket gone with %d commits acknowledged", acked)
			}
			return nil
		}
		for i := uint64(0); i < acked; i++ {
			if got := b.Get(key(i)); !bytes.Equal(got, value(i)) {
				return fmt.Errorf("acknowledged key %d: %d bytes, want %d", i, len(got), len(value(i)))
			}
		}
		n = uint64(b.Stats().KeyN)
		return nil
	})
	if err != nil {
		fail(err)
	}
	fmt.Printf("keys %d\n", n)
}

// With FsyncEIOKeepsPages the data of a failed fsync stays readable but
// never reaches the disk, not even with the next successful fsync.
func TestFsyncEIOKeepsPagesUntilTheCut(t *testing.T) {
	f := mount(t)
	p := filepath.Join(f.Mountpoint(), "db")
	fh, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	writeAt(t, fh, "good", 0)
	if err := fh.Sync(); err != nil {
		t.Fatal(err)
	}
	writeAt(t, fh, "lost", 4)
	f.SetFaults(Faults{FsyncEIO: 1, FsyncEIOKeepsPages: true})
	if err := fh.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("fsync: %v, want EIO", err)
	}
	writeAt(t, fh, "next", 8)
	if err := fh.Sync(); err != nil {
		t.Fatal(err)
	}
	fh.Close()
	if got := readFile(t, p); got != "goodlostnext" {
		t.Fatalf("reads %q, want the failed write still visible", got)
	}
	if got := readFile(t, filepath.Join(f.Backing(), "db")); got != "good\x00\x00\x00\x00next" {
		t.Fatalf("backing %q: the failed write must never reach it", got)
	}
	if err := f.PowerCut(DropAll); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, p); got != "good\x00\x00\x00\x00next" {
		t.Fatalf("after the cut %q", got)
	}
}
