package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(gatewayBin, args...).CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		}
		t.Fatal(err)
	}
	return string(out), 0
}

// Every invalid config exits 2 with a message naming the key, for check and
// for run alike; nothing panics.
func TestInvalidConfigsExit2NamingTheKey(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]string{
		"routes[1].max_age":     "kafka: {brokers: [a:1]}\nroutes: [{name: a, match: a, kafka_topic: t}, {name: b, match: b, kafka_topic: t, max_age: soon}]\n",
		"kafka.brokers":         "id: x\n",
		"mqtt.adress":           "kafka: {brokers: [a:1]}\nmqtt: {adress: ':1'}\n",
		"buffer.max_disk_bytes": "kafka: {brokers: [a:1]}\nbuffer: {max_disk_bytes: big}\n",
		"routes[0].on_full":     "kafka: {brokers: [a:1]}\nroutes: [{name: a, match: a, kafka_topic: t, on_full: maybe}]\n",
		"yaml":                  "kafka: {brokers: [a:1]\n",
	}
	i := 0
	for key, yaml := range cases {
		i++
		path := filepath.Join(dir, "bad"+string(rune('a'+i))+".yaml")
		os.WriteFile(path, []byte(yaml), 0o600)
		for _, cmd := range []string{"check", "run"} {
			out, code := runCLI(t, cmd, "--config", path)
			if code != 2 || !strings.Contains(out, key) || strings.Contains(out, "panic") {
				t.Errorf("%s with bad %s: exit %d, output %q", cmd, key, code, out)
			}
		}
	}
	if out, code := runCLI(t, "check", "--config", filepath.Join(dir, "missing.yaml")); code != 2 {
		t.Errorf("missing file: exit %d %q", code, out)
	}
	if out, code := runCLI(t, "run"); code != 2 || !strings.Contains(out, "--config") {
		t.Errorf("run without --config: exit %d %q", code, out)
	}
	if _, code := runCLI(t, "frobnicate"); code != 2 {
		t.Errorf("unknown command: exit %d", code)
	}
	if _, code := runCLI(t); code != 2 {
		t.Errorf("no command: exit %d", code)
	}
}

func TestCheckVersionStatus(t *testing.T) {
	if out, code := runCLI(t, "check", "--config", "../config.example.yaml"); code != 0 || strings.TrimSpace(out) != "ok" {
		t.Fatalf("check example: %d %q", code, out)
	}
	out, code := runCLI(t, "version")
	if code != 0 || !strings.Contains(out, "go1.") || !strings.Contains(out, "/") {
		t.Fatalf("version: %d %q", code, out)
	}
	if out, code := runCLI(t, "status", "--admin", "127.0.0.1:1"); code != 1 {
		t.Fatalf("status against nothing: exit %d %q", code, out)
	}
}
