package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFleetDefaultsAndKeys(t *testing.T) {
	cfg, err := Parse([]byte(minimal), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Fleet.StatusTopic != "" || cfg.Fleet.ConfigTopic != "" || cfg.Fleet.StatusInterval != 60*time.Second || len(cfg.Fleet.ConfigKeys) != 0 {
		t.Fatalf("fleet defaults: %+v", cfg.Fleet)
	}
	key := filepath.Join(t.TempDir(), "fleet.pub")
	if err := os.WriteFile(key, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err = Parse([]byte(minimal+"fleet: {status_topic: gateway.status, status_interval: 5s, config_topic: gateway.config, config_keys: ["+key+"]}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Fleet.StatusTopic != "gateway.status" || cfg.Fleet.StatusInterval != 5*time.Second || cfg.Fleet.ConfigKeys[0] != key {
		t.Fatalf("fleet: %+v", cfg.Fleet)
	}
	for _, c := range []struct{ yaml, want string }{
		{"fleet: {status_topic: 'a b'}", "fleet.status_topic: invalid Kafka topic"},
		{"fleet: {status_interval: 10ms}", "fleet.status_interval: must be between 1s and 24h"},
		{"fleet: {config_topic: gateway.config}", "fleet.config_keys: must list at least one"},
		{"fleet: {config_topic: t, status_topic: t, config_keys: [" + key + "]}", "fleet.config_topic: must differ"},
		{"fleet: {config_topic: t, config_keys: [/nonexistent.pub]}", "fleet.config_keys[0]: cannot read"},
		{"fleet: {bogus: 1}", "fleet.bogus: unknown key"},
	} {
		_, err := Parse([]byte(minimal+c.yaml+"\n"), nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.yaml, err, c.want)
		}
	}
}

// An overlay merges mappings key by key and replaces lists whole; the
// environment wins over both; the result is validated as a whole.
func TestParseLayers(t *testing.T) {
	file := []byte(minimal + `
buffer: {max_disk_bytes: 1GiB, commit_wait: 10ms}
routes:
  - {name: a, match: "a/#", kafka_topic: ta}
  - {name: b, match: "b/#", kafka_topic: tb}
log: {level: info, format: json}
`)
	star := []byte("buffer: {max_disk_bytes: 2GiB}\nlog: {level: debug}\n")
	own := []byte("routes:\n  - {name: c, match: \"c/#\", kafka_topic: tc, max_age: 48h}\nlog: {level: warn}\n")
	cfg, err := ParseLayers(file, [][]byte{star, own}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Buffer.MaxDiskBytes != 2<<30 || cfg.Buffer.CommitWait != 10*time.Millisecond {
		t.Fatalf("buffer not merged key by key: %+v", cfg.Buffer)
	}
	if len(cfg.Routes) != 1 || cfg.Routes[0].Name != "c" || cfg.Routes[0].MaxAge != 48*time.Hour {
		t.Fatalf("routes not replaced whole: %+v", cfg.Routes)
	}
	if cfg.Log.Level != "warn" || cfg.Log.Format != "json" {
		t.Fatalf("the later overlay must win, the file's other keys stay: %+v", cfg.Log)
	}
	cfg, err = ParseLayers(file, [][]byte{star}, []string{"GATEWAY_BUFFER_MAX_DISK_BYTES=3GiB"})
	if err != nil || cfg.Buffer.MaxDiskBytes != 3<<30 {
		t.Fatalf("environment must win over an overlay: %v %+v", err, cfg)
	}
	_, err = ParseLayers(file, [][]byte{[]byte("routes: [{name: x, match: 'a/#/b', kafka_topic: t}]\n")}, nil)
	if err == nil || !strings.Contains(err.Error(), "routes[0].match: invalid topic filter") {
		t.Fatalf("an invalid overlay must be refused naming the key: %v", err)
	}
	_, err = ParseLayers(file, [][]byte{[]byte("routes: [\n")}, nil)
	if err == nil || !strings.Contains(err.Error(), "overlay 1: yaml:") {
		t.Fatalf("an overlay that is not YAML: %v", err)
	}
}
