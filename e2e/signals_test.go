package e2e

import (
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/edgegw/gateway/internal/testkit"
)

// A SIGTERM the moment /readyz first answers 200 (systemd or a supervisor
// stopping a box that just started) stops the gateway cleanly. /readyz
// answers while the config watcher and the fleet agent still start; the
// signal used to end the process with the default action then (exit by
// signal, no clean stop of the buffer).
func TestSigtermAsSoonAsReady(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry", "gateway.status", "gateway.config"))
	g := newGateway(t, k.Addrs, `
fleet: {status_topic: gateway.status, status_interval: 1s}
`)
	for i := 0; i < 5; i++ {
		g.logs = &syncBuffer{}
		cmd := exec.Command(gatewayBin, "run", "--config", g.cfgPath)
		cmd.Env = os.Environ()
		cmd.Stdout, cmd.Stderr = g.logs, g.logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		deadline := time.Now().Add(30 * time.Second)
		for {
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatalf("start %d: never ready:\n%s", i, tail(g.logs, 40))
			}
			resp, err := http.Get("http://" + g.admin + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			time.Sleep(time.Millisecond)
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Fatalf("start %d: no exit within 30 s of SIGTERM", i)
		}
		if code := cmd.ProcessState.ExitCode(); code != 0 {
			t.Fatalf("start %d: SIGTERM right after ready: exit %d (%v), want 0:\n%s", i, code, cmd.ProcessState, tail(g.logs, 40))
		}
	}
}
