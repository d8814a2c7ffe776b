package buffer

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// fdatasync makes a file's data durable without its metadata (mtime): the
// journal's appends stay within the file's size, so nothing else is needed.
func fdatasync(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR {
			return err
		}
	}
}

// dropCache lets the kernel forget a file's cached pages. Replay reads the
// journal whole, and readahead caches it in large folios (16-64 KiB on
// recent kernels); an append dirtying one byte of such a folio then writes
// all of it back. Appends into pages not cached make single-page folios.
func dropCache(f *os.File) {
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}
