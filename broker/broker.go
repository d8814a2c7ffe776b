// Package broker runs the embedded MQTT broker (mochi): listeners, auth, ACL,
// persistent sessions, and the ingest hook that stores every routed publish in
// the uplink buffer before acknowledging it. It never talks to Kafka.
package broker

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/internal/boltfile"
	"github.com/edgegw/gateway/internal/logonce"
	"github.com/edgegw/gateway/rules"
	bbolt "go.etcd.io/bbolt"
)

// Options configure New.
type Options struct {
	Config *config.Config // MQTT, ACL and data_dir are used; required
	Rules  *rules.Set     // initial routes; required
	Buffer *buffer.Buffer // the uplink buffer; required
	Logger *slog.Logger   // nil discards
	// Registerer receives the broker's metrics; nil registers nowhere.
	Registerer prometheus.Registerer
	// NoSessionStore disables persistent broker sessions (benchmarks that
	// measure their cost).
	NoSessionStore bool
}

// Broker is the embedded MQTT broker.
type Broker struct {
	opts     Options
	log      *slog.Logger
	server   *mqtt.Server
	buf      *buffer.Buffer
	ingest   *ingestHook
	auth     *authHook
	downlink *downlinkHook
	ruleSet  atomic.Pointer[rules.Set]

	localSubs localSubs // which topics local subscribers want (see localsubs.go)

	tcp    []*tcpListener // for Addr()
	ws     *wsListener
	store  *sessionStore // closed after the ackers, see Close
	limits *sessionLimits
	bounds *boundsHook

	retained       *retainedBook // retained messages per client and in total
	pending        *pendingConns // connections not logged in yet
	receiptsFilter []string      // receipts.mqtt_topic for any device, split in levels

	ackers    sync.WaitGroup
	listening atomic.Bool
	closeOnce sync.Once

	certLogin       bool // a TLS listener verifies client certificates
	loginRefused    *prometheus.CounterVec
	sessionsEvicted prometheus.Counter

	stored   *prometheus.CounterVec
	refused  *prometheus.CounterVec
	refusals sync.Map // route -> *atomic.Uint64 (the "rejected" drops of /status)
	logs     logonce.Set
	// logEvery rate-limits what one client can make the broker log (see
	// logonce.Every): once a minute per client and kind.
	logEvery logonce.Every

	malformed       prometheus.Counter // packets refused before mochi decoded them (frameGuard)
	reservedDropped prometheus.Counter // user properties with a reserved header name, not copied
	clientPanics    prometheus.Counter // panics in mochi contained to their client (serveConn)

	quarantined string // where a corrupt sessions.db was moved at start, or ""
}

