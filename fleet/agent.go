package fleet

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	metrics "github.com/rcrowley/go-metrics"

	"github.com/edgegw/gateway/admin"
	"github.com/edgegw/gateway/config"
)

// Options configure an Agent. Fields marked required must be set; the
// others may be nil (the record then reports zero for them).
type Options struct {
	// Config supplies id, data_dir, kafka and fleet (the file's: fleet keys
	// are not hot-reloadable). Required.
	Config *config.Config
	// Version is the gateway's release, for the record.
	Version string
	// Started is when the process started (uptime_s).
	Started time.Time
	// Snapshot is the /status snapshot (admin.BuildStatus). Required.
	Snapshot func() *admin.Status
	// Link is the uplink's state; polled every second. Required.
	Link func() admin.LinkStatus
	// UrgentBacklog is the backlog of the most urgent route(s); a status
	// record waits while it is not 0, at most one status interval.
	UrgentBacklog func() int64
	// Stored counts the publishes the buffer stored since start
	// (last_outage.buffered); Backlog is the undelivered messages now.
	Stored  func() uint64
	Backlog func() int64
	// Clients is the broker's connected clients and known sessions.
	Clients func() (connected, sessions int)
	// WrittenBytes is what the process wrote to storage so far
	// (/proc/self/io write_bytes); false where unknown.
	WrittenBytes func() (int64, bool)
	// Running is the configuration in force (for config.hash).
	Running func() *config.Config
	// Check validates the local file with layers merged over it, changing
	// nothing; Apply makes the running gateway run it, through the same
	// path as a change of the file, and returns the keys that wait for a
	// restart. Required with fleet.config_topic.
	Check func(layers [][]byte) error
	Apply func(layers [][]byte) (restart []string, err error)
	// Keys verify overlays (fleet.config_keys, loaded). Required with
	// fleet.config_topic.
	Keys []PublicKey
	// Logger gets state changes; nil discards.
	Logger *slog.Logger
	// Registerer gets the agent's metrics; nil registers nowhere.
	Registerer prometheus.Registerer
	// SaramaConfig, if set, adjusts both Kafka clients' settings (tests).
	SaramaConfig func(*sarama.Config)
}

// maxRefusals is how many refusals a record lists.
const maxRefusals = 8

// Agent runs on the box: status records up, signed overlays down.
type Agent struct {
	opts     Options
	id       string
	fleet    config.Fleet
	log      *slog.Logger
	interval time.Duration

	quit      chan struct{}
	soon      chan struct{} // a record is owed soon (an overlay applied or refused)
	wg        sync.WaitGroup
	startOnce sync.Once
	closeOnce sync.Once

	mu           sync.Mutex
	applied      map[string]*Overlay // overlays accepted (kept in data_dir)
	inForce      bool                // the applied overlays validate over the local file and run
	pending      []string            // keys waiting for a restart
	refused      []Refusal           // since the last accepted overlay
	refusedTotal uint64
	outage       Outage
	lastWarn     time.Time

	flashMu sync.Mutex
	flash   []flashSample

	m agentMetrics
}

type flashSample struct {
	at    time.Time
	bytes int64
}

type agentMetrics struct {
	sent, sendErrors, sentBytes prometheus.Counter
	applied                     prometheus.Counter
	refused                     *prometheus.CounterVec
	version                     prometheus.Gauge
	statusReg, configReg        metrics.Registry
}

