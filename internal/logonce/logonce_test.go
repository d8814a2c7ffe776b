package logonce

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestWarnOncePerKey(t *testing.T) {
	var buf bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}), nil))
	var s Set
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); s.Warn(log, "a", "first kind"); s.Warn(log, "b", "second kind") }()
	}
	wg.Wait()
	out := buf.String()
	if strings.Count(out, "first kind") != 1 || strings.Count(out, "second kind") != 1 {
		t.Fatalf("want each message once:\n%s", out)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestEveryLimitsPerKeyAndCountsSkipped(t *testing.T) {
	e := Every{Interval: time.Minute, MaxKeys: 4}
	t0 := time.Unix(1000, 0)
	if s, ok := e.Allow("a", t0); !ok || s != 0 {
		t.Fatal("first a refused")
	}
	for i := 0; i < 5; i++ {
		if _, ok := e.Allow("a", t0.Add(time.Second)); ok {
			t.Fatal("a allowed again within the interval")
		}
	}
	if _, ok := e.Allow("b", t0.Add(time.Second)); !ok {
		t.Fatal("b held back by a")
	}
	if s, ok := e.Allow("a", t0.Add(61*time.Second)); !ok || s != 5 {
		t.Fatalf("a after the interval: ok %v skipped %d, want true 5", ok, s)
	}
	// many new keys: bounded
	for i := 0; i < 100; i++ {
		e.Allow(fmt.Sprint("k", i), t0.Add(time.Duration(100+i)*time.Second))
	}
	if n := len(e.keys); n > 4 {
		t.Fatalf("%d keys remembered, want at most 4", n)
	}
}
