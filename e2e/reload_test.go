package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/gateway/internal/testkit"
)

// rewriteConfig replaces old with new in the gateway's config file the way
// editors and deploy tools do: a new file renamed over the old one.
func (g *gatewayProc) rewriteConfig(old, new string) {
	g.t.Helper()
	data, err := os.ReadFile(g.cfgPath)
	if err != nil {
		g.t.Fatal(err)
	}
	if !strings.Contains(string(data), old) {
		g.t.Fatalf("config has no %q", old)
	}
	tmp := filepath.Join(filepath.Dir(g.cfgPath), ".gateway.yaml.tmp")
	if err := os.WriteFile(tmp, []byte(strings.Replace(string(data), old, new, 1)), 0o600); err != nil {
		g.t.Fatal(err)
	}
	if err := os.Rename(tmp, g.cfgPath); err != nil {
		g.t.Fatal(err)
	}
}

// runningConfig reads GET /config.
func (g *gatewayProc) runningConfig() map[string]string {
	g.t.Helper()
	resp, err := http.Get("http://" + g.admin + "/config")
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		g.t.Fatalf("GET /config: %v", err)
	}
	return m
}

// metric reads one unlabelled sample from GET /metrics (-1 if absent).
func (g *gatewayProc) metric(name string) float64 {
	g.t.Helper()
	resp, err := http.Get("http://" + g.admin + "/metrics")
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// A route's Kafka topic changes in the file while a terminal publishes:
// the gateway picks it up without a restart, messages after the change go
// to the new topic, those before it to the old one, none is lost and the
// client's order holds across the switch.
func TestReloadRouteTopicWhilePublishing(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(3, "payments", "telemetry", "telemetry.v2"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()
	// one client publishing "term-r-0/<i>", one at a time: acknowledged are 0..n-1
	p := startPublishers(t, g.mqttAddr, "term-r", "telemetry", 1, false)
	p.waitMore(t, 200, "publishes before the reload")

	g.rewriteConfig("kafka_topic: telemetry,", "kafka_topic: telemetry.v2,")
	testkit.Eventually(t, 30*time.Second, func() bool { return g.runningConfig()["routes[1].kafka_topic"] == "telemetry.v2" }, "reload not applied")
	// Messages 0..applied-1 are acknowledged; message applied may have been
	// in flight during the switch; every later one was published after it.
	applied := p.n.Load()
	p.waitMore(t, 200, "publishes after the reload")
	p.halt()
	total := int(p.n.Load())

	cons := testkit.Consume(t, kafka.Addrs, []string{"telemetry", "telemetry.v2"})
	recs := cons.WaitN(t, total, 60*time.Second)
	maxOld, minNew := -1, total
	seen := map[int]bool{}
	for _, r := range recs {
		client, n := parsePayload(t, r.Value)
		if client != "term-r-0" {
			t.Fatalf("unexpected record %q", r.Value)
		}
		seen[n] = true
		switch r.Topic {
		case "telemetry":
			maxOld = max(maxOld, n)
		case "telemetry.v2":
			minNew = min(minNew, n)
		}
	}
	for i := 0; i < total; i++ {
		if !seen[i] {
			t.Errorf("message %d was acknowledged but is in neither topic", i)
		}
	}
	if maxOld >= minNew {
		t.Errorf("topics interleave: old topic up to %d, new topic from %d", maxOld, minNew)
	}
	if int64(minNew) > applied+1 {
		t.Errorf("message %d, published after the reload was visible, went to the old topic", applied+1)
	}
	if maxOld < 199 {
		t.Errorf("messages before the reload missing from the old topic (up to %d)", maxOld)
	}
	if dups := checkOrder(t, recs); dups != 0 {
		t.Errorf("%d duplicates", dups)
	}
	if n := strings.Count(g.logs.String(), "config reloaded"); n != 1 {
		t.Errorf("%d 'config reloaded' log lines, want 1", n)
	}
	if v := g.metric("gateway_config_reloads_total"); v != 1 {
		t.Errorf("gateway_config_reloads_total %v, want 1", v)
	}
	t.Logf("%d messages: 0..%d to telemetry, %d.. to telemetry.v2 (reload seen at %d)", total, maxOld, minNew, applied)
}

// An invalid file is refused: nothing changes, the failure is logged once
// and counted on /metrics, and the old config keeps working; a later valid
// file is applied; a change of a restart-only key is logged, not applied.
func TestReloadInvalidFileKeepsRunningConfig(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(3, "payments", "telemetry", "telemetry.v2"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()
	before := g.runningConfig()
	if v := g.metric("gateway_config_reload_failures_total"); v != 0 {
		t.Fatalf("failures at start: %v", v)
	}

	// Valid YAML, one bad value and a topic change: all or nothing.
	g.rewriteConfig("kafka_topic: telemetry, priority: 5}", "kafka_topic: telemetry.v2, priority: 5, max_age: forever}")
	testkit.Eventually(t, 30*time.Second, func() bool { return g.metric("gateway_config_reload_failures_total") == 1 }, "failure not counted")
	if v := g.metric("gateway_config_last_reload_successful"); v != 0 {
		t.Errorf("gateway_config_last_reload_successful %v after a refused file", v)
	}
	if after := g.runningConfig(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("running config changed by an invalid file")
	}
	cl := mqttClient(t, g.mqttAddr, "term-i", false)
	for i := 0; i < 20; i++ {
		tok := cl.Publish("terminals/term-i/telemetry/x", 1, false, fmt.Sprintf("term-i/%d", i))
		if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("publish with an invalid file on disk: %v", tok.Error())
		}
	}
	recs := testkit.Consume(t, kafka.Addrs, []string{"telemetry"}).WaitN(t, 20, 60*time.Second)
	for _, r := range recs {
		if r.Topic != "telemetry" {
			t.Fatalf("record on %s", r.Topic)
		}
	}
	logs := g.logs.String()
	if n := strings.Count(logs, "does not validate"); n != 1 {
		t.Errorf("refusal logged %d times, want once", n)
	}
	if !strings.Contains(logs, "routes[1].max_age") {
		t.Errorf("refusal does not name the key:\n%s", tail(g.logs, 20))
	}

	// Fixed, plus a restart-only change: the route applies, the address
	// does not.
	g.rewriteConfig("max_age: forever}", "max_age: 1h}")
	g.rewriteConfig("id: e2e-gw", "id: e2e-gw-renamed")
	g.rewriteConfig("log: {level: debug}", "log: {level: debug}\nbuffer: {max_disk_bytes: 512MiB}\nlink: {max_bytes_per_second: 1MiB}")
	testkit.Eventually(t, 30*time.Second, func() bool {
		c := g.runningConfig()
		return c["routes[1].kafka_topic"] == "telemetry.v2" && c["routes[1].max_age"] == "1h0m0s" && c["link.max_bytes_per_second"] == "1048576"
	}, "valid file not applied")
	// The parts reached the components: the drain's cap, the disk budget.
	if v := g.metric("gateway_bridge_max_bytes_per_second"); v != 1<<20 {
		t.Errorf("bridge cap after reload: %v", v)
	}
	if v := g.metric("gateway_disk_budget_bytes"); v != 512<<20 {
		t.Errorf("disk budget after reload: %v", v)
	}
	testkit.Eventually(t, 30*time.Second, func() bool { return strings.Contains(g.logs.String(), "need a restart") }, "restart-only change not logged")
	if id := g.runningConfig()["id"]; id != "e2e-gw" {
		t.Errorf("id changed at run time to %q", id)
	}
	if v := g.metric("gateway_config_last_reload_successful"); v != 1 {
		t.Errorf("gateway_config_last_reload_successful %v after a valid file", v)
	}
	if v := g.metric("gateway_config_reload_failures_total"); v != 1 {
		t.Errorf("failures %v, want still 1", v)
	}
}

// `gateway check --config FILE --against ADDR` prints one line per key the
// file would change, marked hot reload or needs restart.
func TestCheckAgainstRunningGateway(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(3, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()

	out, code := runCLI(t, "check", "--config", g.cfgPath, "--against", g.admin)
	if code != 0 || !strings.Contains(out, "no changes") {
		t.Fatalf("same file: exit %d:\n%s", code, out)
	}

	data, _ := os.ReadFile(g.cfgPath)
	next := strings.Replace(string(data), "kafka_topic: telemetry,", "kafka_topic: telemetry.v2,", 1)
	next = strings.Replace(next, "log: {level: debug}", "log: {level: info}", 1)
	next = strings.Replace(next, g.mqttAddr, "127.0.0.1:1", 1)
	next += "  - {name: bulk, match: \"terminals/+/bulk/#\", kafka_topic: bulk, priority: 9}\n"
	path := filepath.Join(t.TempDir(), "next.yaml")
	os.WriteFile(path, []byte(next), 0o600)
	out, code = runCLI(t, "check", "--config", path, "--against", g.admin)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	for _, want := range []string{
		`routes[1].kafka_topic: "telemetry" -> "telemetry.v2" (hot reload)`,
		`log.level: "debug" -> "info" (hot reload)`,
		`mqtt.address: "` + g.mqttAddr + `" -> "127.0.0.1:1" (needs restart)`,
		`routes[2].name: (none) -> "bulk" (hot reload)`,
		`ok: 11 changes: 10 hot reload, 1 need a restart`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// A dry run changes nothing.
	if c := g.runningConfig(); c["routes[1].kafka_topic"] != "telemetry" {
		t.Errorf("check changed the running gateway")
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte(strings.Replace(string(data), "priority: 5", "priority: high", 1)), 0o600)
	if out, code := runCLI(t, "check", "--config", bad, "--against", g.admin); code != 2 || !strings.Contains(out, "routes[1].priority") {
		t.Errorf("invalid file: exit %d:\n%s", code, out)
	}
	if out, code := runCLI(t, "check", "--config", path, "--against", fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t))); code != 1 {
		t.Errorf("unreachable gateway: exit %d:\n%s", code, out)
	}
}

// Messages buffered while Kafka is down keep the Kafka topic decided when
// they arrived (DESIGN invariant 7); those after the reload take the new one.
func TestReloadBacklogKeepsItsTopic(t *testing.T) {
	port := testkit.FreePort(t)
	g := newGateway(t, []string{fmt.Sprintf("127.0.0.1:%d", port)}, "")
	g.start()
	cl := mqttClient(t, g.mqttAddr, "term-b", false)
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			tok := cl.Publish("terminals/term-b/telemetry/x", 1, false, fmt.Sprintf("term-b/%d", i))
			if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
				t.Fatalf("publish %d: %v", i, tok.Error())
			}
		}
	}
	publish(0, 100)
	g.rewriteConfig("kafka_topic: telemetry,", "kafka_topic: telemetry.v2,")
	testkit.Eventually(t, 30*time.Second, func() bool { return g.runningConfig()["routes[1].kafka_topic"] == "telemetry.v2" }, "reload not applied")
	publish(100, 200)

	kafka := testkit.Kafka(t, testkit.Ports(port), testkit.Topics(3, "payments", "telemetry", "telemetry.v2"))
	recs := testkit.Consume(t, kafka.Addrs, []string{"telemetry", "telemetry.v2"}).WaitN(t, 200, 90*time.Second)
	for _, r := range recs {
		_, n := parsePayload(t, r.Value)
		want := "telemetry"
		if n >= 100 {
			want = "telemetry.v2"
		}
		if r.Topic != want {
			t.Errorf("message %d on %s, want %s", n, r.Topic, want)
		}
		if string(r.Key) != "term-b" {
			t.Errorf("message %d key %q", n, r.Key)
		}
	}
	if dups := checkOrder(t, recs); len(recs)-dups != 200 {
		t.Errorf("%d distinct records, want 200", len(recs)-dups)
	}
}
