package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/gateway/buffer"
)

func setAside(t *testing.T, buf *buffer.Buffer, n int) []uint64 {
	t.Helper()
	var recs []buffer.Record
	for i := range n {
		rec := buffer.Record{Route: "payments", KafkaTopic: "payments", Received: time.Now(), ClientID: "t1",
			Key: []byte("t1"), MQTTTopic: "terminals/t1/payments/x", Payload: []byte(fmt.Sprintf("p%d", i))}
		res, err := buf.AppendWait(rec)
		if err != nil {
			t.Fatal(err)
		}
		rec.Seq = res.Seq
		recs = append(recs, rec)
	}
	if err := buf.DeadLetter(recs, "too_large", "test"); err != nil {
		t.Fatal(err)
	}
	ids := make([]uint64, n)
	for i, r := range recs {
		ids[i] = r.Seq
	}
	return ids
}

func runCLI(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return out.String() + errb.String(), code
}

// With the gateway stopped, `gateway deadletter` works on the file.
func TestDeadLetterCLIOnFile(t *testing.T) {
	dir := t.TempDir()
	buf, err := buffer.Open(buffer.Options{Path: filepath.Join(dir, "buffer.db")})
	if err != nil {
		t.Fatal(err)
	}
	ids := setAside(t, buf, 3)
	buf.Close()

	out, code := runCLI(t, "deadletter", "ls", "--data-dir", dir)
	if code != 0 || !strings.Contains(out, fmt.Sprint(ids[0])) || !strings.Contains(out, "too_large") {
		t.Fatalf("ls: %d\n%s", code, out)
	}
	if out, code = runCLI(t, "deadletter", "resend", "--data-dir", dir, fmt.Sprint(ids[0])); code != 0 || !strings.Contains(out, ": 1") {
		t.Fatalf("resend: %d\n%s", code, out)
	}
	if out, code = runCLI(t, "deadletter", "drop", "--data-dir", dir, "--all"); code != 0 || !strings.Contains(out, "dropped: 2") {
		t.Fatalf("drop: %d\n%s", code, out)
	}
	if out, code = runCLI(t, "deadletter", "ls", "--data-dir", dir); code != 0 || !strings.Contains(out, "no dead letters") {
		t.Fatalf("ls after: %d\n%s", code, out)
	}
	buf, err = buffer.Open(buffer.Options{Path: filepath.Join(dir, "buffer.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Close()
	if n, _ := buf.Total(); n != 1 {
		t.Fatalf("%d records in the buffer after one resend", n)
	}
	if _, code := runCLI(t, "deadletter", "resend", "--data-dir", dir); code != exitUsage {
		t.Fatalf("resend without ids: exit %d", code)
	}
}

// While the gateway runs it holds the file: the command goes through the
// admin endpoint.
func TestDeadLetterCLIViaAdmin(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	g, err := startGateway(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer g.stop()
	ids := setAside(t, g.buf, 2)
	out, code := runCLI(t, "deadletter", "ls", "--data-dir", dir, "--admin", cfg.Admin.Address)
	if code != 0 || !strings.Contains(out, fmt.Sprint(ids[1])) {
		t.Fatalf("ls: %d\n%s", code, out)
	}
	if out, code = runCLI(t, "deadletter", "resend", "--admin", cfg.Admin.Address, fmt.Sprint(ids[0])); code != 0 {
		t.Fatalf("resend: %d\n%s", code, out)
	}
	if out, code = runCLI(t, "deadletter", "drop", "--admin", cfg.Admin.Address, "--all"); code != 0 || !strings.Contains(out, "dropped: 1") {
		t.Fatalf("drop: %d\n%s", code, out)
	}
	if dl, _ := g.buf.DeadLetters(0); len(dl) != 0 {
		t.Fatalf("%d dead letters left", len(dl))
	}
	if n, _ := g.buf.Total(); n != 1 {
		t.Fatalf("%d records buffered after one resend", n)
	}
}