// New builds the broker and its listeners; it does not accept connections
// until Start.
func New(opts Options) (*Broker, error) {
	if opts.Config == nil || opts.Rules == nil || opts.Buffer == nil {
		return nil, errors.New("broker: Config, Rules and Buffer are required")
	}
	lg := opts.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	cfg := opts.Config
	b := &Broker{opts: opts, log: lg, buf: opts.Buffer}
	b.ruleSet.Store(opts.Rules)

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = uint32(cfg.MQTT.MaxPacketSize)
	caps.ReceiveMaximum = uint16(cfg.MQTT.MaxInflight)
	// The whole in-flight map of a client: its deliveries (at most
	// max_inflight, see boundsHook), its own QoS 2 publishes awaiting
	// PUBREL (at most max_inflight, the receive maximum) and one receipt.
	caps.MaximumInflight = uint16(min(2*cfg.MQTT.MaxInflight+1, 65535))
	// Resource bounds (DESIGN invariant 12). mochi's defaults keep an
	// 8,192-slot outbound queue per client, stored sessions included, and
	// accept 65,535 topic aliases and sessions that never expire.
	caps.MaximumClientWritesPending = int32(max(2*cfg.MQTT.MaxInflight, 64))
	caps.TopicAliasMaximum = uint16(cfg.MQTT.TopicAliasMax)
	caps.MaximumSessionExpiryInterval = uint32(cfg.MQTT.MaxSessionExpiry / time.Second)
	b.server = mqtt.New(&mqtt.Options{
		InlineClient: true, // receipts are published in-process
		Capabilities: caps,
		// no payloads, and at most once a minute per client and message
		Logger: slog.New(newMochiLog(lg.Handler())).With("component", "mqtt"),
	})

	users := map[string][]byte{}
	if cfg.MQTT.UsersFile != "" {
		var err error
		if users, err = LoadUsers(cfg.MQTT.UsersFile); err != nil {
			return nil, fmt.Errorf("broker: %w", err)
		}
	}
	b.certLogin = cfg.MQTT.TLS.Address != "" && cfg.MQTT.TLS.ClientCAFile != ""
	b.auth = &authHook{
		b:     b,
		users: users,
		anonymous: map[string]bool{
			"tcp": cfg.MQTT.AnonymousTCP,
			"tls": cfg.MQTT.AnonymousTLS,
			"ws":  cfg.MQTT.AnonymousWebsocket,
		},
		bind:        cfg.MQTT.BindsClientID(),
		maxClientID: cfg.MQTT.MaxClientIDLength,
		maxUsername: cfg.MQTT.MaxUsernameLength,
		logins:      newLoginGuard(),
	}
	if len(users) > 0 {
		b.auth.dummy = dummyHash(users)
	}
	acl := cfg.ACL
	b.auth.acl.Store(&acl)
	b.ingest = &ingestHook{b: b}
	b.downlink = &downlinkHook{b: b, inflight: map[string]downlinkInflight{}, recent: map[string]*recentIDs{}}
	b.bounds = newBoundsHook(b, cfg, lg)
	b.retained = newRetainedBook(cfg.MQTT.Bounds)
	b.pending = newPendingConns(cfg.MQTT.Bounds.MaxPending, cfg.MQTT.Bounds.MaxPendingPerAddress)
	b.receiptsFilter = receiptsFilterOf(cfg)

	b.stored = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gateway_ingest_messages_total",
		Help: "Publishes stored in the uplink buffer, by route and result (stored, duplicate, failed).",
	}, []string{"route", "result"})
	b.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gateway_ingest_refused_total",
		Help: "Publishes refused (never acknowledged as success), by route and reason.",
	}, []string{"route", "reason"})
	b.loginRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gateway_mqtt_connect_refused_total",
		Help: "CONNECTs refused by the gateway's checks, by reason (bad_credentials, anonymous, client_id_not_bound, session_owned, will_denied, login_backoff, ...).",
	}, []string{"reason"})
	b.sessionsEvicted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gateway_mqtt_sessions_evicted_total",
		Help: "Stored sessions of offline clients removed because mqtt.max_sessions was reached (longest offline first).",
	})
	b.malformed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gateway_mqtt_malformed_packets_total",
		Help: "Packets the gateway refused before the MQTT broker decoded them (a SUBSCRIBE or UNSUBSCRIBE that is cut short); each ended its client's connection.",
	})
	b.reservedDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gateway_ingest_user_properties_dropped_total",
		Help: "MQTT 5 user properties not copied into Kafka headers because their name is reserved for the gateway's own (gw.*, mqtt.*).",
	})
	b.clientPanics = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gateway_mqtt_client_panics_total",
		Help: "Panics in the MQTT broker while reading a client's packets, contained to that client: it was disconnected, everyone else went on.",
	})
	retainedCount := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gateway_mqtt_retained_messages",
		Help: "Retained messages clients set and the broker holds (bounded by mqtt.max_retained_messages).",
	}, func() float64 { n, _ := b.retained.usage(); return float64(n) })
	retainedBytes := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gateway_mqtt_retained_bytes",
		Help: "Their bytes: topic, payload and properties (bounded by mqtt.max_retained_bytes).",
	}, func() float64 { _, n := b.retained.usage(); return float64(n) })
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{b.pending.refused, b.pending.gauge, retainedCount, retainedBytes, b.stored, b.refused, b.loginRefused, b.sessionsEvicted, b.malformed, b.clientPanics, b.reservedDropped, b.bounds.deliveriesDropped, b.bounds.subsRefused} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("broker: metrics: %w", err)
			}
		}
	}

	if err := b.server.AddHook(b.auth, nil); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	if err := b.server.AddHook(b.ingest, nil); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	if !opts.NoSessionStore {
		store := newSessionStore(filepath.Join(cfg.DataDir, "sessions.db"), b.ingest, b.downlink, b.log)
		b.store = store
		path := filepath.Join(cfg.DataDir, "sessions.db")
		// A corrupt sessions file must not stop the gateway or crash it
		// later: moved aside, the gateway starts with no stored sessions.
		moved, cause := boltfile.VerifyOrQuarantine(path, &bbolt.Options{Timeout: 2e9, ReadOnly: true}, time.Now())
		if moved != "" {
			b.quarantined = moved
			lg.Error("broker: sessions.db could not be read; moved it aside and started with no stored sessions",
				"error", cause, "kept_as", moved)
		} else if cause != nil {
			return nil, fmt.Errorf("broker: session store: %w", cause)
		}
		if err := b.server.AddHook(store, nil); err != nil {
			return nil, fmt.Errorf("broker: session store: %w", err)
		}
	}

	if err := b.server.AddHook(b.bounds, nil); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}

	b.limits = &sessionLimits{b: b, log: lg, expiry: cfg.MQTT.MaxSessionExpiry, max: cfg.MQTT.MaxSessions,
		now: time.Now, offline: map[string]time.Time{}}
	if err := b.server.AddHook(b.limits, nil); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}

	// After the session store: it asks the downlink hook whether a completed
	// packet was a downlink one before the hook forgets it.
	if err := b.server.AddHook(b.downlink, nil); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}

	if err := b.addListeners(cfg); err != nil {
		return nil, err
	}
	return b, nil
}

