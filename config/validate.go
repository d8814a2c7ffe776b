package config

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// checker collects problems with their key paths.
type checker struct {
	problems  Problems
	skipFiles bool // fileExists checks nothing (LoadSettings)
}

func (c *checker) addf(key, format string, args ...any) {
	c.problems = append(c.problems, key+": "+fmt.Sprintf(format, args...))
}

func (c *checker) boolean(key, s string) bool {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true", "1", "yes", "on":
		return true
	case "false", "0", "no", "off", "":
		return false
	}
	c.addf(key, "must be true or false, not %q", s)
	return false
}

func (c *checker) integer(key, s string, min, max int64) int64 {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		c.addf(key, "must be a whole number, not %q", s)
		return 0
	}
	if n < min || n > max {
		c.addf(key, "must be between %d and %d, not %d", min, max, n)
		return 0
	}
	return n
}

func (c *checker) size(key, s string) int64 {
	n, err := ParseSize(s)
	if errors.Is(err, ErrDecimalSizeUnit) {
		c.addf(key, "must be a size like 512MiB, not %q: %v", s, ErrDecimalSizeUnit)
		return 0
	}
	if err != nil {
		c.addf(key, "must be a size like 512MiB (units: %s; a plain number is bytes), not %q", SizeUnits, s)
		return 0
	}
	return n
}

func (c *checker) duration(key, s string) time.Duration {
	s = strings.TrimSpace(s)
	if s == "" || s == "0" {
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		c.addf(key, "must be a duration like 72h, not %q", s)
		return 0
	}
	return d
}

func (c *checker) oneOf(key, s string, allowed ...string) string {
	for _, a := range allowed {
		if s == a {
			return s
		}
	}
	c.addf(key, "must be one of %s, not %q", strings.Join(allowed, " | "), s)
	return s
}

func (c *checker) fileExists(key, path string) {
	if path == "" || c.skipFiles {
		return
	}
	if _, err := os.Stat(path); err != nil {
		c.addf(key, "cannot read %q: %v", path, unwrapPathErr(err))
	}
}

