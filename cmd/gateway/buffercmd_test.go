package main

import (
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
	srv, err := admin.New("127.0.0.1:0", admin.Sources{Buffer: b, Ready: func() bool { return true }, DataDir: dir, Epoch: b.Epoch,
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
	if code != 0 || !strings.Contains(out, "read from: the running gateway") || !strings.Contains(out, "data dir "+dir+", epoch "+b.Epoch()) {
		t.Fatalf("stats through the admin endpoint (code %d):\n%s", code, out)
	}
	// unreachable: a clear error, exit 1
	out, code = runCLI(t, "buffer", "ls", "--data-dir", dir, "--admin", "127.0.0.1:1")
	if code != 1 || !strings.Contains(out, "in use by a running gateway") {
		t.Fatalf("in use, endpoint down (code %d):\n%s", code, out)
	}
}

// Two gateways on one box: a command pointed at one's data dir never prints
// what the other's admin endpoint answers; it says who answered and stops.
func TestBufferAndDeadLetterRefuseAnotherGateway(t *testing.T) {
	mine, theirs := t.TempDir(), t.TempDir()
	serve := func(dir string, fill bool) (*buffer.Buffer, string) {
		b, err := buffer.Open(buffer.Options{Path: filepath.Join(dir, "buffer.db")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		if fill {
			fillBuffer(t, b)
			setAside(t, b, 1)
		}
		srv, err := admin.New("127.0.0.1:0", admin.Sources{Buffer: b, DeadLetters: b, Ready: func() bool { return true }, DataDir: dir, Epoch: b.Epoch,
			GatewayID: "other-gw", Routes: func() []admin.RouteInfo { return nil }, Backlog: b.Stats, Link: func() admin.LinkStatus { return admin.LinkStatus{} }}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close(context.Background()) })
		return b, srv.Addr()
	}
	serve(mine, false)                      // holds mine: locked, its endpoint not asked
	other, otherAddr := serve(theirs, true) // the one that answers
	for _, args := range [][]string{
		{"buffer", "stats", "--data-dir", mine, "--admin", otherAddr},
		{"buffer", "ls", "--data-dir", mine, "--admin", otherAddr},
		{"buffer", "peek", "--data-dir", mine, "--admin", otherAddr, "--route", "payments"},
		{"deadletter", "ls", "--data-dir", mine, "--admin", otherAddr},
		{"deadletter", "drop", "--data-dir", mine, "--admin", otherAddr, "--all"},
	} {
		out, code := runCLI(t, args...)
		if code != exitFailure || !strings.Contains(out, "other-gw") || !strings.Contains(out, "its data dir is "+theirs) ||
			strings.Contains(out, "payments ") || strings.Contains(out, "too_large") || strings.Contains(out, "dropped") {
			t.Errorf("%v: exit %d:\n%s", args, code, out)
		}
	}
	if dl, _ := other.DeadLetters(0); len(dl) != 1 {
		t.Errorf("the other gateway's dead letters were touched: %d left", len(dl))
	}
}
