package config

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Redacted stands in for a secret in Flatten's output.
const Redacted = "<redacted>"

// hotSections are the top-level keys a running gateway applies from a
// changed file without a restart (CONTRACT §2).
var hotSections = []string{"routes", "unrouted", "buffer", "link", "acl", "log"}

// HotReloadable reports whether a key path (as Flatten names it) is applied
// by a running gateway without a restart.
func HotReloadable(key string) bool {
	for _, s := range hotSections {
		if key == s || strings.HasPrefix(key, s+".") || strings.HasPrefix(key, s+"[") {
			return true
		}
	}
	return false
}

// Flatten lists the config as key path -> value, with the key paths of the
// YAML file ("kafka.sasl.mechanism", "routes[1].max_age"). Sizes are bytes,
// durations Go syntax, lists comma-joined. Secrets (the SASL password) are
// Redacted when set, so the result may be shown or served.
func Flatten(c *Config) map[string]string {
	m := map[string]string{}
	str := func(k, v string) { m[k] = v }
	num := func(k string, v int64) { m[k] = strconv.FormatInt(v, 10) }
	boolean := func(k string, v bool) { m[k] = strconv.FormatBool(v) }
	list := func(k string, v []string) { m[k] = strings.Join(v, ",") }

	str("id", c.ID)
	str("data_dir", c.DataDir)
	str("mqtt.address", c.MQTT.Address)
	str("mqtt.tls.address", c.MQTT.TLS.Address)
	str("mqtt.tls.cert_file", c.MQTT.TLS.CertFile)
	str("mqtt.tls.key_file", c.MQTT.TLS.KeyFile)
	str("mqtt.tls.client_ca_file", c.MQTT.TLS.ClientCAFile)
	str("mqtt.websocket_address", c.MQTT.WebsocketAddress)
	boolean("mqtt.allow_anonymous", c.MQTT.AllowAnonymous)
	str("mqtt.users_file", c.MQTT.UsersFile)
	num("mqtt.max_packet_size", c.MQTT.MaxPacketSize)
	num("mqtt.max_inflight", int64(c.MQTT.MaxInflight))
	str("mqtt.client_id_binding", c.MQTT.ClientIDBinding)
	boolean("mqtt.tcp_allow_anonymous", c.MQTT.AnonymousTCP)
	boolean("mqtt.tls.allow_anonymous", c.MQTT.AnonymousTLS)
	boolean("mqtt.websocket_allow_anonymous", c.MQTT.AnonymousWebsocket)
	str("mqtt.connect_timeout", c.MQTT.ConnectTimeout.String())
	num("mqtt.max_connect_size", c.MQTT.MaxConnectSize)
	str("mqtt.max_session_expiry", c.MQTT.MaxSessionExpiry.String())
	num("mqtt.max_sessions", int64(c.MQTT.MaxSessions))
	num("mqtt.topic_alias_max", int64(c.MQTT.TopicAliasMax))
	num("mqtt.max_client_id_length", int64(c.MQTT.MaxClientIDLength))
	num("mqtt.max_username_length", int64(c.MQTT.MaxUsernameLength))
	str("mqtt.tls.crl_file", c.MQTT.TLS.CRLFile)
	bo := c.MQTT.Bounds
	num("mqtt.max_topic_length", int64(bo.MaxTopicLength))
	num("mqtt.max_topic_levels", int64(bo.MaxTopicLevels))
	num("mqtt.max_subscriptions_per_client", int64(bo.MaxSubscriptions))
	num("mqtt.max_retained_messages", int64(bo.MaxRetained))
	num("mqtt.max_retained_bytes", bo.MaxRetainedBytes)
	num("mqtt.max_retained_messages_per_client", int64(bo.MaxRetainedPerClient))
	num("mqtt.max_retained_bytes_per_client", bo.MaxRetainedBytesPerClient)
	num("mqtt.max_pending_connections", int64(bo.MaxPending))
	num("mqtt.max_pending_connections_per_address", int64(bo.MaxPendingPerAddress))

	list("kafka.brokers", c.Kafka.Brokers)
	str("kafka.client_id", c.Kafka.ClientID)
	str("kafka.version", c.Kafka.Version)
	str("kafka.compression", c.Kafka.Compression)
	boolean("kafka.tls.enabled", c.Kafka.TLS.Enabled)
	str("kafka.tls.ca_file", c.Kafka.TLS.CAFile)
	str("kafka.tls.cert_file", c.Kafka.TLS.CertFile)
	str("kafka.tls.key_file", c.Kafka.TLS.KeyFile)
	str("kafka.sasl.mechanism", c.Kafka.SASL.Mechanism)
	str("kafka.sasl.username", c.Kafka.SASL.Username)
	if c.Kafka.SASL.Password != "" {
		str("kafka.sasl.password", Redacted)
	} else {
		str("kafka.sasl.password", "")
	}
	boolean("kafka.exactly_once", c.Kafka.ExactlyOnce)
	num("kafka.max_message_bytes", c.Kafka.MaxMessageBytes)
	str("kafka.dead_letter_topic", c.Kafka.DeadLetterTopic)

	num("link.max_bytes_per_second", c.Link.MaxBytesPerSecond)
	ws := make([]string, len(c.Link.Windows))
	for i, w := range c.Link.Windows {
		ws[i] = w.Text
	}
	list("link.windows", ws)
	num("link.urgent_priority", int64(c.Link.UrgentPriority))

	num("buffer.max_disk_bytes", c.Buffer.MaxDiskBytes)
	str("buffer.commit_wait", c.Buffer.CommitWait.String())
	num("buffer.commit_min_records", int64(c.Buffer.CommitMinRecords))
	str("buffer.purge_interval", c.Buffer.PurgeInterval.String())

	for i, r := range c.Routes {
		p := fmt.Sprintf("routes[%d].", i)
		str(p+"name", r.Name)
		str(p+"match", r.Match)
		str(p+"kafka_topic", r.KafkaTopic)
		str(p+"key", r.Key)
		num(p+"priority", int64(r.Priority))
		str(p+"max_age", r.MaxAge.String())
		num(p+"max_bytes", r.MaxBytes)
		str(p+"on_full", r.OnFull)
	}
	str("unrouted", c.Unrouted)

	str("receipts.kafka_topic", c.Receipts.KafkaTopic)
	str("receipts.device_from", c.Receipts.DeviceFrom)
	str("receipts.mqtt_topic", c.Receipts.MQTTTopic)
	num("receipts.qos", int64(c.Receipts.QoS))
	str("receipts.max_age", c.Receipts.MaxAge.String())
	str("receipts.confirm_topic", c.Receipts.ConfirmTopic)
	num("receipts.max_devices", int64(c.Receipts.MaxDevices))
	num("receipts.max_pending_per_device", int64(c.Receipts.MaxPendingPerDevice))

	list("acl.publish", c.ACL.Publish)
	list("acl.subscribe", c.ACL.Subscribe)
	str("admin.address", c.Admin.Address)
	str("admin.token_file", c.Admin.TokenFile)
	boolean("admin.pprof", c.Admin.Pprof)
	str("log.level", c.Log.Level)
	str("log.format", c.Log.Format)
	str("fleet.status_topic", c.Fleet.StatusTopic)
	str("fleet.status_interval", c.Fleet.StatusInterval.String())
	str("fleet.config_topic", c.Fleet.ConfigTopic)
	list("fleet.config_keys", c.Fleet.ConfigKeys)
	return m
}

