package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/spf13/viper"
)

// EnvPrefix starts every environment override: GATEWAY_ + upper-case key path
// with "_" for ".", e.g. GATEWAY_KAFKA_BROKERS=a:9092,b:9092.
const EnvPrefix = "GATEWAY"

// Problems is the list of everything wrong with a config file, one entry per
// key, each of the form "routes[1].max_age: must be a duration like 72h".
type Problems []string

func (p Problems) Error() string { return strings.Join(p, "\n") }

// defaults lists every scalar (and list-of-scalar) key with its default. It is
// also the list of keys the environment can override.
var defaults = map[string]any{
	"id":                        "",
	"data_dir":                  "./data",
	"mqtt.address":              ":1883",
	"mqtt.tls.address":          "",
	"mqtt.tls.cert_file":        "",
	"mqtt.tls.key_file":         "",
	"mqtt.tls.client_ca_file":   "",
	"mqtt.websocket_address":    "",
	"mqtt.allow_anonymous":      "true",
	"mqtt.users_file":           "",
	"mqtt.max_packet_size":      "262144",
	"mqtt.max_inflight":         "64",
	"kafka.brokers":             []string{},
	"kafka.client_id":           "edge-gateway",
	"kafka.version":             "2.8.0",
	"kafka.compression":         "zstd",
	"kafka.tls.enabled":         "false",
	"kafka.tls.ca_file":         "",
	"kafka.tls.cert_file":       "",
	"kafka.tls.key_file":        "",
	"kafka.sasl.mechanism":      "",
	"kafka.sasl.username":       "",
	"kafka.sasl.password":       "",
	"kafka.exactly_once":        "false",
	"kafka.max_message_bytes":   "1000000",
	"kafka.dead_letter_topic":   "",
	"link.max_bytes_per_second": "0",
	"link.windows":              []string{},
	"link.urgent_priority":      "0",
	"buffer.max_disk_bytes":     "1GiB",
	"buffer.commit_wait":        "20ms",
	"buffer.commit_min_records": "8",
	"buffer.purge_interval":     "30s",
	"unrouted":                  "reject",
	"receipts.kafka_topic":      "receipts.{gateway_id}",
	"receipts.device_from":      "key",
	"receipts.mqtt_topic":       "terminals/{device}/receipts",
	"receipts.qos":              "1",
	"receipts.max_age":          "168h",
	"receipts.confirm_topic":    "receipts.delivered",
	"acl.publish":               []string{"terminals/{client_id}/#"},
	"acl.subscribe":             []string{"terminals/{client_id}/#"},
	"admin.address":             "127.0.0.1:9100",
	"log.level":                 "info",
	"log.format":                "text",

	// Identity and resource bounds (issue 9).
	"mqtt.client_id_binding":         "identity",
	"mqtt.tcp_allow_anonymous":       "",
	"mqtt.tls.allow_anonymous":       "",
	"mqtt.websocket_allow_anonymous": "",
	"mqtt.connect_timeout":           "10s",
	"mqtt.max_connect_size":          "16KiB",
	"mqtt.max_session_expiry":        "720h",
	"mqtt.max_sessions":              "100000",
	"mqtt.topic_alias_max":           "16",
	"mqtt.max_client_id_length":      "128",
	"mqtt.max_username_length":       "128",
	"admin.token_file":               "",
	"admin.pprof":                    "false",

	// What a hostile terminal may make the box hold (issue 23).
	"mqtt.max_topic_length":                    "512",
	"mqtt.max_topic_levels":                    "32",
	"mqtt.max_subscriptions_per_client":        "100",
	"mqtt.max_retained_messages":               "10000",
	"mqtt.max_retained_bytes":                  "16MiB",
	"mqtt.max_retained_messages_per_client":    "100",
	"mqtt.max_retained_bytes_per_client":       "1MiB",
	"mqtt.max_pending_connections":             "1024",
	"mqtt.max_pending_connections_per_address": "256",
	"mqtt.tls.crl_file":                        "",
	"receipts.max_devices":                     "10000",
	"receipts.max_pending_per_device":          "10000",

	// Fleet (status records up, signed config overlays down).
	"fleet.status_topic":    "",
	"fleet.status_interval": "60s",
	"fleet.config_topic":    "",
	"fleet.config_keys":     []string{},
}

