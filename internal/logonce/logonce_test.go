package logonce

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
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