func unwrapPathErr(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

func (r *raw) validate(opts parseOptions) (*Config, error) {
	c := &checker{skipFiles: opts.skipFiles}
	cfg := &Config{}

	cfg.ID = strings.TrimSpace(r.ID)
	if cfg.ID == "" {
		if h, err := os.Hostname(); err == nil && h != "" {
			cfg.ID = h
		} else {
			c.addf("id", "must be set (no hostname to default to)")
		}
	}
	if strings.ContainsAny(cfg.ID, "/+#\x00") {
		c.addf("id", "must not contain / + # or NUL, got %q", cfg.ID)
	}
	cfg.DataDir = r.DataDir
	if cfg.DataDir == "" {
		c.addf("data_dir", "must be set")
	}

	// mqtt
	m := &cfg.MQTT
	m.Address = r.MQTT.Address
	m.TLS = ListenerTLS{r.MQTT.TLS.Address, r.MQTT.TLS.CertFile, r.MQTT.TLS.KeyFile, r.MQTT.TLS.ClientCAFile, r.MQTT.TLS.CRLFile}
	if m.TLS.Address != "" {
		if m.TLS.CertFile == "" {
			c.addf("mqtt.tls.cert_file", "must be set when mqtt.tls.address is set")
		}
		if m.TLS.KeyFile == "" {
			c.addf("mqtt.tls.key_file", "must be set when mqtt.tls.address is set")
		}
		c.fileExists("mqtt.tls.cert_file", m.TLS.CertFile)
		c.fileExists("mqtt.tls.key_file", m.TLS.KeyFile)
		c.fileExists("mqtt.tls.client_ca_file", m.TLS.ClientCAFile)
	}
	m.WebsocketAddress = r.MQTT.WebsocketAddress
	if m.Address == "" && m.TLS.Address == "" && m.WebsocketAddress == "" {
		c.addf("mqtt.address", "no MQTT listener is enabled (mqtt.address, mqtt.tls.address and mqtt.websocket_address are all empty)")
	}
	m.AllowAnonymous = c.boolean("mqtt.allow_anonymous", r.MQTT.AllowAnonymous)
	m.UsersFile = r.MQTT.UsersFile
	c.fileExists("mqtt.users_file", m.UsersFile)
	if !m.AllowAnonymous && m.UsersFile == "" && m.TLS.ClientCAFile == "" {
		c.addf("mqtt.allow_anonymous", "is false but neither mqtt.users_file nor mqtt.tls.client_ca_file is set: nobody could connect")
	}
	m.MaxPacketSize = c.integer("mqtt.max_packet_size", r.MQTT.MaxPacketSize, 64, 268435455)
	m.MaxInflight = int(c.integer("mqtt.max_inflight", r.MQTT.MaxInflight, 1, 65535))
	c.mqttIdentity(r, m)
	c.mqttBounds(r, m)

	// kafka
	k := &cfg.Kafka
	for _, b := range r.Kafka.Brokers {
		if b = strings.TrimSpace(b); b != "" {
			k.Brokers = append(k.Brokers, b)
		}
	}
	if len(k.Brokers) == 0 {
		c.addf("kafka.brokers", "must list at least one broker address like 127.0.0.1:9092")
	}
	for i, b := range k.Brokers {
		if !strings.Contains(b, ":") {
			c.addf(fmt.Sprintf("kafka.brokers[%d]", i), "must be host:port, not %q", b)
		}
	}
	k.ClientID = r.Kafka.ClientID
	k.Version = strings.TrimSpace(r.Kafka.Version)
	if !versionRe.MatchString(k.Version) {
		c.addf("kafka.version", "must be a Kafka version like 2.8.0, not %q", k.Version)
	}
	k.Compression = c.oneOf("kafka.compression", strings.ToLower(r.Kafka.Compression), "none", "gzip", "snappy", "lz4", "zstd")
	k.TLS.Enabled = c.boolean("kafka.tls.enabled", r.Kafka.TLS.Enabled)
	k.TLS.CAFile, k.TLS.CertFile, k.TLS.KeyFile = r.Kafka.TLS.CAFile, r.Kafka.TLS.CertFile, r.Kafka.TLS.KeyFile
	if k.TLS.Enabled {
		c.fileExists("kafka.tls.ca_file", k.TLS.CAFile)
		c.fileExists("kafka.tls.cert_file", k.TLS.CertFile)
		c.fileExists("kafka.tls.key_file", k.TLS.KeyFile)
		if (k.TLS.CertFile == "") != (k.TLS.KeyFile == "") {
			c.addf("kafka.tls.key_file", "cert_file and key_file go together")
		}
	}
	k.SASL = SASL{strings.ToUpper(r.Kafka.SASL.Mechanism), r.Kafka.SASL.Username, r.Kafka.SASL.Password}
	c.oneOf("kafka.sasl.mechanism", k.SASL.Mechanism, "", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
	if k.SASL.Mechanism != "" && k.SASL.Username == "" {
		c.addf("kafka.sasl.username", "must be set when kafka.sasl.mechanism is set")
	}
	k.ExactlyOnce = c.boolean("kafka.exactly_once", r.Kafka.ExactlyOnce)
	k.MaxMessageBytes = c.size("kafka.max_message_bytes", r.Kafka.MaxMessageBytes)
	if k.MaxMessageBytes > 0 && k.MaxMessageBytes < 4*RecordOverhead {
		c.addf("kafka.max_message_bytes", "must be at least %d bytes, got %d", 4*RecordOverhead, k.MaxMessageBytes)
	} else if m.MaxPacketSize > 0 && m.MaxPacketSize+RecordOverhead > k.MaxMessageBytes {
		// A publish the broker accepts must fit in one Kafka record, or it
		// is acknowledged and then can never be delivered.
		c.addf("mqtt.max_packet_size", "%d bytes cannot fit in one Kafka record of kafka.max_message_bytes %d (a record needs up to %d bytes more for its key and headers): lower mqtt.max_packet_size to at most %d or raise kafka.max_message_bytes",
			m.MaxPacketSize, k.MaxMessageBytes, RecordOverhead, k.MaxMessageBytes-RecordOverhead)
	}
	k.DeadLetterTopic = strings.TrimSpace(r.Kafka.DeadLetterTopic)

	// link
	cfg.Link.MaxBytesPerSecond = c.size("link.max_bytes_per_second", r.Link.MaxBytesPerSecond)
	for i, w := range r.Link.Windows {
		win, err := ParseWindow(w)
		if err != nil {
			c.addf(fmt.Sprintf("link.windows[%d]", i), "%v", err)
			continue
		}
		cfg.Link.Windows = append(cfg.Link.Windows, win)
	}
	cfg.Link.UrgentPriority = int(c.integer("link.urgent_priority", r.Link.UrgentPriority, -1, 1000000))

	// buffer
	cfg.Buffer.MaxDiskBytes = c.size("buffer.max_disk_bytes", r.Buffer.MaxDiskBytes)
	if cfg.Buffer.MaxDiskBytes < 0 {
		c.addf("buffer.max_disk_bytes", "must not be negative")
	}
	cfg.Buffer.CommitWait = c.duration("buffer.commit_wait", r.Buffer.CommitWait)
	if cfg.Buffer.CommitWait < 0 || cfg.Buffer.CommitWait > 5*time.Second {
		c.addf("buffer.commit_wait", "must be between 0 and 5s (it delays every PUBACK), not %v", cfg.Buffer.CommitWait)
	}
	cfg.Buffer.CommitMinRecords = int(c.integer("buffer.commit_min_records", r.Buffer.CommitMinRecords, 0, 2048))
	cfg.Buffer.PurgeInterval = c.duration("buffer.purge_interval", r.Buffer.PurgeInterval)
	if cfg.Buffer.PurgeInterval < 100*time.Millisecond || cfg.Buffer.PurgeInterval > time.Hour {
		c.addf("buffer.purge_interval", "must be between 100ms and 1h, not %v", cfg.Buffer.PurgeInterval)
	}

	// routes
	names := map[string]int{}
	var routeBytes int64
	for i, rr := range r.Routes {
		key := func(f string) string { return fmt.Sprintf("routes[%d].%s", i, f) }
		rt := Route{Name: strings.TrimSpace(rr.Name), Match: rr.Match, KafkaTopic: rr.KafkaTopic, Key: rr.Key, OnFull: rr.OnFull}
		if rt.Name == "" {
			c.addf(key("name"), "must be set")
		} else if j, dup := names[rt.Name]; dup {
			c.addf(key("name"), "%q is already the name of routes[%d]", rt.Name, j)
		} else {
			names[rt.Name] = i
		}
		if rt.Match == "" {
			c.addf(key("match"), "must be set to an MQTT topic filter like terminals/+/payments/#")
		} else if err := CheckFilter(rt.Match); err != nil {
			c.addf(key("match"), "%v", err)
		}
		if rt.KafkaTopic == "" {
			c.addf(key("kafka_topic"), "must be set")
		} else if err := CheckKafkaTopic(rt.KafkaTopic); err != nil {
			c.addf(key("kafka_topic"), "%v", err)
		}
		if rt.Key == "" {
			rt.Key = "{client_id}"
		}
		if _, err := ParseTemplate(rt.Key); err != nil {
			c.addf(key("key"), "%v", err)
		}
		if strings.TrimSpace(rr.Priority) != "" {
			rt.Priority = int(c.integer(key("priority"), rr.Priority, 0, 1000000))
		}
		rt.MaxAge = c.duration(key("max_age"), rr.MaxAge)
		if strings.TrimSpace(rr.MaxBytes) != "" {
			rt.MaxBytes = c.size(key("max_bytes"), rr.MaxBytes)
		}
		routeBytes += rt.MaxBytes
		if rt.OnFull == "" {
			rt.OnFull = "reject"
		}
		c.oneOf(key("on_full"), rt.OnFull, "reject", "drop_oldest")
		cfg.Routes = append(cfg.Routes, rt)
	}
	for i, rt := range cfg.Routes {
		if cfg.Buffer.MaxDiskBytes > 0 && rt.MaxBytes > cfg.Buffer.MaxDiskBytes {
			c.addf(fmt.Sprintf("routes[%d].max_bytes", i), "%d is larger than buffer.max_disk_bytes (%d)", rt.MaxBytes, cfg.Buffer.MaxDiskBytes)
		}
	}
	cfg.Unrouted = c.oneOf("unrouted", r.Unrouted, "reject", "local")

	// receipts
	rc := &cfg.Receipts
	rc.KafkaTopic = r.Receipts.KafkaTopic
	if rc.KafkaTopic == "" {
		c.addf("receipts.kafka_topic", "must be set")
	} else if err := CheckKafkaTopic(expandGatewayID(rc.KafkaTopic, cfg.ID)); err != nil {
		c.addf("receipts.kafka_topic", "%v", err)
	}
	rc.DeviceFrom = r.Receipts.DeviceFrom
	if rc.DeviceFrom != "key" && (!strings.HasPrefix(rc.DeviceFrom, "header:") || len(rc.DeviceFrom) == len("header:")) {
		c.addf("receipts.device_from", "must be key or header:NAME, not %q", rc.DeviceFrom)
	}
	rc.MQTTTopic = r.Receipts.MQTTTopic
	if !strings.Contains(rc.MQTTTopic, "{device}") {
		c.addf("receipts.mqtt_topic", "must contain {device}, got %q", rc.MQTTTopic)
	} else if strings.ContainsAny(strings.ReplaceAll(rc.MQTTTopic, "{device}", "d"), "+#") {
		c.addf("receipts.mqtt_topic", "must be a topic name without wildcards, got %q", rc.MQTTTopic)
	}
	rc.QoS = byte(c.integer("receipts.qos", r.Receipts.QoS, 0, 2))
	rc.MaxAge = c.duration("receipts.max_age", r.Receipts.MaxAge)
	rc.MaxDevices = int(c.integer("receipts.max_devices", r.Receipts.MaxDevices, 1, 100_000_000))
	rc.MaxPendingPerDevice = int(c.integer("receipts.max_pending_per_device", r.Receipts.MaxPendingPerDevice, 1, 100_000_000))
	rc.ConfirmTopic = r.Receipts.ConfirmTopic
	if rc.ConfirmTopic != "" {
		if err := CheckKafkaTopic(expandGatewayID(rc.ConfirmTopic, cfg.ID)); err != nil {
			c.addf("receipts.confirm_topic", "%v", err)
		}
	}

	// acl
	for i, f := range r.ACL.Publish {
		if err := CheckFilter(expandACL(f)); err != nil {
			c.addf(fmt.Sprintf("acl.publish[%d]", i), "%v", err)
		}
	}
	for i, f := range r.ACL.Subscribe {
		if err := CheckFilter(expandACL(f)); err != nil {
			c.addf(fmt.Sprintf("acl.subscribe[%d]", i), "%v", err)
		}
	}
	cfg.ACL = ACL{Publish: r.ACL.Publish, Subscribe: r.ACL.Subscribe}

	cfg.Admin.Address = r.Admin.Address
	cfg.Admin.TokenFile = r.Admin.TokenFile
	c.fileExists("admin.token_file", cfg.Admin.TokenFile)
	cfg.Admin.Pprof = c.boolean("admin.pprof", r.Admin.Pprof)
	if cfg.Admin.Address == "" && (cfg.Admin.TokenFile != "" || cfg.Admin.Pprof) {
		c.addf("admin.address", "is empty (admin endpoint disabled) but admin.token_file or admin.pprof is set")
	}
	cfg.Log.Level = c.oneOf("log.level", strings.ToLower(r.Log.Level), "debug", "info", "warn", "error")
	cfg.Log.Format = c.oneOf("log.format", strings.ToLower(r.Log.Format), "text", "json")
	c.fleet(r, cfg)

	if len(c.problems) > 0 {
		return nil, c.problems
	}
	return cfg, nil
}

// expandACL fills the ACL placeholders with a harmless value so the filter's
// shape can be checked.
func expandACL(f string) string {
	return strings.NewReplacer("{client_id}", "c", "{username}", "u", "{cert_cn}", "n").Replace(f)
}

func expandGatewayID(s, id string) string { return strings.ReplaceAll(s, "{gateway_id}", id) }

// fleet checks the fleet section: topic names, the status interval, and that
// remote config names keys to verify overlays with (without one nothing
// could ever be accepted).
func (c *checker) fleet(r *raw, cfg *Config) {
	f := &cfg.Fleet
	f.StatusTopic = strings.TrimSpace(r.Fleet.StatusTopic)
	if f.StatusTopic != "" {
		if err := CheckKafkaTopic(f.StatusTopic); err != nil {
			c.addf("fleet.status_topic", "%v", err)
		}
	}
	f.StatusInterval = c.duration("fleet.status_interval", r.Fleet.StatusInterval)
	if f.StatusInterval < time.Second || f.StatusInterval > 24*time.Hour {
		c.addf("fleet.status_interval", "must be between 1s and 24h, not %v", f.StatusInterval)
	}
	f.ConfigTopic = strings.TrimSpace(r.Fleet.ConfigTopic)
	if f.ConfigTopic != "" {
		if err := CheckKafkaTopic(f.ConfigTopic); err != nil {
			c.addf("fleet.config_topic", "%v", err)
		}
		if f.ConfigTopic == f.StatusTopic {
			c.addf("fleet.config_topic", "must differ from fleet.status_topic (boxes write one and only read the other)")
		}
	}
	for i, k := range r.Fleet.ConfigKeys {
		if k = strings.TrimSpace(k); k != "" {
			c.fileExists(fmt.Sprintf("fleet.config_keys[%d]", i), k)
			f.ConfigKeys = append(f.ConfigKeys, k)
		}
	}
	if f.ConfigTopic != "" && len(f.ConfigKeys) == 0 {
		c.addf("fleet.config_keys", "must list at least one public key file when fleet.config_topic is set (an overlay is applied only if signed by one of them)")
	}
}