// raw mirrors the YAML with every scalar as a string, so that all parsing (and
// every error message) is ours and names the key.
type raw struct {
	ID      string `mapstructure:"id"`
	DataDir string `mapstructure:"data_dir"`
	MQTT    struct {
		Address string `mapstructure:"address"`
		TLS     struct {
			Address      string `mapstructure:"address"`
			CertFile     string `mapstructure:"cert_file"`
			KeyFile      string `mapstructure:"key_file"`
			ClientCAFile string `mapstructure:"client_ca_file"`
			CRLFile      string `mapstructure:"crl_file"`

			AllowAnonymous string `mapstructure:"allow_anonymous"`
		} `mapstructure:"tls"`
		WebsocketAddress string `mapstructure:"websocket_address"`
		AllowAnonymous   string `mapstructure:"allow_anonymous"`
		UsersFile        string `mapstructure:"users_file"`
		MaxPacketSize    string `mapstructure:"max_packet_size"`
		MaxInflight      string `mapstructure:"max_inflight"`

		ClientIDBinding         string `mapstructure:"client_id_binding"`
		TCPAllowAnonymous       string `mapstructure:"tcp_allow_anonymous"`
		WebsocketAllowAnonymous string `mapstructure:"websocket_allow_anonymous"`
		ConnectTimeout          string `mapstructure:"connect_timeout"`
		MaxConnectSize          string `mapstructure:"max_connect_size"`
		MaxSessionExpiry        string `mapstructure:"max_session_expiry"`
		MaxSessions             string `mapstructure:"max_sessions"`
		TopicAliasMax           string `mapstructure:"topic_alias_max"`
		MaxClientIDLength       string `mapstructure:"max_client_id_length"`
		MaxUsernameLength       string `mapstructure:"max_username_length"`

		MaxTopicLength                  string `mapstructure:"max_topic_length"`
		MaxTopicLevels                  string `mapstructure:"max_topic_levels"`
		MaxSubscriptionsPerClient       string `mapstructure:"max_subscriptions_per_client"`
		MaxRetainedMessages             string `mapstructure:"max_retained_messages"`
		MaxRetainedBytes                string `mapstructure:"max_retained_bytes"`
		MaxRetainedMessagesPerClient    string `mapstructure:"max_retained_messages_per_client"`
		MaxRetainedBytesPerClient       string `mapstructure:"max_retained_bytes_per_client"`
		MaxPendingConnections           string `mapstructure:"max_pending_connections"`
		MaxPendingConnectionsPerAddress string `mapstructure:"max_pending_connections_per_address"`
	} `mapstructure:"mqtt"`
	Kafka struct {
		Brokers     []string `mapstructure:"brokers"`
		ClientID    string   `mapstructure:"client_id"`
		Version     string   `mapstructure:"version"`
		Compression string   `mapstructure:"compression"`
		TLS         struct {
			Enabled  string `mapstructure:"enabled"`
			CAFile   string `mapstructure:"ca_file"`
			CertFile string `mapstructure:"cert_file"`
			KeyFile  string `mapstructure:"key_file"`
		} `mapstructure:"tls"`
		SASL struct {
			Mechanism string `mapstructure:"mechanism"`
			Username  string `mapstructure:"username"`
			Password  string `mapstructure:"password"`
		} `mapstructure:"sasl"`
		ExactlyOnce     string `mapstructure:"exactly_once"`
		MaxMessageBytes string `mapstructure:"max_message_bytes"`
		DeadLetterTopic string `mapstructure:"dead_letter_topic"`
	} `mapstructure:"kafka"`
	Link struct {
		MaxBytesPerSecond string   `mapstructure:"max_bytes_per_second"`
		Windows           []string `mapstructure:"windows"`
		UrgentPriority    string   `mapstructure:"urgent_priority"`
	} `mapstructure:"link"`
	Buffer struct {
		MaxDiskBytes     string `mapstructure:"max_disk_bytes"`
		CommitWait       string `mapstructure:"commit_wait"`
		CommitMinRecords string `mapstructure:"commit_min_records"`
		PurgeInterval    string `mapstructure:"purge_interval"`
	} `mapstructure:"buffer"`
	Routes   []rawRoute `mapstructure:"routes"`
	Unrouted string     `mapstructure:"unrouted"`
	Receipts struct {
		KafkaTopic   string `mapstructure:"kafka_topic"`
		DeviceFrom   string `mapstructure:"device_from"`
		MQTTTopic    string `mapstructure:"mqtt_topic"`
		QoS          string `mapstructure:"qos"`
		MaxAge       string `mapstructure:"max_age"`
		ConfirmTopic string `mapstructure:"confirm_topic"`

		MaxDevices          string `mapstructure:"max_devices"`
		MaxPendingPerDevice string `mapstructure:"max_pending_per_device"`
	} `mapstructure:"receipts"`
	ACL struct {
		Publish   []string `mapstructure:"publish"`
		Subscribe []string `mapstructure:"subscribe"`
	} `mapstructure:"acl"`
	Admin struct {
		Address   string `mapstructure:"address"`
		TokenFile string `mapstructure:"token_file"`
		Pprof     string `mapstructure:"pprof"`
	} `mapstructure:"admin"`
	Log struct {
		Level  string `mapstructure:"level"`
		Format string `mapstructure:"format"`
	} `mapstructure:"log"`
	Fleet struct {
		StatusTopic    string   `mapstructure:"status_topic"`
		StatusInterval string   `mapstructure:"status_interval"`
		ConfigTopic    string   `mapstructure:"config_topic"`
		ConfigKeys     []string `mapstructure:"config_keys"`
	} `mapstructure:"fleet"`
}

