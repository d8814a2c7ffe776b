package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const minimal = "kafka: {brokers: [\"127.0.0.1:9092\"]}\n"

func TestExampleFileIsValid(t *testing.T) {
	cfg, err := Load(filepath.Join("..", "config.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ID != "edge-01" || len(cfg.Routes) != 2 || cfg.Routes[1].OnFull != "drop_oldest" {
		t.Fatalf("unexpected example config: %+v", cfg)
	}
	if cfg.Routes[0].MaxAge != 720*time.Hour || cfg.Routes[0].MaxBytes != 512<<20 || cfg.Buffer.MaxDiskBytes != 1<<30 {
		t.Fatal("sizes or durations misread")
	}
	if cfg.ReceiptsTopic() != "receipts.edge-01" {
		t.Fatal(cfg.ReceiptsTopic())
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Parse([]byte(minimal+`
routes:
  - {name: r, match: "a/#", kafka_topic: t}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Routes[0]
	if r.Key != "{client_id}" || r.Priority != 0 || r.MaxAge != 0 || r.MaxBytes != 0 || r.OnFull != "reject" {
		t.Fatalf("route defaults: %+v", r)
	}
	if cfg.MQTT.Address != ":1883" || cfg.MQTT.MaxPacketSize != 262144 || cfg.MQTT.MaxInflight != 64 ||
		!cfg.MQTT.AllowAnonymous || cfg.Kafka.Compression != "zstd" || cfg.Unrouted != "reject" ||
		cfg.Admin.Address != "127.0.0.1:9100" || cfg.DataDir != "./data" || cfg.ID == "" {
		t.Fatalf("defaults: %+v", cfg)
	}
}

func TestEnvironmentOverrides(t *testing.T) {
	cfg, err := Parse([]byte(minimal), []string{
		"GATEWAY_KAFKA_BROKERS=a:9092,b:9092",
		"GATEWAY_MQTT_ADDRESS=:1884",
		"GATEWAY_DATA_DIR=/var/lib/gateway",
		"GATEWAY_MQTT_ALLOW_ANONYMOUS=true",
		"GATEWAY_MQTT_MAX_INFLIGHT=8",
		"GATEWAY_BUFFER_MAX_DISK_BYTES=2GiB",
		"GATEWAY_ID=ship-7",
		"UNRELATED=1",
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Kafka.Brokers, ",") != "a:9092,b:9092" || cfg.MQTT.Address != ":1884" ||
		cfg.DataDir != "/var/lib/gateway" || cfg.MQTT.MaxInflight != 8 || cfg.Buffer.MaxDiskBytes != 2<<30 || cfg.ID != "ship-7" {
		t.Fatalf("overrides not applied: %+v", cfg)
	}
	_, err = Parse([]byte(minimal), []string{"GATEWAY_MQTT_MAX_INFLIGHT=lots"})
	if err == nil || !strings.Contains(err.Error(), "mqtt.max_inflight") {
		t.Fatalf("bad env value: %v", err)
	}
}

// Each bad file is refused with an error naming the key.
func TestBadFiles(t *testing.T) {
	cases := []struct{ name, yaml, want string }{
		{"no brokers", "id: x\n", "kafka.brokers: must list"},
		{"unknown top key", minimal + "bogus: 1\n", "bogus: unknown key"},
		{"unknown nested key", minimal + "mqtt: {adress: x}\n", "mqtt.adress: unknown key"},
		{"unknown route key", minimal + "routes: [{name: a, match: a, kafka_topic: t, prio: 1}]\n", "routes[0].prio: unknown key"},
		{"bad duration", minimal + "routes: [{name: a, match: a, kafka_topic: t}, {name: b, match: b, kafka_topic: t, max_age: 3 days}]\n", "routes[1].max_age: must be a duration like 72h"},
		{"bad size", minimal + "buffer: {max_disk_bytes: lots}\n", "buffer.max_disk_bytes: must be a size"},
		{"bad route size", minimal + "routes: [{name: a, match: a, kafka_topic: t, max_bytes: 1XB}]\n", "routes[0].max_bytes: must be a size"},
		{"bad on_full", minimal + "routes: [{name: a, match: a, kafka_topic: t, on_full: drop}]\n", "routes[0].on_full: must be one of reject | drop_oldest"},
		{"missing match", minimal + "routes: [{name: a, kafka_topic: t}]\n", "routes[0].match: must be set"},
		{"missing topic", minimal + "routes: [{name: a, match: a}]\n", "routes[0].kafka_topic: must be set"},
		{"bad filter", minimal + "routes: [{name: a, match: 'a/#/b', kafka_topic: t}]\n", "routes[0].match: invalid topic filter"},
		{"bad kafka topic", minimal + "routes: [{name: a, match: a, kafka_topic: 'pay ments'}]\n", "routes[0].kafka_topic: invalid Kafka topic"},
		{"bad template", minimal + "routes: [{name: a, match: a, kafka_topic: t, key: '{clientid}'}]\n", "routes[0].key: unknown placeholder {clientid}"},
		{"duplicate route", minimal + "routes: [{name: a, match: a, kafka_topic: t}, {name: a, match: b, kafka_topic: t}]\n", "routes[1].name: \"a\" is already"},
		{"bad priority", minimal + "routes: [{name: a, match: a, kafka_topic: t, priority: high}]\n", "routes[0].priority: must be a whole number"},
		{"negative priority", minimal + "routes: [{name: a, match: a, kafka_topic: t, priority: -1}]\n", "routes[0].priority: must be between"},
		{"route over budget", minimal + "buffer: {max_disk_bytes: 1MiB}\nroutes: [{name: a, match: a, kafka_topic: t, max_bytes: 2MiB}]\n", "routes[0].max_bytes: 2097152 is larger than buffer.max_disk_bytes"},
		{"bad compression", "kafka: {brokers: [a:1], compression: brotli}\n", "kafka.compression: must be one of"},
		{"bad broker", "kafka: {brokers: [localhost]}\n", "kafka.brokers[0]: must be host:port"},
		{"bad sasl", "kafka: {brokers: [a:1], sasl: {mechanism: GSSAPI}}\n", "kafka.sasl.mechanism: must be one of"},
		{"sasl without user", "kafka: {brokers: [a:1], sasl: {mechanism: PLAIN}}\n", "kafka.sasl.username: must be set"},
		{"bad bool", minimal + "mqtt: {allow_anonymous: maybe}\n", "mqtt.allow_anonymous: must be true or false"},
		{"no listener", minimal + "mqtt: {address: ''}\n", "mqtt.address: no MQTT listener"},
		{"tls without cert", minimal + "mqtt: {tls: {address: ':8883'}}\n", "mqtt.tls.cert_file: must be set"},
		{"missing users file", minimal + "mqtt: {users_file: /nonexistent/users}\n", "mqtt.users_file: cannot read"},
		{"nobody can connect", minimal + "mqtt: {allow_anonymous: false}\n", "mqtt.allow_anonymous: is false but"},
		{"bad packet size", minimal + "mqtt: {max_packet_size: 0}\n", "mqtt.max_packet_size: must be between"},
		{"bad unrouted", minimal + "unrouted: drop\n", "unrouted: must be one of reject | local"},
		{"bad window", minimal + "link: {windows: ['22-06']}\n", "link.windows[0]: must be a time range"},
		{"bad receipts topic", minimal + "receipts: {mqtt_topic: 'terminals/receipts'}\n", "receipts.mqtt_topic: must contain {device}"},
		{"bad device_from", minimal + "receipts: {device_from: value}\n", "receipts.device_from: must be key or header:NAME"},
		{"bad receipts qos", minimal + "receipts: {qos: 3}\n", "receipts.qos: must be between 0 and 2"},
		{"bad acl", minimal + "acl: {publish: ['a/#/b']}\n", "acl.publish[0]: invalid topic filter"},
		{"bad log level", minimal + "log: {level: loud}\n", "log.level: must be one of"},
		{"not yaml", "kafka: [\n", "yaml:"},
		{"duplicate key", minimal + minimal, "already defined"},
		{"routes not a list", minimal + "routes: payments\n", "routes"},
		{"bad version", "kafka: {brokers: [a:1], version: latest}\n", "kafka.version: must be a Kafka version"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.yaml), nil)
			if err == nil {
				t.Fatalf("accepted:\n%s", c.yaml)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not contain %q", err, c.want)
			}
		})
	}
}

func TestAllProblemsReportedAtOnce(t *testing.T) {
	_, err := Parse([]byte(minimal+"bogus: 1\nroutes: [{name: a, match: a, kafka_topic: t, max_age: x}]\nlog: {level: loud}\n"), nil)
	p, ok := err.(Problems)
	if !ok || len(p) != 3 {
		t.Fatalf("want 3 problems, got %v", err)
	}
}

func TestSizesAndWindows(t *testing.T) {
	for in, want := range map[string]int64{"1GiB": 1 << 30, "512MiB": 512 << 20, "100KiB": 100 << 10, "262144": 262144, "1.5GiB": 3 << 29, "10B": 10} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "GiB", "-1MiB", "1 parsec", "1e400GiB"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
	w, err := ParseWindow("22:00-06:00")
	if err != nil {
		t.Fatal(err)
	}
	at := func(h, m int) time.Time { return time.Date(2026, 1, 1, h, m, 0, 0, time.Local) }
	if !w.Contains(at(23, 0)) || !w.Contains(at(5, 59)) || w.Contains(at(6, 0)) || w.Contains(at(12, 0)) {
		t.Fatal("wrapping window misjudged")
	}
}

func TestTemplates(t *testing.T) {
	in := TemplateInput{ClientID: "c1", Username: "u1", Topic: "terminals/t7/payments/42"}
	for tmpl, want := range map[string]string{
		"{client_id}":          "c1",
		"{username}-{topic.1}": "u1-t7",
		"{topic}":              "terminals/t7/payments/42",
		"site/{topic.9}":       "site/",
		"plain":                "plain",
	} {
		if got := MustTemplate(tmpl).Render(in); got != want {
			t.Errorf("%s -> %q, want %q", tmpl, got, want)
		}
	}
	for _, bad := range []string{"{", "}", "{topic.x}", "{who}", "{topic.-1}"} {
		if _, err := ParseTemplate(bad); err == nil {
			t.Errorf("ParseTemplate(%q) accepted", bad)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("missing file: %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func FuzzParse(f *testing.F) {
	data, _ := os.ReadFile(filepath.Join("..", "config.example.yaml"))
	f.Add(string(data))
	f.Add(minimal + "routes: [{name: a, match: a, kafka_topic: t, max_age: 1h}]")
	f.Fuzz(func(t *testing.T, s string) {
		cfg, err := Parse([]byte(s), nil)
		if err == nil && cfg == nil {
			t.Fatal("nil config without error")
		}
	})
}

func FuzzTemplate(f *testing.F) {
	f.Add("{client_id}-{topic.2}", "a/b/c")
	f.Fuzz(func(t *testing.T, tmpl, topic string) {
		if tp, err := ParseTemplate(tmpl); err == nil {
			tp.Render(TemplateInput{ClientID: "c", Username: "u", Topic: topic})
		}
	})
}

// Only binary units are documented; "1GB" is refused with a message naming
// the key and the accepted units instead of being read as 10^9 bytes.
func TestDecimalSizeUnitsRefused(t *testing.T) {
	for _, bad := range []string{"1GB", "5MB", "100kB", "2 TB", "1G", "1.5GB"} {
		if _, err := ParseSize(bad); !errors.Is(err, ErrDecimalSizeUnit) {
			t.Errorf("ParseSize(%q) = %v, want ErrDecimalSizeUnit", bad, err)
		}
	}
	_, err := Parse([]byte(minimal+"buffer: {max_disk_bytes: 1GB}\n"), nil)
	want := `buffer.max_disk_bytes: must be a size like 512MiB, not "1GB": decimal units (KB MB GB TB) are not accepted: use B KiB MiB GiB TiB`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v, want it to contain %q", err, want)
	}
}

// A YAML syntax error has no key; the message names the file instead, and
// says "yaml:" once.
func TestLoadNamesFileOnSyntaxError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gateway.yaml")
	if err := os.WriteFile(path, []byte("id: a\nkafka: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if err == nil {
		t.Fatal("accepted a file that is not YAML")
	}
	if msg := err.Error(); !strings.HasPrefix(msg, path+": yaml: line ") || strings.Contains(strings.TrimPrefix(msg, path), "yaml: yaml:") {
		t.Fatalf("error %q: want it to start with %q and say yaml: once", msg, path+": yaml: line ")
	}
}