// Change is one key that differs between two configs.
type Change struct {
	Key      string
	Old, New string
	OldSet   bool // false: the key is absent from the old config (a route added)
	NewSet   bool // false: the key is absent from the new config (a route removed)
	Hot      bool // applied without a restart
}

func (c Change) String() string {
	show := func(v string, set bool) string {
		if !set {
			return "(none)"
		}
		return strconv.Quote(v)
	}
	how := "needs restart"
	if c.Hot {
		how = "hot reload"
	}
	return fmt.Sprintf("%s: %s -> %s (%s)", c.Key, show(c.Old, c.OldSet), show(c.New, c.NewSet), how)
}

// DiffFlat compares two Flatten results, sorted by key. A secret that is set
// on both sides cannot be compared and is not reported.
func DiffFlat(old, new map[string]string) []Change {
	keys := map[string]bool{}
	for k := range old {
		keys[k] = true
	}
	for k := range new {
		keys[k] = true
	}
	var out []Change
	for k := range keys {
		o, oOK := old[k]
		n, nOK := new[k]
		if oOK == nOK && o == n {
			continue
		}
		out = append(out, Change{Key: k, Old: o, New: n, OldSet: oOK, NewSet: nOK, Hot: HotReloadable(k)})
	}
	sort.Slice(out, func(i, j int) bool { return keyLess(out[i].Key, out[j].Key) })
	return out
}

// Diff compares two configs key by key (see Flatten).
func Diff(old, new *Config) []Change { return DiffFlat(Flatten(old), Flatten(new)) }

// keyLess sorts routes[2] before routes[10].
func keyLess(a, b string) bool {
	ia, ra := routeIndex(a)
	ib, rb := routeIndex(b)
	if ra && rb && ia != ib {
		return ia < ib
	}
	return a < b
}

func routeIndex(k string) (int, bool) {
	if !strings.HasPrefix(k, "routes[") {
		return 0, false
	}
	end := strings.IndexByte(k, ']')
	if end < 0 {
		return 0, false
	}
	n, err := strconv.Atoi(k[len("routes["):end])
	return n, err == nil
}

// WithRestartKeys returns a copy of next in which everything a running
// gateway cannot change without a restart is taken from running: the config
// a gateway actually runs after applying next.
func WithRestartKeys(next, running *Config) *Config {
	c := *next
	c.ID = running.ID
	c.DataDir = running.DataDir
	c.MQTT = running.MQTT
	c.Kafka = running.Kafka
	c.Receipts = running.Receipts
	c.Admin = running.Admin
	c.Fleet = running.Fleet
	return &c
}
