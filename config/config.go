// Package config owns the gateway's YAML schema: defaults, strict decoding,
// validation that names the offending key, and GATEWAY_* environment overrides.
// It knows nothing about MQTT or Kafka clients.
package config

import (
	"time"
)

// Config is a validated gateway configuration. Every field has its final type;
// durations and sizes are parsed, templates are checked.
type Config struct {
	ID       string
	DataDir  string
	MQTT     MQTT
	Kafka    Kafka
	Link     Link
	Buffer   Buffer
	Routes   []Route
	Unrouted string // "reject" or "local"
	Receipts Receipts
	ACL      ACL
	Admin    Admin
	Log      Log
	Fleet    Fleet
}

// MQTT configures the embedded broker's listeners and limits.
type MQTT struct {
	Address          string // plain TCP; "" disables
	TLS              ListenerTLS
	WebsocketAddress string
	AllowAnonymous   bool
	UsersFile        string // lines "username:bcrypt-hash"
	MaxPacketSize    int64  // bytes; larger publishes are refused
	MaxInflight      int    // per client: unacknowledged QoS>0 publishes in each direction

	// ClientIDBinding is "identity" (with authentication configured, a
	// client id must equal the username, or the certificate's subject CN for
	// a certificate login) or "any" (no binding).
	ClientIDBinding string
	// AnonymousTCP, AnonymousTLS and AnonymousWebsocket are allow_anonymous
	// per listener: mqtt.allow_anonymous unless overridden.
	AnonymousTCP, AnonymousTLS, AnonymousWebsocket bool

	ConnectTimeout    time.Duration // TLS handshake + CONNECT; silent connections are closed after it
	MaxConnectSize    int64         // bytes; a larger CONNECT is refused before it is read
	MaxSessionExpiry  time.Duration // persistent sessions of offline clients end after this
	MaxSessions       int           // stored sessions; beyond it the longest-offline go first
	TopicAliasMax     int           // announced in CONNACK and enforced; 0 = no aliases
	MaxClientIDLength int           // bytes
	MaxUsernameLength int           // bytes

	// What one client (and all of them) may make the broker hold (see
	// Bounds).
	Bounds Bounds
}

// Bounds are the limits of what a client may make the broker hold or
// compute, each refused or dropped and counted when reached (a hostile or
// broken terminal affects itself only).
type Bounds struct {
	MaxTopicLength            int   // bytes of a topic name or filter
	MaxTopicLevels            int   // levels ("/"-separated parts) of a topic name or filter
	MaxSubscriptions          int   // per client
	MaxRetained               int   // retained messages held, all clients together
	MaxRetainedBytes          int64 // their bytes (topic, payload, properties)
	MaxRetainedPerClient      int   // retained messages one client set and still holds
	MaxRetainedBytesPerClient int64 // their bytes
	MaxPending                int   // connections not logged in yet, all addresses
	MaxPendingPerAddress      int   // of one remote address
}

// BindsClientID reports whether an authenticated client's id must be its
// identity.
func (m *MQTT) BindsClientID() bool { return m.ClientIDBinding != "any" }

// ListenerTLS is the MQTT-over-TLS listener.
type ListenerTLS struct {
	Address      string
	CertFile     string
	KeyFile      string
	ClientCAFile string // set: client certificates are required and verified
	CRLFile      string // set: client certificates revoked by these CRLs are refused
}

// Kafka configures the uplink producer and the receipts consumer.
type Kafka struct {
	Brokers     []string
	ClientID    string
	Version     string // Kafka protocol version to speak, e.g. "2.8.0"
	Compression string // none | gzip | snappy | lz4 | zstd
	TLS         KafkaTLS
	SASL        SASL
	ExactlyOnce bool
	// MaxMessageBytes is the largest record the cluster takes (bytes, as
	// the producer counts a record: key, value, headers and framing).
	// Larger records are never sent: they go to the dead-letter store.
	MaxMessageBytes int64
	// DeadLetterTopic, if set, also receives the records Kafka refuses for
	// good (those that fit in it).
	DeadLetterTopic string
}

// KafkaTLS is TLS towards the Kafka cluster.
type KafkaTLS struct {
	Enabled  bool
	CAFile   string
	CertFile string
	KeyFile  string
}

// SASL authenticates towards the Kafka cluster.
type SASL struct {
	Mechanism string // "" | PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
	Username  string
	Password  string
}

// Link describes how the drain may use the uplink.
type Link struct {
	MaxBytesPerSecond int64    // 0 = unlimited
	Windows           []Window // empty = always
	UrgentPriority    int      // routes at or below this priority drain outside windows too
}

// Window is a daily local-time interval; End before Start wraps past midnight.
type Window struct {
	Start, End time.Duration // offsets from local midnight
	Text       string
}

// Buffer is the disk budget for undelivered uplink data.
type Buffer struct {
	MaxDiskBytes int64
	// CommitWait is the longest a group commit waits for more publishes
	// before its fsync: PUBACK latency traded for flash wear.
	CommitWait time.Duration
	// CommitMinRecords ends that wait as soon as this many are together.
	CommitMinRecords int
	// PurgeInterval is how often delivered blocks are deleted from the file:
	// longer writes less, shorter re-sends less after a crash.
	PurgeInterval time.Duration
}

// Route is one uplink rule.
type Route struct {
	Name       string
	Match      string // MQTT topic filter
	KafkaTopic string
	Key        string // template, see rules.ParseTemplate
	Priority   int
	MaxAge     time.Duration // 0 = no limit
	MaxBytes   int64         // 0 = only the global budget applies
	OnFull     string        // reject | drop_oldest
}

// Receipts configures the downlink.
type Receipts struct {
	KafkaTopic   string // may contain {gateway_id}
	DeviceFrom   string // "key" or "header:NAME"
	MQTTTopic    string // must contain {device}
	QoS          byte
	MaxAge       time.Duration
	ConfirmTopic string // "" disables confirmations

	// MaxDevices bounds the devices with receipts waiting in the outbox;
	// MaxPendingPerDevice the receipts one device has waiting. A receipt
	// beyond either is dropped and counted.
	MaxDevices          int
	MaxPendingPerDevice int
}

// ACL lists topic filters a client may publish and subscribe to; {client_id},
// {username} and {cert_cn} expand per client.
type ACL struct {
	Publish   []string
	Subscribe []string
}

// Admin is the HTTP admin endpoint.
type Admin struct {
	Address   string // "" disables
	TokenFile string // set: every request but /healthz needs "Authorization: Bearer <token>"
	Pprof     bool   // serve /debug/pprof/
}

// Log configures the process logger.
type Log struct {
	Level  string // debug | info | warn | error
	Format string // text | json
}

// Fleet is the central side's view and control of every box: status
// records up, signed config overlays down (see the fleet package).
type Fleet struct {
	StatusTopic    string        // "" disables status records
	StatusInterval time.Duration // how often a status record goes up while the link is up
	ConfigTopic    string        // "" disables remote config
	ConfigKeys     []string      // files holding the ed25519 public keys an overlay must be signed by
}

// ReceiptsTopic is the receipts Kafka topic with {gateway_id} filled in.
func (c *Config) ReceiptsTopic() string {
	return expandGatewayID(c.Receipts.KafkaTopic, c.ID)
}

// RecordOverhead is what a Kafka record adds to an MQTT publish's topic,
// properties and payload (its key, the gateway's headers, framing): an
// mqtt.max_packet_size plus this must fit kafka.max_message_bytes.
const RecordOverhead = 4096
