package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

const manPath = "../../deploy/debian/gateway.1"

// The packaged manual page is `gateway help` as it is now.
func TestManPageIsCurrent(t *testing.T) {
	want := manPage()
	if os.Getenv("UPDATE_MAN") != "" {
		if err := os.WriteFile(manPath, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(manPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("%s is not `gateway help` any more: UPDATE_MAN=1 go test -run TestManPageIsCurrent ./cmd/gateway", manPath)
	}
	for _, line := range strings.Split(strings.TrimPrefix(usage, "usage:\n"), "\n") {
		if strings.Contains(line, "gateway ") && !strings.Contains(string(got), troff(line)) {
			t.Errorf("the man page lacks %q", line)
		}
	}
	// Where man is installed: it formats without warnings.
	if _, err := exec.LookPath("man"); err == nil {
		cmd := exec.Command("man", "--warnings", "-E", "UTF-8", "-l", manPath)
		cmd.Env = append(os.Environ(), "MANWIDTH=80", "MAN_KEEP_STDERR=1")
		out, err := cmd.CombinedOutput()
		if err != nil || strings.Contains(string(out), "warning") {
			t.Errorf("man --warnings: %v\n%s", err, out)
		}
	}
}