// New checks the options and reads the overlays kept in data_dir,
// re-verifying them with the keys configured now. It does no network I/O;
// Layers then gives what to merge over the file at start.
func New(opts Options) (*Agent, error) {
	if opts.Config == nil || opts.Snapshot == nil || opts.Link == nil {
		return nil, errors.New("fleet: Config, Snapshot and Link are required")
	}
	f := opts.Config.Fleet
	if f.ConfigTopic != "" && (opts.Check == nil || opts.Apply == nil || len(opts.Keys) == 0) {
		return nil, errors.New("fleet: remote config needs Check, Apply and at least one key")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if f.StatusInterval <= 0 {
		f.StatusInterval = time.Minute
	}
	if opts.Started.IsZero() {
		opts.Started = time.Now()
	}
	a := &Agent{
		opts:     opts,
		id:       opts.Config.ID,
		fleet:    f,
		log:      opts.Logger,
		interval: f.StatusInterval,
		quit:     make(chan struct{}),
		soon:     make(chan struct{}, 1),
		applied:  map[string]*Overlay{},
		inForce:  true,
	}
	a.initMetrics()
	if f.ConfigTopic != "" {
		stored, err := LoadStore(opts.Config.DataDir)
		if err != nil {
			// The topic still holds what was applied: it is read again.
			a.log.Error("the applied fleet overlays could not be read; running the local file until the config topic is read again", "error", err)
		} else {
			ok, refused := VerifyStored(stored, opts.Keys, a.id)
			a.applied = ok
			for _, r := range refused {
				a.refuse(r)
			}
		}
		a.m.version.Set(float64(a.fleetVersion()))
	}
	return a, nil
}

func (a *Agent) initMetrics() {
	a.m.statusReg = metrics.NewRegistry()
	a.m.configReg = metrics.NewRegistry()
	a.m.sent = prometheus.NewCounter(prometheus.CounterOpts{Name: "gateway_status_records_sent_total",
		Help: "Status records Kafka acknowledged on fleet.status_topic."})
	a.m.sendErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "gateway_status_record_errors_total",
		Help: "Status records that could not be sent (kept in memory, the newest sent at the next chance)."})
	a.m.sentBytes = prometheus.NewCounter(prometheus.CounterOpts{Name: "gateway_status_record_bytes_total",
		Help: "Bytes of the status records sent (key and JSON value, before compression)."})
	a.m.applied = prometheus.NewCounter(prometheus.CounterOpts{Name: "gateway_remote_config_applied_total",
		Help: "Signed overlays from fleet.config_topic accepted and applied."})
	a.m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gateway_remote_config_refused_total",
		Help: "Overlays from fleet.config_topic refused, by reason: unsigned, bad_signature, older, section, invalid, malformed."}, []string{"reason"})
	a.m.version = prometheus.NewGauge(prometheus.GaugeOpts{Name: "gateway_remote_config_version",
		Help: "The newest overlay version applied (of the box's id and \"*\"); 0 when none is."})
	reg := a.opts.Registerer
	if reg == nil {
		return
	}
	cs := []prometheus.Collector{a.m.applied, a.m.refused, a.m.version}
	if a.fleet.StatusTopic != "" {
		cs = append(cs, a.m.sent, a.m.sendErrors, a.m.sentBytes, kafkaBytes("gateway_status_kafka_bytes_total",
			"Bytes the status producer sent to and received from Kafka (requests and responses, before TCP and TLS).", a.m.statusReg))
	}
	if a.fleet.ConfigTopic != "" {
		cs = append(cs, kafkaBytes("gateway_remote_config_kafka_bytes_total",
			"Bytes the config reader sent to and received from Kafka (fetches included, before TCP and TLS).", a.m.configReg))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			a.log.Warn("fleet: metric not registered", "error", err)
		}
	}
}

// kafkaBytes reads sarama's byte meters of one client's registry.
func kafkaBytes(name, help string, reg metrics.Registry) prometheus.Collector {
	return &meterCollector{desc: prometheus.NewDesc(name, help, []string{"direction"}, nil), reg: reg}
}

type meterCollector struct {
	desc *prometheus.Desc
	reg  metrics.Registry
}

func (m *meterCollector) Describe(ch chan<- *prometheus.Desc) { ch <- m.desc }
func (m *meterCollector) Collect(ch chan<- prometheus.Metric) {
	in, out := MeterBytes(m.reg)
	ch <- prometheus.MustNewConstMetric(m.desc, prometheus.CounterValue, float64(out), "sent")
	ch <- prometheus.MustNewConstMetric(m.desc, prometheus.CounterValue, float64(in), "received")
}

// MeterBytes is what a sarama client with this metric registry received and
// sent so far.
func MeterBytes(reg metrics.Registry) (in, out int64) {
	if m, ok := reg.Get("incoming-byte-rate").(metrics.Meter); ok {
		in = m.Count()
	}
	if m, ok := reg.Get("outgoing-byte-rate").(metrics.Meter); ok {
		out = m.Count()
	}
	return in, out
}

// Layers are the verified overlays to merge over the local file, in order.
func (a *Agent) Layers() [][]byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	return Layers(a.applied, a.id)
}

