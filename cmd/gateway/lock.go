package main

import (
	"errors"
	"fmt"

	berrors "go.etcd.io/bbolt/errors"
)

// errDataDirLocked says why a start failed when a state file's lock is held.
var errDataDirLocked = errors.New("another process holds the lock on a file in data_dir (is a second gateway running with the same data_dir?)")

// explainLocked turns bbolt's bare "timeout" at open (its file lock is held:
// every bbolt file in data_dir is opened with a 2 s lock timeout) into a
// message that says so and names data_dir; other errors pass unchanged.
func explainLocked(err error, dataDir string) error {
	if err == nil || !errors.Is(err, berrors.ErrTimeout) {
		return err
	}
	return fmt.Errorf("%w: data_dir %s: stop the other process or give this one its own data_dir (%w)", errDataDirLocked, dataDir, err)
}