// stopListenerClients ends the clients of one listener at shutdown, as
// mochi's closeListenerClients does, without its deadlock: mochi v2.7.9's
// Clients.GetByListener takes the clients' read lock and calls Len, which
// takes it again; a connection ending in between (Clients.Delete waits for
// the write lock) blocks both forever, and shutdown with them. GetAll takes
// the lock once. TestCloseWhileClientsDisconnect pins it.
func (b *Broker) stopListenerClients(listener string) {
	for _, cl := range b.server.Clients.GetAll() {
		if cl.Net.Listener == listener && !cl.Closed() {
			cl.Stop(packets.ErrServerShuttingDown)
		}
	}
}

// Quarantined returns where a corrupt sessions.db was moved at start, or "".
func (b *Broker) Quarantined() string { return b.quarantined }

func (b *Broker) addListeners(cfg *config.Config) error {
	limits := connLimits{connectTimeout: cfg.MQTT.ConnectTimeout, maxConnect: uint32(cfg.MQTT.MaxConnectSize),
		maxPacket: uint32(cfg.MQTT.MaxPacketSize), stopClients: b.stopListenerClients,
		events: &connEvents{malformed: b.countMalformed}, panicked: b.endPanicked, pending: b.pending}
	if cfg.MQTT.Address != "" {
		l := newTCPListener("tcp", cfg.MQTT.Address, nil, limits)
		b.tcp = append(b.tcp, l)
		if err := b.server.AddListener(l); err != nil {
			return fmt.Errorf("broker: mqtt.address %s: %w", cfg.MQTT.Address, err)
		}
	}
	if t := cfg.MQTT.TLS; t.Address != "" {
		tc, err := serverTLS(t, cfg.MQTT.UsersFile != "", func() { b.countLoginRefused("certificate_revoked") }, b.log)
		if err != nil {
			return err
		}
		l := newTCPListener("tls", t.Address, tc, limits)
		b.tcp = append(b.tcp, l)
		if err := b.server.AddListener(l); err != nil {
			return fmt.Errorf("broker: mqtt.tls.address %s: %w", t.Address, err)
		}
	}
	if cfg.MQTT.WebsocketAddress != "" {
		ws := newWSListener("ws", cfg.MQTT.WebsocketAddress, limits)
		b.ws = ws
		if err := b.server.AddListener(ws); err != nil {
			return fmt.Errorf("broker: mqtt.websocket_address %s: %w", cfg.MQTT.WebsocketAddress, err)
		}
	}
	return nil
}

