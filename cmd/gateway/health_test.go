package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/gateway/admin"
	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/internal/testkit"

	bolt "go.etcd.io/bbolt"
)

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// testConfig is a gateway on free loopback ports whose Kafka is a port
// nobody listens on (Kafka down: buffering is normal work).
func testConfig(t testing.TB, dir string) *config.Config {
	t.Helper()
	y := fmt.Sprintf(`
id: health-test
data_dir: %s
mqtt: {address: %q}
kafka: {brokers: [%q]}
admin: {address: %q}
routes:
  - {name: payments, match: "terminals/+/payments/#", kafka_topic: payments}
`, dir, freeAddr(t), freeAddr(t), freeAddr(t))
	cfg, err := config.Parse([]byte(y), nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func readyz(addr string) int {
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// A compaction swap that fails for real (the buffer file's name is taken by
// a directory, so neither the rename nor the reopen can succeed) leaves the
// gateway without a usable buffer: /readyz answers 503, the run loop ends
// with a failure (cmdRun exits 1) instead of serving on a closed database,
// and every acknowledged message is still on disk.
func TestFailedSwapMakesUnreadyAndExits(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	testBufferOptions = func(o *buffer.Options) { o.CompactMinFile = 1; o.JanitorInterval = 50 * time.Millisecond }
	t.Cleanup(func() { testBufferOptions = nil })
	var lg *slog.Logger = slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		lg = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	g, err := startGateway(cfg, lg)
	if err != nil {
		t.Fatal(err)
	}
	defer g.stop()
	testkit.Eventually(t, 10*time.Second, func() bool { return readyz(cfg.Admin.Address) == 200 }, "never ready")
	for i := range 5 {
		if _, err := g.buf.AppendWait(buffer.Record{Route: "payments", KafkaTopic: "payments", Received: time.Now(),
			ClientID: "t1", MQTTTopic: "terminals/t1/payments/x", Payload: []byte(fmt.Sprintf("p%d", i))}); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "buffer.db")
	if err := os.Rename(path, path+".saved"); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(path, "in-the-way"), 0o700); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 20*time.Second, func() bool { return g.buf.Err() != nil }, "the swap never failed")
	if code := readyz(cfg.Admin.Address); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz answered %d with an unusable buffer, want 503", code)
	}
	done := make(chan error, 1)
	go func() { _, err := g.wait(make(chan os.Signal)); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("wait returned without the buffer's error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the run loop does not end on an unusable buffer")
	}
	g.stop()
	if err := os.RemoveAll(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".saved", path); err != nil {
		t.Fatal(err)
	}
	b, err := buffer.Open(buffer.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if n, _ := b.Total(); n != 5 {
		t.Fatalf("%d of 5 acknowledged records on disk", n)
	}
}

// Corrupt sessions.db and receipts.db (garbage, as a bad card sector or a
// torn copy leaves them) do not stop the gateway: each is moved aside, the
// gateway starts, is ready, and /status names both quarantined files.
func TestCorruptStateFilesAreQuarantined(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"sessions.db", "receipts.db"} {
		if err := os.WriteFile(filepath.Join(dir, f), bytes.Repeat([]byte("\xde\xad\xbe\xef"), 8192), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := testConfig(t, dir)
	g, err := startGateway(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("the gateway did not start with corrupt state files: %v", err)
	}
	defer g.stop()
	testkit.Eventually(t, 10*time.Second, func() bool { return readyz(cfg.Admin.Address) == 200 }, "never ready")
	st, err := admin.FetchStatus(context.Background(), cfg.Admin.Address)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"sessions.db", "receipts.db"} {
		kept := st.QuarantinedFiles[f]
		if !strings.HasPrefix(kept, filepath.Join(dir, f)+".corrupt-") {
			t.Fatalf("%s: quarantined as %q; status %+v", f, kept, st.QuarantinedFiles)
		}
		if _, err := os.Stat(kept); err != nil {
			t.Fatalf("%s: the corrupt file was not kept: %v", f, err)
		}
	}
	var out bytes.Buffer
	admin.PrintStatus(&out, st)
	if !strings.Contains(out.String(), "quarantined: sessions.db") {
		t.Fatalf("gateway status does not say so:\n%s", out.String())
	}
}

// A downgrade: a buffer file that a newer release wrote stops the gateway
// at start with a message naming the file; it is neither misread nor moved
// aside, and the sessions and receipts are left alone too.
func TestNewerBufferFileRefusedAtStart(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	g, err := startGateway(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "buffer.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("format"), []byte{0, 0, 0, 0, 0, 0, 0, 9})
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	g, err = startGateway(cfg, slog.New(slog.DiscardHandler))
	if err == nil {
		g.stop()
		t.Fatal("the gateway started on a buffer file of a newer format")
	}
	if !errors.Is(err, buffer.ErrNewerFormat) || !strings.Contains(err.Error(), path) {
		t.Fatalf("start error %q does not say the file is from a newer release", err)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Fatal("the refused buffer file was changed")
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*.corrupt-*")); len(m) > 0 {
		t.Fatalf("files moved aside: %v", m)
	}
}
