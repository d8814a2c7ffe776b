package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// A second gateway on the same data_dir fails to start with a message that
// says another process holds the files, not bbolt's bare "timeout".
func TestSecondGatewaySameDataDir(t *testing.T) {
	dir := t.TempDir()
	// The first "gateway": a process holding buffer.db's lock (flock locks
	// conflict between open files, also within one process).
	db, err := bolt.Open(filepath.Join(dir, "buffer.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	cfgPath := filepath.Join(dir, "gateway.yaml")
	yaml := fmt.Sprintf("data_dir: %s\nkafka: {brokers: [\"127.0.0.1:1\"]}\nmqtt: {address: \"127.0.0.1:0\"}\nadmin: {address: \"\"}\n", dir)
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"run", "--config", cfgPath}, &stdout, &stderr); code != exitFailure {
		t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitFailure, stderr.String())
	}
	if s := stderr.String(); !strings.Contains(s, "another process holds the lock") || !strings.Contains(s, dir) {
		t.Fatalf("stderr does not say another process holds data_dir %s:\n%s", dir, s)
	}
}
