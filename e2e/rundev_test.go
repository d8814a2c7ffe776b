package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgegw/gateway/internal/testkit"
)

// `make run` (scripts/run-dev.sh) with KAFKA_PORT, MQTT_PORT and ADMIN_PORT
// moved: the gateway dials the Kafka it started, the banner prints the
// ports in use, `gateway status` finds the gateway by GATEWAY_ADMIN_ADDRESS,
// and a Ctrl-C with the output going through a pipe (make run | tee) stops
// the gateway, payproc and devkafka.
func TestRunDevMovesPortsAndStopsEverything(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("needs bash")
	}
	bin := t.TempDir()
	for _, c := range []string{"devkafka", "payproc"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(bin, c), "../cmd/"+c).CombinedOutput()
		if err != nil {
			t.Fatalf("building %s: %v\n%s", c, err, out)
		}
	}
	if data, err := os.ReadFile(gatewayBin); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(filepath.Join(bin, "gateway"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	kafkaPort, mqttPort, adminPort := testkit.FreePort(t), testkit.FreePort(t), testkit.FreePort(t)
	admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
	state := t.TempDir()
	// A terminal's foreground job: bash, the script and the reader of the
	// pipe in one process group, which Ctrl-C signals as a whole.
	cmd := exec.Command("bash", "-c", "scripts/run-dev.sh 2>&1 | cat")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "BIN="+bin, "DEVKAFKA_DATA="+filepath.Join(state, "devkafka"),
		"GATEWAY_DATA_DIR="+filepath.Join(state, "data"),
		"KAFKA_PORT="+strconv.Itoa(kafkaPort), "MQTT_PORT="+strconv.Itoa(mqttPort), "ADMIN_PORT="+strconv.Itoa(adminPort))
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	var pids []int
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		<-done
		if t.Failed() {
			t.Logf("make run output:\n%s", out.String())
		}
	})

	var st statusDoc
	testkit.Eventually(t, 90*time.Second, func() bool {
		o, code := cli(t, []string{"GATEWAY_ADMIN_ADDRESS=" + admin}, "status")
		return code == 0 && strings.Contains(o, "link: up")
	}, "the gateway up, its link to the devkafka on the moved port up")
	st = fetchStatus(t, admin)
	if st.PID == 0 {
		t.Fatalf("/status has no pid")
	}
	banner := out.String()
	for _, want := range []string{
		fmt.Sprintf("Kafka (devkafka) on 127.0.0.1:%d", kafkaPort),
		fmt.Sprintf("MQTT on port %d", mqttPort),
		fmt.Sprintf("mosquitto_pub -h 127.0.0.1 -p %d ", mqttPort),
		fmt.Sprintf("gateway status --admin %s", admin),
	} {
		if !strings.Contains(banner, want) {
			t.Errorf("the banner lacks %q", want)
		}
	}
	if strings.Contains(banner, ":9092") || strings.Contains(banner, "-p 1883") || strings.Contains(banner, ":9100") {
		t.Errorf("the banner prints a default port")
	}
	pids = append(pids, st.PID)
	for _, re := range []string{`(?m)^  kill (\d+)$`, `payproc, pid (\d+)`} {
		m := regexp.MustCompile(re).FindStringSubmatch(banner)
		if m == nil {
			t.Fatalf("no pid for %s in the banner", re)
		}
		pid, _ := strconv.Atoi(m[1])
		pids = append(pids, pid)
	}

	// Ctrl-C
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 90*time.Second, func() bool {
		for _, pid := range pids {
			if alive(pid) {
				return false
			}
		}
		return true
	}, "gateway, devkafka and payproc stopped")
}

// alive reports whether pid runs (a zombie waiting for its parent does not).
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(data, ')')
	return i > 0 && i+2 < len(data) && data[i+2] != 'Z'
}