// serverTLS builds the TLS listener's config. With client_ca_file, a client
// certificate is verified when presented; it is required unless passwords
// (a users file) are another way in.
//
// With crl_file, a client certificate its issuer's CRL lists is refused in
// the handshake (revoked is called for each).
func serverTLS(t config.ListenerTLS, passwords bool, revoked func(), log *slog.Logger) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("broker: mqtt.tls.cert_file/key_file: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if t.ClientCAFile != "" {
		pem, err := os.ReadFile(t.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("broker: mqtt.tls.client_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("broker: mqtt.tls.client_ca_file: no certificates in %s", t.ClientCAFile)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
		if passwords {
			tc.ClientAuth = tls.VerifyClientCertIfGiven
		}
		if t.CRLFile != "" {
			rv, err := loadCRLs(t.CRLFile, parseCerts(pem), time.Now())
			if err != nil {
				return nil, fmt.Errorf("broker: %w", err)
			}
			for _, issuer := range rv.stale {
				log.Warn("broker: a CRL of mqtt.tls.crl_file is past its next update; it still applies, but fetch a fresh one", "issuer", issuer)
			}
			tc.VerifyPeerCertificate = func(_ [][]byte, chains [][]*x509.Certificate) error {
				if err := rv.check(chains); err != nil {
					if revoked != nil {
						revoked()
					}
					return err
				}
				return nil
			}
		}
	}
	return tc, nil
}

// Start begins serving. Listener errors (address in use) are returned.
func (b *Broker) Start() error {
	if err := b.server.Serve(); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	b.limits.restore()
	b.loadRetained()
	b.bounds.beat.Store(time.Now().UnixNano())
	b.listening.Store(true)
	return nil
}

// Listening reports whether the MQTT listeners are serving.
func (b *Broker) Listening() bool { return b.listening.Load() }

// Ready returns nil while the broker serves: its listeners are open and
// mochi's event loop makes progress (it ticks every second; one stuck for
// longer than loopStall means clients are stuck too, and /readyz must say
// so, so that the watchdog restarts the process). Otherwise why not.
func (b *Broker) Ready() error {
	if !b.listening.Load() {
		return errors.New("the MQTT listeners are not serving")
	}
	if last, stalled := b.bounds.loopStalled(time.Now()); stalled {
		return fmt.Errorf("the MQTT broker's event loop has made no progress since %s", last.UTC().Format(time.RFC3339))
	}
	return nil
}

// Addr returns the bound address of a listener ("tcp", "tls" or "ws"); useful
// with ":0" in tests.
func (b *Broker) Addr(id string) string {
	for _, l := range b.tcp {
		if l.id == id {
			return l.Address()
		}
	}
	if id == "ws" && b.ws != nil {
		return b.ws.Address()
	}
	return ""
}

// Server is the mochi server, for in-process publishing (receipts).
func (b *Broker) Server() *mqtt.Server { return b.server }

// SetRules swaps the routes used for new publishes (config reload).
func (b *Broker) SetRules(s *rules.Set) { b.ruleSet.Store(s) }

// SetACL swaps the ACL (config reload).
func (b *Broker) SetACL(acl config.ACL) { b.auth.acl.Store(&acl) }

func (b *Broker) rules() *rules.Set { return b.ruleSet.Load() }

// Refused returns, per route, how many publishes were refused ("" for
// unrouted ones).
func (b *Broker) Refused() map[string]uint64 {
	out := map[string]uint64{}
	b.refusals.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Uint64).Load()
		return true
	})
	return out
}

func (b *Broker) countRefused(route, reason string) {
	b.refused.WithLabelValues(route, reason).Inc()
	v, _ := b.refusals.LoadOrStore(route, new(atomic.Uint64))
	v.(*atomic.Uint64).Add(1)
	b.logs.Warn(b.log, route+"/"+reason, "publish refused (logged once per route and reason; see gateway_ingest_refused_total)", "route", route, "reason", reason)
}

func (b *Broker) countStored(route string, r buffer.Result) {
	switch {
	case r.Err != nil:
		b.stored.WithLabelValues(route, "failed").Inc()
	case r.Duplicate:
		b.stored.WithLabelValues(route, "duplicate").Inc()
	default:
		b.stored.WithLabelValues(route, "stored").Inc()
	}
}

// closeWait bounds each wait of Close for client goroutines.
const closeWait = 10 * time.Second

// Close stops the listeners, disconnects clients and waits for the ackers to
// finish. The buffer is closed by its owner afterwards. Safe to call twice.
func (b *Broker) Close() error {
	var err error
	b.closeOnce.Do(func() {
		b.listening.Store(false)
		// mochi's Close waits for every client goroutine; one that never
		// returns (a client wedged in mochi) must not hold shutdown, and
		// with it the buffer's last commit, forever.
		closed := make(chan struct{})
		go func() { b.server.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(closeWait):
			b.log.Error("broker: some MQTT clients did not end within the shutdown bound; going on without them", "waited", closeWait)
		}
		// mochi ends every client (and so every acker) on Close; the bound
		// only guards against a client goroutine that never returns.
		waited := make(chan struct{})
		go func() { b.ackers.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(closeWait):
			b.log.Warn("broker: some client ackers did not finish within the shutdown bound", "waited", closeWait)
		}
		err = errors.Join(err, b.limits.close())
		if b.store != nil {
			err = errors.Join(err, b.store.Close())
		}
	})
	return err
}

func (b *Broker) countMalformed(packet, why string) {
	b.malformed.Inc()
	b.logEvery.Log(b.log, slog.LevelWarn, "malformed/"+packet, "malformed packet: the client was disconnected (see gateway_mqtt_malformed_packets_total)",
		"packet", packet, "problem", why)
}

func (b *Broker) countLoginRefused(reason string) {
	b.loginRefused.WithLabelValues(reason).Inc()
	b.logs.Warn(b.log, "connect/"+reason, "connect refused (logged once per reason; see gateway_mqtt_connect_refused_total)", "reason", reason)
}
