package main

import (
	"bytes"
	"strings"
	"sync"
	"testing"

	"github.com/edgegw/gateway/config"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) take() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.b.String()
	l.b.Reset()
	return s
}

// A reload changes the level and the format of loggers already handed out,
// including ones derived with With and WithGroup.
func TestLogSwitch(t *testing.T) {
	var out lockedBuffer
	ls := newLogSwitch(config.Log{Level: "info", Format: "text"}, &out)
	lg := ls.logger().With("component", "bridge").WithGroup("g")
	lg.Debug("hidden")
	lg.Info("first", "k", 1)
	if s := out.take(); strings.Contains(s, "hidden") || !strings.Contains(s, "component=bridge") || !strings.Contains(s, "g.k=1") {
		t.Fatalf("text at info: %q", s)
	}
	ls.set(config.Log{Level: "debug", Format: "json"})
	lg.Debug("shown", "k", 2)
	if s := out.take(); !strings.Contains(s, `"msg":"shown"`) || !strings.Contains(s, `"component":"bridge"`) || !strings.Contains(s, `"g":{"k":2}`) {
		t.Fatalf("json at debug: %q", s)
	}
	ls.set(config.Log{Level: "error", Format: "json"})
	lg.Warn("dropped")
	if s := out.take(); s != "" {
		t.Fatalf("warn logged at error level: %q", s)
	}
	// Concurrent use while switching (run with -race).
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 200 {
				lg.Error("x", "i", i, "j", j)
			}
		}()
	}
	for j := range 50 {
		f := "text"
		if j%2 == 0 {
			f = "json"
		}
		ls.set(config.Log{Level: "info", Format: f})
	}
	wg.Wait()
	if n := strings.Count(out.take(), "\n"); n != 800 {
		t.Errorf("%d lines, want 800", n)
	}
}

func TestConfigFlag(t *testing.T) {
	if p := configFlag([]string{"--config", "/etc/gw.yaml"}); p != "/etc/gw.yaml" {
		t.Errorf("configFlag %q", p)
	}
}