type rawRoute struct {
	Name       string `mapstructure:"name"`
	Match      string `mapstructure:"match"`
	KafkaTopic string `mapstructure:"kafka_topic"`
	Key        string `mapstructure:"key"`
	Priority   string `mapstructure:"priority"`
	MaxAge     string `mapstructure:"max_age"`
	MaxBytes   string `mapstructure:"max_bytes"`
	OnFull     string `mapstructure:"on_full"`
}

// Load reads, decodes strictly, applies environment overrides and validates
// the file at path, then opens and parses every file it names (CheckFiles).
// A config that is not valid returns Problems.
func Load(path string) (*Config, error) { return LoadEnv(path, os.Environ()) }

// LoadEnv is Load with an explicit environment (KEY=VALUE entries).
func LoadEnv(path string, environ []string) (*Config, error) {
	cfg, err := load(path, environ, parseOptions{})
	if err != nil {
		return nil, err
	}
	if p := CheckFiles(cfg); len(p) > 0 {
		return nil, p
	}
	return cfg, nil
}

// LoadSettings is LoadEnv without looking at the files the config names
// (certificates, keys, users and token files): for the commands that only
// need its addresses and paths (status, buffer, deadletter), which an
// operator may run without the right to read the service's keys.
func LoadSettings(path string, environ []string) (*Config, error) {
	return load(path, environ, parseOptions{skipFiles: true})
}

func load(path string, environ []string, opts parseOptions) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg, err := parse(data, environ, opts)
	var p Problems
	if errors.As(err, &p) {
		// A syntax error has no key to name; the file is what the reader
		// needs then ("gateway.yaml: yaml: line 3: ...").
		for i, line := range p {
			if strings.HasPrefix(line, yamlProblem) {
				p[i] = path + ": " + line
			}
		}
	}
	return cfg, err
}

// yamlProblem starts the problem Parse reports for a file that is not YAML.
const yamlProblem = "yaml: "

// Parse is Load on bytes with an explicit environment (KEY=VALUE entries), so
// tests need not touch the process environment. Of the files the config
// names it only checks that they are there (Load opens and parses them).
func Parse(data []byte, environ []string) (*Config, error) {
	return parse(data, environ, parseOptions{})
}

// ParseLayers is Parse of data with overlays merged over it in order (the
// fleet's remote config): a mapping in an overlay merges key by key into the
// one below it, anything else (a list, a scalar) replaces it. Environment
// overrides apply last, so a GATEWAY_* variable set on the box wins over an
// overlay. The result is validated as a whole, exactly as a file is.
func ParseLayers(data []byte, overlays [][]byte, environ []string) (*Config, error) {
	return parse(data, environ, parseOptions{overlays: overlays})
}

// parseOptions change what parse checks.
type parseOptions struct {
	skipFiles bool     // not even whether the files the config names exist
	overlays  [][]byte // merged over the file in order (ParseLayers)
}

