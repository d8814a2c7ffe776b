// Package e2e tests the real gateway binary from the outside: real MQTT
// clients over TCP, a real Kafka-protocol cluster (kfake), real files, real
// signals (SIGTERM, SIGKILL).
package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/edgegw/gateway/internal/testkit"
)

var gatewayBin string

func TestMain(m *testing.M) {
	// Never act on a gateway installed on this machine: the CLI's installed
	// config and environment file are moved out of the way.
	os.Setenv("GATEWAY_CONFIG", "/nonexistent/gateway-e2e/config.yaml")
	os.Setenv("GATEWAY_ENV_FILE", "/nonexistent/gateway-e2e/environment")
	dir, err := os.MkdirTemp("", "gateway-e2e-")
	if err != nil {
		panic(err)
	}
	gatewayBin = filepath.Join(dir, "gateway")
	args := []string{"build", "-o", gatewayBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "../cmd/gateway")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building the gateway failed:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// gatewayProc is one gateway process with fixed ports, so it can be killed
// and started again on the same data dir and addresses.
type gatewayProc struct {
	t        *testing.T
	dir      string
	cfgPath  string
	mqttAddr string
	admin    string
	cmd      *exec.Cmd
	logs     *syncBuffer
	exited   chan struct{}
	env      []string // extra environment, e.g. GATEWAY_* overrides
	token    string   // admin bearer token, when the config sets admin.token_file
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

const routesYAML = `
routes:
  - {name: payments, match: "terminals/+/payments/#", kafka_topic: payments, priority: 0}
  - {name: telemetry, match: "terminals/+/telemetry/#", kafka_topic: telemetry, priority: 5}
`

// newGateway writes a config for brokers and returns an unstarted process.
func newGateway(t *testing.T, brokers []string, extraYAML string) *gatewayProc {
	t.Helper()
	dir := t.TempDir()
	g := &gatewayProc{
		t:        t,
		dir:      dir,
		cfgPath:  filepath.Join(dir, "gateway.yaml"),
		mqttAddr: fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t)),
		admin:    fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t)),
	}
	cfg := fmt.Sprintf(`id: e2e-gw
data_dir: %q
mqtt: {address: %q}
kafka: {brokers: [%s]}
admin: {address: %q}
log: {level: debug}
`, filepath.Join(dir, "data"), g.mqttAddr, quoteList(brokers), g.admin) + routesYAML + extraYAML
	if err := os.WriteFile(g.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		g.stop()
		if t.Failed() {
			t.Logf("gateway log (tail):\n%s", tail(g.logs, 60))
		}
	})
	return g
}

func quoteList(s []string) string {
	q := make([]string, len(s))
	for i, v := range s {
		q[i] = strconv.Quote(v)
	}
	return strings.Join(q, ", ")
}

func tail(b *syncBuffer, n int) string {
	if b == nil {
		return ""
	}
	lines := strings.Split(b.String(), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// start runs the process and waits until /readyz answers 200.
func (g *gatewayProc) start() {
	g.t.Helper()
	if g.logs == nil {
		g.logs = &syncBuffer{}
	}
	g.cmd = exec.Command(gatewayBin, "run", "--config", g.cfgPath)
	g.cmd.Env = append(os.Environ(), g.env...)
	g.cmd.Stdout, g.cmd.Stderr = g.logs, g.logs
	if err := g.cmd.Start(); err != nil {
		g.t.Fatal(err)
	}
	g.exited = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(g.cmd, g.exited)
	testkit.Eventually(g.t, 30*time.Second, func() bool {
		select {
		case <-g.exited:
			g.t.Fatalf("gateway exited during start:\n%s", tail(g.logs, 40))
		default:
		}
		req, _ := http.NewRequest(http.MethodGet, "http://"+g.admin+"/readyz", nil)
		if g.token != "" {
			req.Header.Set("Authorization", "Bearer "+g.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, "gateway ready")
}

// kill sends SIGKILL: no shutdown code runs.
func (g *gatewayProc) kill() {
	if g.cmd == nil {
		return
	}
	g.cmd.Process.Signal(syscall.SIGKILL)
	<-g.exited
	g.cmd = nil
}

// stop sends SIGTERM and returns the exit code.
func (g *gatewayProc) stop() int {
	if g.cmd == nil {
		return -1
	}
	g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.exited:
	case <-time.After(30 * time.Second):
		g.t.Errorf("gateway did not stop within 30s of SIGTERM")
		g.cmd.Process.Kill()
		<-g.exited
	}
	code := g.cmd.ProcessState.ExitCode()
	g.cmd = nil
	return code
}

func mqttClient(t *testing.T, addr, id string, autoReconnect bool) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).
		SetAutoReconnect(autoReconnect).SetConnectRetry(autoReconnect).
		SetConnectRetryInterval(100 * time.Millisecond).SetMaxReconnectInterval(500 * time.Millisecond).
		SetOrderMatters(false).SetWriteTimeout(5 * time.Second)
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

func header(r *kgo.Record, key string) (string, bool) {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

// payload format shared by the tests: "<client>/<index>".
func parsePayload(t *testing.T, v []byte) (string, int) {
	t.Helper()
	s := string(v)
	i := strings.LastIndexByte(s, '/')
	n, err := strconv.Atoi(s[i+1:])
	if i < 0 || err != nil {
		t.Fatalf("unexpected payload %q", s)
	}
	return s[:i], n
}

// checkOrder verifies that, per client, the first occurrences of its
// messages in Kafka come in publish order, and returns how many records were
// duplicates.
func checkOrder(t *testing.T, recs []*kgo.Record) (dups int) {
	t.Helper()
	// records come per partition in offset order; one client's records share
	// a key and so a partition
	seen := map[string]bool{}
	last := map[string]int{}
	for _, r := range recs {
		client, n := parsePayload(t, r.Value)
		id := r.Topic + "|" + string(r.Value)
		if seen[id] {
			dups++
			continue
		}
		seen[id] = true
		k := r.Topic + "|" + client
		if prev, ok := last[k]; ok && n <= prev {
			t.Fatalf("order broken for %s on %s: %d after %d", client, r.Topic, n, prev)
		}
		last[k] = n
	}
	return dups
}
