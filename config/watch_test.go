package config

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

type watchEvents struct {
	mu   sync.Mutex
	cfgs []*Config
	errs []error
}

func (e *watchEvents) add(c *Config, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err != nil {
		e.errs = append(e.errs, err)
		return
	}
	e.cfgs = append(e.cfgs, c)
}

func (e *watchEvents) counts() (int, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.cfgs), len(e.errs)
}

func (e *watchEvents) lastTopic() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.cfgs) == 0 {
		return ""
	}
	return e.cfgs[len(e.cfgs)-1].Routes[0].KafkaTopic
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func watchYAML(topic string) string {
	return "kafka: {brokers: [a:1]}\nroutes: [{name: r, match: a/#, kafka_topic: " + topic + "}]\n"
}

// Real files, real fsnotify: in-place writes, rename-over (editors, deploy
// tools), a rewrite with the same content (ignored), an invalid file
// (reported as an error), a file briefly missing.
func TestWatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "gateway.yaml")
	if err := os.WriteFile(path, []byte(watchYAML("t0")), 0o600); err != nil {
		t.Fatal(err)
	}
	var ev watchEvents
	w, err := Watch(path, WatchOptions{Debounce: 20 * time.Millisecond}, ev.add)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	os.WriteFile(path, []byte(watchYAML("t1")), 0o600)
	waitFor(t, "in-place write", func() bool { return ev.lastTopic() == "t1" })

	tmp := filepath.Join(dir, ".gateway.yaml.swp")
	os.WriteFile(tmp, []byte(watchYAML("t2")), 0o600)
	os.Rename(tmp, path)
	waitFor(t, "rename over", func() bool { return ev.lastTopic() == "t2" })

	// Same content again, then something new: exactly one more call.
	n, _ := ev.counts()
	os.WriteFile(path, []byte(watchYAML("t2")), 0o600)
	os.WriteFile(filepath.Join(dir, "other.yaml"), []byte("x"), 0o600)
	time.Sleep(100 * time.Millisecond) // give a wrong extra call the chance to happen
	os.WriteFile(path, []byte(watchYAML("t3")), 0o600)
	waitFor(t, "write after a no-op write", func() bool { return ev.lastTopic() == "t3" })
	if m, _ := ev.counts(); m != n+1 {
		t.Errorf("%d calls for one change", m-n)
	}

	os.WriteFile(path, []byte(strings.Replace(watchYAML("t4"), "kafka_topic", "kafka_topik", 1)), 0o600)
	waitFor(t, "invalid file", func() bool { _, e := ev.counts(); return e == 1 })
	ev.mu.Lock()
	if !strings.Contains(ev.errs[0].Error(), "kafka_topik") {
		t.Errorf("error does not name the key: %v", ev.errs[0])
	}
	ev.mu.Unlock()

	// Removed, then back (a delete-and-create deploy).
	os.Remove(path)
	time.Sleep(50 * time.Millisecond) // the file stays missing past the debounce
	os.WriteFile(path, []byte(watchYAML("t5")), 0o600)
	waitFor(t, "file back after removal", func() bool { return ev.lastTopic() == "t5" })
	if _, e := ev.counts(); e != 1 {
		t.Errorf("a missing file was reported as %d errors", e-1)
	}

	if err := w.Close(); err != nil {
		t.Error(err)
	}
	w.Close()
	os.WriteFile(path, []byte(watchYAML("t6")), 0o600)
	time.Sleep(100 * time.Millisecond) // nothing may arrive after Close
	if ev.lastTopic() != "t5" {
		t.Error("callback after Close")
	}
}

func TestWatchValidates(t *testing.T) {
	if _, err := Watch(filepath.Join(t.TempDir(), "missing.yaml"), WatchOptions{}, func(*Config, error) {}); err == nil {
		t.Error("watching a missing file accepted")
	}
	if _, err := Watch("x", WatchOptions{}, nil); err == nil {
		t.Error("nil callback accepted")
	}
}

func TestDiffAndRedaction(t *testing.T) {
	base := "kafka: {brokers: [a:1], sasl: {mechanism: PLAIN, username: u, password: s3cret}}\n" +
		"routes: [{name: r, match: a/#, kafka_topic: t}]\n"
	old, err := Parse([]byte(base), nil)
	if err != nil {
		t.Fatal(err)
	}
	flat := Flatten(old)
	for k, v := range flat {
		if strings.Contains(v, "s3cret") {
			t.Errorf("%s leaks the password", k)
		}
	}
	if flat["kafka.sasl.password"] != Redacted {
		t.Errorf("password shown as %q", flat["kafka.sasl.password"])
	}
	next, err := Parse([]byte(strings.Replace(base, "s3cret", "other", 1)+
		"link: {windows: [\"22:00-06:00\"]}\nmqtt: {address: ':1884'}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range Diff(old, next) {
		got = append(got, c.String())
	}
	want := []string{
		`link.windows: "" -> "22:00-06:00" (hot reload)`,
		`mqtt.address: ":1883" -> ":1884" (needs restart)`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("diff:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	eff := WithRestartKeys(next, old)
	if eff.MQTT.Address != ":1883" || len(eff.Link.Windows) != 1 {
		t.Errorf("effective config: mqtt %q windows %v", eff.MQTT.Address, eff.Link.Windows)
	}
	for _, k := range []string{"routes[3].max_age", "unrouted", "buffer.max_disk_bytes", "link.windows", "acl.publish", "log.level"} {
		if !HotReloadable(k) {
			t.Errorf("%s should be hot", k)
		}
	}
	for _, k := range []string{"kafka.brokers", "mqtt.address", "id", "data_dir", "receipts.qos", "admin.address", "routesX"} {
		if HotReloadable(k) {
			t.Errorf("%s should need a restart", k)
		}
	}
}