func parse(data []byte, environ []string, opts parseOptions) (*Config, error) {
	v := viper.New()
	v.SetConfigType("yaml")
	keys := make([]string, 0, len(defaults))
	for k := range defaults {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v.SetDefault(k, defaults[k])
	}
	if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
		return nil, Problems{yamlProblem + yamlErrorLine(data, oneLine(err.Error()))}
	}
	for i, o := range opts.overlays {
		if err := v.MergeConfig(bytes.NewReader(o)); err != nil {
			return nil, Problems{fmt.Sprintf("overlay %d: %s%s", i+1, yamlProblem, oneLine(err.Error()))}
		}
	}
	// Overrides come from the given environment, not viper's AutomaticEnv, so
	// the result does not depend on hidden process state in tests.
	env := map[string]string{}
	for _, kv := range environ {
		if i := strings.IndexByte(kv, '='); i > 0 {
			env[kv[:i]] = kv[i+1:]
		}
	}
	for _, k := range keys {
		name := EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(k, ".", "_"))
		if val, ok := env[name]; ok {
			if _, isList := defaults[k].([]string); isList {
				v.Set(k, splitList(val))
			} else {
				v.Set(k, val)
			}
		}
	}

	// Unknown keys and bad values are reported together, one line each.
	var problems Problems
	if err := v.UnmarshalExact(&raw{}); err != nil {
		problems = decodeProblems(err).(Problems)
	}
	var r raw
	if err := v.Unmarshal(&r); err != nil {
		return nil, append(problems, decodeProblems(err).(Problems)...)
	}
	cfg, err := r.validate(opts)
	if err != nil {
		problems = append(problems, err.(Problems)...)
	}
	if len(problems) > 0 {
		return nil, dedupe(problems)
	}
	return cfg, nil
}

func dedupe(p Problems) Problems {
	seen := map[string]bool{}
	var out Problems
	for _, s := range p {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

func splitList(s string) []string {
	if strings.TrimSpace(s) == "" {
		return []string{}
	}
	parts := strings.Split(s, ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts
}

var (
	invalidKeysRe = regexp.MustCompile(`'([^']*)' has invalid keys: (.*)`)
	fieldErrRe    = regexp.MustCompile(`'([^']*)'\s*(.*)`)
)

// decodeProblems turns mapstructure's messages into "key: problem" lines.
func decodeProblems(err error) error {
	var out Problems
	for _, line := range strings.Split(err.Error(), "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "*"))
		if line == "" || strings.HasPrefix(line, "decoding failed") || strings.HasSuffix(line, "error(s):") {
			continue
		}
		if m := invalidKeysRe.FindStringSubmatch(line); m != nil {
			for _, k := range strings.Split(m[2], ",") {
				k = strings.TrimSpace(k)
				if m[1] != "" {
					k = m[1] + "." + k
				}
				out = append(out, k+": unknown key")
			}
			continue
		}
		if m := fieldErrRe.FindStringSubmatch(line); m != nil {
			out = append(out, m[1]+": "+strings.TrimSpace(m[2]))
			continue
		}
		out = append(out, line)
	}
	if len(out) == 0 {
		return Problems{errors.Unwrap(err).Error()}
	}
	sort.Strings(out)
	return out
}

func oneLine(s string) string {
	s = strings.TrimPrefix(s, "While parsing config: ")
	s = strings.TrimPrefix(s, yamlProblem) // the YAML decoder's own prefix; ours is added once
	parts := strings.Fields(strings.ReplaceAll(s, "\n", " "))
	return strings.Join(parts, " ")
}

var yamlLineRe = regexp.MustCompile(`^line (\d+): (.*)$`)

// yamlErrorLine corrects the line of a YAML syntax error. The decoder names
// the line where the enclosing block started ("line 2: did not find
// expected key" for a key indented wrongly on line 4), not the line at
// fault: that is the first line at which the file, cut after it, fails with
// the same problem.
func yamlErrorLine(data []byte, msg string) string {
	m := yamlLineRe.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	problem := m[2]
	lines := bytes.SplitAfter(data, []byte("\n"))
	if len(lines) > 5000 {
		return msg // a config is not that long; not worth a parse per line
	}
	var prefix []byte
	for i, l := range lines {
		prefix = append(prefix, l...)
		v := viper.New()
		v.SetConfigType("yaml")
		err := v.ReadConfig(bytes.NewReader(prefix))
		if err == nil {
			continue
		}
		if pm := yamlLineRe.FindStringSubmatch(oneLine(err.Error())); pm != nil && pm[2] == problem {
			return fmt.Sprintf("line %d: %s", i+1, problem)
		}
	}
	return msg
}
