package e2e

import (
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"
)

// The gateway under systemd (Type=notify, WatchdogSec): a real unixgram
// socket as NOTIFY_SOCKET receives READY=1 only once /readyz answers 200,
// then WATCHDOG=1 pings at half of WATCHDOG_USEC, and STOPPING=1 on SIGTERM
// before the process exits 0.
func TestSystemdNotifyAndWatchdog(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 1000)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	next := func(what string) string {
		t.Helper()
		select {
		case m, ok := <-msgs:
			if !ok {
				t.Fatalf("socket closed waiting for %s", what)
			}
			return m
		case <-time.After(30 * time.Second):
			t.Fatalf("no notification within 30s waiting for %s", what)
		}
		return ""
	}

	g := newGateway(t, []string{"127.0.0.1:1"}, "") // Kafka down: still ready
	g.env = []string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=400000"}
	g.start()

	if m := next("READY=1"); m != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", m)
	}
	resp, err := http.Get("http://" + g.admin + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("READY=1 sent while /readyz answers %d", resp.StatusCode)
	}
	for i := 0; i < 3; i++ {
		if m := next("WATCHDOG=1"); m != "WATCHDOG=1" {
			t.Fatalf("notification %q, want WATCHDOG=1", m)
		}
	}
	if code := g.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
	// What was sent before the exit is in the socket; the reader may lag.
	for {
		m := next("STOPPING=1")
		if m == "STOPPING=1" {
			break
		}
		if m != "WATCHDOG=1" {
			t.Fatalf("after SIGTERM got %q, want WATCHDOG=1 pings then STOPPING=1", m)
		}
	}
}
