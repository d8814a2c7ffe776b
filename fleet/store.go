package fleet

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// StoreFile is the file in data_dir that keeps the applied overlays across
// restarts and outages.
const StoreFile = "fleet-config.json"

// storeFormat is the file's format version.
const storeFormat = 1

// maxStoreBytes bounds what is read of the file (two overlays and their
// metadata).
const maxStoreBytes = 4*MaxOverlayBytes + 64<<10

type storeDoc struct {
	Format   int                 `json:"format"`
	Overlays map[string]*Overlay `json:"overlays"`
}

// LoadStore reads the applied overlays kept in dataDir; a missing file is
// none. It only reads: `gateway check` uses it on a running box's data_dir.
func LoadStore(dataDir string) (map[string]*Overlay, error) {
	path := filepath.Join(dataDir, StoreFile)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]*Overlay{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxStoreBytes+1))
	if err != nil {
		return nil, fmt.Errorf("fleet: read %s: %w", path, err)
	}
	if len(data) > maxStoreBytes {
		return nil, fmt.Errorf("fleet: %s is larger than %d bytes", path, maxStoreBytes)
	}
	var doc storeDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("fleet: %s: %w", path, err)
	}
	if doc.Format != storeFormat {
		return nil, fmt.Errorf("fleet: %s: format %d, this gateway reads %d", path, doc.Format, storeFormat)
	}
	if doc.Overlays == nil {
		doc.Overlays = map[string]*Overlay{}
	}
	for k, o := range doc.Overlays {
		if o == nil || o.Key != k {
			return nil, fmt.Errorf("fleet: %s: entry %q is damaged", path, k)
		}
	}
	return doc.Overlays, nil
}

// SaveStore replaces the file atomically: a temporary file written and
// fsync'd, renamed over the old one, and the directory fsync'd, so a power
// cut leaves the old overlays or the new ones, never a mix. It is written
// only when an overlay is accepted, never per record read or refused (a
// flood of forged records must not wear the card).
func SaveStore(dataDir string, overlays map[string]*Overlay) error {
	data, err := json.MarshalIndent(storeDoc{Format: storeFormat, Overlays: overlays}, "", "  ")
	if err != nil {
		return fmt.Errorf("fleet: encode %s: %w", StoreFile, err)
	}
	path := filepath.Join(dataDir, StoreFile)
	tmp, err := os.CreateTemp(dataDir, StoreFile+".tmp-*")
	if err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		return fmt.Errorf("fleet: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("fleet: fsync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("fleet: close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	done = true
	dir, err := os.Open(dataDir)
	if err != nil {
		return fmt.Errorf("fleet: open %s: %w", dataDir, err)
	}
	defer dir.Close()
	if err := dir.Sync(); err != nil {
		return fmt.Errorf("fleet: fsync %s: %w", dataDir, err)
	}
	return nil
}

// VerifyStored re-checks stored overlays against the keys configured now:
// a key removed from fleet.config_keys (rotated after a leak) withdraws
// what it signed. It returns the overlays that still hold and the refusals
// of the others.
func VerifyStored(stored map[string]*Overlay, keys []PublicKey, id string) (map[string]*Overlay, []Refusal) {
	ok := map[string]*Overlay{}
	var refused []Refusal
	for _, k := range []string{AllBoxes, id} {
		o := stored[k]
		if o == nil {
			continue
		}
		kid, err := Verify(keys, o.Key, o.Version, []byte(o.Value), o.Signature)
		if err != nil {
			refused = append(refused, Refusal{Key: o.Key, Version: o.Version, Offset: o.Offset, Reason: ReasonBadSig,
				Detail: "the overlay kept in " + StoreFile + " no longer verifies: " + err.Error()})
			continue
		}
		if err := CheckSections([]byte(o.Value)); err != nil {
			refused = append(refused, Refusal{Key: o.Key, Version: o.Version, Offset: o.Offset, Reason: ReasonSection, Detail: err.Error()})
			continue
		}
		c := *o
		c.KeyID = kid
		ok[k] = &c
	}
	return ok, refused
}
