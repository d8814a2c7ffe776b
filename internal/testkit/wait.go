// Package testkit holds helpers shared by the gateway's tests: an in-process
// Kafka-protocol cluster (kfake), a TCP proxy that can refuse or black-hole
// connections, free ports, and polling with a deadline instead of sleeps.
//
// It imports kfake, so only _test.go files, cmd/devkafka and bench programs
// may import it; the gateway binary must never link it.
package testkit

import (
	"net"
	"testing"
	"time"
)

// pollInterval is how often Eventually re-checks its condition: short enough
// not to slow tests, long enough not to spin a core.
const pollInterval = 10 * time.Millisecond

// Eventually polls cond until it returns true, failing the test with the
// formatted message if timeout passes first. It is the only way tests here
// wait for something: never a fixed sleep.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	if !Poll(timeout, cond) {
		t.Fatalf("after %v: "+format, append([]any{timeout}, args...)...)
	}
}

// Poll is Eventually without a test: it reports whether cond became true
// before timeout.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pollInterval)
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. Prefer
// listening on 127.0.0.1:0 directly; use this only when a port must be known
// before anything listens on it (a server that comes up later).
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testkit: free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
