package failpoint

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// A process built with the tag dies at the armed hit and not before; without
// the tag Hit does nothing.
func TestHitKillsAtTheArmedHit(t *testing.T) {
	if os.Getenv("FAILPOINT_CHILD") != "" {
		Hit("other")
		Hit("x")
		os.Stderr.WriteString("after first\n")
		Hit("x")
		os.Stderr.WriteString("after second\n")
		os.Exit(0)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHitKillsAtTheArmedHit$")
	cmd.Env = append(os.Environ(), "FAILPOINT_CHILD=1", "GATEWAY_FAILPOINT=x@2")
	out, err := cmd.CombinedOutput()
	if !Enabled {
		if err != nil || !strings.Contains(string(out), "after second") {
			t.Fatalf("without the tag Hit must do nothing: %v\n%s", err, out)
		}
		return
	}
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child not killed: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "after first") || strings.Contains(string(out), "after second") {
		t.Fatalf("killed at the wrong hit:\n%s", out)
	}
}
