package buffer

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// loadEpoch reads the file's epoch, creating one for a new file. Called in
// the open transaction, so the epoch is durable before any record exists.
func loadEpoch(meta *bolt.Bucket) (string, error) {
	if v := meta.Get(epochKey); len(v) > 0 {
		return string(v), nil
	}
	e, err := newEpoch()
	if err != nil {
		return "", err
	}
	if err := meta.Put(epochKey, []byte(e)); err != nil {
		return "", fmt.Errorf("buffer: store epoch: %w", err)
	}
	return e, nil
}

func newEpoch() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("buffer: epoch: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}
