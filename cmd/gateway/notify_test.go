package main

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgegw/gateway/internal/testkit"
)

// events records, in one order, what the notifier sent and logged.
type events struct {
	mu  sync.Mutex
	all []string
}

func (e *events) add(s string) {
	e.mu.Lock()
	e.all = append(e.all, s)
	e.mu.Unlock()
}

func (e *events) list() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.all...)
}

func (e *events) has(s string) bool {
	for _, x := range e.list() {
		if x == s {
			return true
		}
	}
	return false
}

type eventLog struct{ e *events }

func (h eventLog) Enabled(context.Context, slog.Level) bool { return true }
func (h eventLog) Handle(_ context.Context, r slog.Record) error {
	h.e.add("log: " + r.Message)
	return nil
}
func (h eventLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h eventLog) WithGroup(string) slog.Handler      { return h }

// The watchdog is pinged only while the gateway is ready: READY=1 waits for
// readiness, pings stop while it is lost and resume when it is back, and
// STOPPING=1 comes last. (TestSystemdNotifyAndWatchdog in e2e runs the real
// binary against a real socket.)
func TestWatchdogOnlyWhileReady(t *testing.T) {
	var ev events
	var ready atomic.Bool
	var checks atomic.Int64
	n := &notifier{
		log:      slog.New(eventLog{&ev}),
		ready:    func() bool { checks.Add(1); return ready.Load() },
		poll:     time.Millisecond,
		notify:   func(state string) (bool, error) { ev.add(state); return true, nil },
		watchdog: func() (time.Duration, error) { return 2 * time.Millisecond, nil },
	}
	n.start()
	defer n.stopping()

	waitChecks := func(k int64) {
		from := checks.Load()
		testkit.Eventually(t, 10*time.Second, func() bool { return checks.Load() >= from+k }, "readiness checks")
	}
	waitChecks(5)
	if got := ev.list(); len(got) != 0 {
		t.Fatalf("sent %v before the gateway was ready", got)
	}
	ready.Store(true)
	testkit.Eventually(t, 10*time.Second, func() bool { return strings.Count(strings.Join(ev.list(), "|"), "WATCHDOG=1") >= 3 }, "pings")
	ready.Store(false)
	testkit.Eventually(t, 10*time.Second, func() bool { return ev.has("log: " + notReadyMsg) }, "not-ready log")
	waitChecks(5)
	ready.Store(true)
	testkit.Eventually(t, 10*time.Second, func() bool { return ev.has("log: " + readyAgainMsg) }, "ready-again log")
	n.stopping()

	got := ev.list()
	if got[0] != "READY=1" {
		t.Fatalf("first event %q, want READY=1: %v", got[0], got)
	}
	if got[len(got)-1] != "STOPPING=1" {
		t.Fatalf("last event %q, want STOPPING=1", got[len(got)-1])
	}
	lost := false
	for _, e := range got {
		switch e {
		case "log: " + notReadyMsg:
			lost = true
		case "log: " + readyAgainMsg:
			lost = false
		case "WATCHDOG=1":
			if lost {
				t.Fatalf("pinged the watchdog while not ready: %v", got)
			}
		}
	}
}
