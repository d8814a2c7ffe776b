package main

import (
	"strings"
	"testing"

	"github.com/edgegw/gateway/config"
)

// A component that adds its own "component" to the logger the wiring gave it
// logs the key once; attributes inside a group are not affected.
func TestLogKeysNotRepeated(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		var out lockedBuffer
		ls := newLogSwitch(config.Log{Level: "info", Format: format}, &out)
		lg := ls.logger().With("component", "bridge").With("component", "bridge", "route", "a")
		lg.Info("x")
		lg.WithGroup("g").With("component", "inner").Info("y")
		s := out.take()
		lines := strings.Split(strings.TrimSpace(s), "\n")
		if len(lines) != 2 {
			t.Fatalf("%s: want 2 lines, got %q", format, s)
		}
		if n := strings.Count(lines[0], "component"); n != 1 || !strings.Contains(lines[0], "route") {
			t.Fatalf("%s: component %d times in %q", format, n, lines[0])
		}
		if !strings.Contains(lines[1], "inner") {
			t.Fatalf("%s: grouped attribute lost: %q", format, lines[1])
		}
	}
}