// SetInForce records whether the applied overlays run: false when the local
// file with them does not validate (the box then runs the file alone, and
// reports why in its next status record).
func (a *Agent) SetInForce(ok bool, why error) {
	a.mu.Lock()
	a.inForce = ok
	a.mu.Unlock()
	if ok || why == nil {
		return
	}
	v, key := a.newestApplied()
	a.refuse(Refusal{Key: key, Version: v, Reason: ReasonInvalid,
		Detail: "the applied overlay does not validate over the local file, which runs alone: " + oneLine(why.Error())})
	a.kick()
}

func (a *Agent) newestApplied() (uint64, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var v uint64
	key := ""
	for k, o := range a.applied {
		if o.Version > v {
			v, key = o.Version, k
		}
	}
	return v, key
}

// Start runs the status sender and the config reader in the background.
func (a *Agent) Start() {
	a.startOnce.Do(func() {
		if a.fleet.StatusTopic != "" {
			a.wg.Add(1)
			go a.statusLoop()
		}
		if a.fleet.ConfigTopic != "" {
			a.wg.Add(1)
			go a.configLoop()
		}
	})
}

// Close stops both and waits for them. Safe to call twice.
func (a *Agent) Close() error {
	a.closeOnce.Do(func() {
		close(a.quit)
		a.startOnce.Do(func() {})
		a.wg.Wait()
	})
	return nil
}

func (a *Agent) stopping() bool {
	select {
	case <-a.quit:
		return true
	default:
		return false
	}
}

func (a *Agent) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-a.quit:
		return false
	}
}

// kick asks for a status record soon (after an overlay was applied or
// refused), so the center sees it without waiting a whole interval.
func (a *Agent) kick() {
	select {
	case a.soon <- struct{}{}:
	default:
	}
}

func (a *Agent) linkUp() bool { return a.opts.Link().State == admin.LinkUp }

// refuse records a refusal for the next status record, counts and logs it
// (a warning at most once a minute: a flood of forged records must not
// flood the journal, which is on the same flash).
func (a *Agent) refuse(r Refusal) {
	if r.At.IsZero() {
		r.At = time.Now().UTC().Truncate(time.Millisecond)
	}
	a.mu.Lock()
	a.refused = append(a.refused, r)
	if len(a.refused) > maxRefusals {
		a.refused = a.refused[len(a.refused)-maxRefusals:]
	}
	a.refusedTotal++
	warn := time.Since(a.lastWarn) > time.Minute
	if warn {
		a.lastWarn = time.Now()
	}
	a.mu.Unlock()
	a.m.refused.WithLabelValues(r.Reason).Inc()
	if warn {
		a.log.Warn("fleet: config overlay refused; the running config stays", "key", r.Key, "version", r.Version,
			"offset", r.Offset, "reason", r.Reason, "detail", r.Detail)
	} else {
		a.log.Debug("fleet: config overlay refused", "key", r.Key, "version", r.Version, "reason", r.Reason, "detail", r.Detail)
	}
}

func (a *Agent) fleetVersion() uint64 {
	var v uint64
	for _, o := range a.applied {
		v = max(v, o.Version)
	}
	return v
}

// configState is the record's config part.
func (a *Agent) configState() ConfigState {
	cs := ConfigState{Source: "file", Overlays: map[string]uint64{}}
	if a.opts.Running != nil {
		cs.Hash = ConfigHash(a.opts.Running())
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, o := range a.applied {
		cs.Overlays[k] = o.Version
	}
	cs.FleetVersion = a.fleetVersion()
	if a.inForce && len(Layers(a.applied, a.id)) > 0 {
		cs.Source = "file+fleet"
	}
	cs.PendingRestart = append([]string{}, a.pending...)
	cs.Refused = append([]Refusal{}, a.refused...)
	cs.RefusedTotal = a.refusedTotal
	return cs
}

// ConfigHash identifies a configuration: 16 hex digits of the SHA-256 of
// its keys and values (config.Flatten, secrets redacted), sorted.
func ConfigHash(c *config.Config) string {
	if c == nil {
		return ""
	}
	flat := config.Flatten(c)
	keys := make([]string, 0, len(flat))
	for k := range flat {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s=%s\n", k, flat[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// backoff is exponential from lo to hi with jitter, so a fleet that comes
// back at once does not retry in step.
func backoff(attempt int, lo, hi time.Duration) time.Duration {
	d := lo
	for i := 0; i < attempt && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d/2 + rand.N(d/2+1)
}
