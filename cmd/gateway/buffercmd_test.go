package main

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/gateway/admin"
	"github.com/edgegw/gateway/buffer"
)

func fillBuffer(t *testing.T, b *buffer.Buffer) {
	t.Helper()
	for i := 0; i < 6; i++ {
		route := []string{"payments", "telemetry"}[i%2]
		_, err := b.AppendWait(buffer.Record{Route: route, Received: time.Now(), KafkaTopic: route,
			Key: []byte("term-1"), MQTTTopic: "terminals/term-1/" + route, ClientID: "term-1",
			Headers: []buffer.Header{{Key: "gw.test", Value: []byte("h")}}, Payload: []byte(fmt.Sprintf(`{"n":%d}`, i))})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func runCLI(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return out.String() + errb.String(), code
}

// gateway buffer reads a stopped gateway's file directly, and a running
// one's through its admin endpoint.
func TestBufferCommand(t *testing.T) {
	dir := t.TempDir()
	b, err := buffer.Open(buffer.Options{Path: filepath.Join(dir, "buffer.db")})
	if err != nil {
		t.Fatal(err)
	}
	fillBuffer(t, b)
	b.Close()

	out, code := runCLI(t, "buffer", "ls", "--data-dir", dir)
	if code != 0 || !strings.Contains(out, "payments") || !strings.Contains(out, "telemetry") {
		t.Fatalf("ls (code %d):\n%s", code, out)
	}
	out, code = runCLI(t, "buffer", "peek", "--data-dir", dir, "--route", "payments", "-n", "2")
	if code != 0 || strings.Count(out, "seq ") != 2 || !strings.Contains(out, `{\"n\":0}`) || !strings.Contains(out, `gw.test = "h"`) {
		t.Fatalf("peek (code %d):\n%s", code, out)
	}
	out, code = runCLI(t, "buffer", "stats", "--data-dir", dir)
	if code != 0 || !strings.Contains(out, "backlog:   6 messages") || !strings.Contains(out, "epoch:") {
		t.Fatalf("stats (code %d):\n%s", code, out)
	}

	// in use: the file is locked, the admin endpoint answers
	b, err = buffer.Open(buffer.Options{Path: filepath.Join(dir, "buffer.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	srv, err := admin.New("127.0.0.1:0", admin.Sources{Buffer: b, Ready: func() bool { return true },
		Routes: func() []admin.RouteInfo { return nil }, Backlog: b.Stats, Link: func() admin.LinkStatus { return admin.LinkStatus{} }}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close(context.Background())
	out, code = runCLI(t, "buffer", "peek", "--data-dir", dir, "--route", "telemetry", "--admin", srv.Addr())
	if code != 0 || strings.Count(out, "seq ") != 3 || !strings.Contains(out, `{\"n\":1}`) {
		t.Fatalf("peek through the admin endpoint (code %d):\n%s", code, out)
	}
	out, code = runCLI(t, "buffer", "stats", "--data-dir", dir, "--admin", srv.Addr())
	if code != 0 || !strings.Contains(out, "read from: the running gateway") {
		t.Fatalf("stats through the admin endpoint (code %d):\n%s", code, out)
	}
	// unreachable: a clear error, exit 1
	out, code = runCLI(t, "buffer", "ls", "--data-dir", dir, "--admin", "127.0.0.1:1")
	if code != 1 || !strings.Contains(out, "in use by a running gateway") {
		t.Fatalf("in use, endpoint down (code %d):\n%s", code, out)
	}
}
