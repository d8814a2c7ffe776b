// Package receipts is the downlink: a Kafka consumer group on this gateway's
// receipts topic, a durable per-device outbox, delivery of each receipt to the
// one terminal whose client id is its device (through the broker, in
// process), and a delivery confirmation through the uplink buffer when the
// terminal acknowledges it (DESIGN invariant 6).
//
// A receipt's life: consumed from Kafka; written to the outbox in an fsync'd
// transaction (batched); only then its offset is marked for commit. It is
// sent to its device when the device is connected and subscribed to its
// receipts topic, one at a time per device so order holds. On the terminal's
// PUBACK a confirmation record is appended to the uplink buffer, and once that
// is committed the receipt leaves the outbox. A receipt older than
// receipts.max_age leaves it too, counted as dropped.
package receipts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/IBM/sarama"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgegw/gateway/broker"
	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/internal/logonce"
	"github.com/edgegw/gateway/kafkaclient"
	"github.com/edgegw/gateway/rules"
)

// Broker is what receipts needs from the MQTT broker (*broker.Broker).
type Broker interface {
	// SendDownlink delivers to the connected client whose id is the device.
	SendDownlink(clientID string, token uint64, m broker.DownlinkMessage) (acked bool, err error)
	// DownlinkInflight is the token awaiting the client's acknowledgement.
	DownlinkInflight(clientID string) (uint64, bool)
	// SetDownlinkEvents registers the receiver of readiness and acks.
	SetDownlinkEvents(ev broker.DownlinkEvents)
}

// Appender is the uplink buffer (*buffer.Buffer), which carries the delivery
// confirmations.
type Appender interface {
	Append(a *buffer.Append) error
}

// Options configure New.
type Options struct {
	// Config supplies id, data_dir, kafka and receipts. Required.
	Config *config.Config
	// Broker delivers to terminals. Required.
	Broker Broker
	// Buffer carries confirmations; required unless receipts.confirm_topic is "".
	Buffer Appender
	// Path of the outbox file; default data_dir/receipts.db.
	Path string
	// Logger for state changes; nil discards.
	Logger *slog.Logger
	// Registerer receives the metrics; nil registers nowhere.
	Registerer prometheus.Registerer
	// Workers deliver to devices in parallel (default 8).
	Workers int
	// SweepInterval is how often expired receipts are dropped and devices
	// with pending receipts are retried (default max_age/10, between 100ms
	// and 1 minute).
	SweepInterval time.Duration
	// SaramaConfig, if set, adjusts the consumer configuration after the
	// gateway's own settings (tests shorten timeouts with it).
	SaramaConfig func(*sarama.Config)
}

// Receipts is the running downlink.
type Receipts struct {
	opts   Options
	cfg    config.Receipts
	log    *slog.Logger
	topic  string
	group  string
	sarama *sarama.Config
	box    *outbox
	brk    Broker

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// delivery queue: devices to look at, each at most once in the queue and
	// handled by one worker at a time
	qmu     sync.Mutex
	qcond   *sync.Cond
	queue   []string
	queued  map[string]bool
	running map[string]bool
	again   map[string]bool
	qclosed bool

	// acknowledged receipts on their way out of the outbox
	amu     sync.Mutex
	acked   map[ref]bool
	retry   []ref // acknowledged receipts whose confirmation is still to be stored (guarded by amu)
	acks    chan ref
	closeMu sync.RWMutex // held for reading while sending on acks; Close closes it under the write lock
	// viewMu is held for reading around each outbox read that skips acked
	// receipts. A read that began before a removal committed still sees the
	// removed receipt, so the finisher forgets an acked receipt only after
	// taking it for writing: no read from before the removal is left then.
	viewMu  sync.RWMutex
	aclosed bool

	started   atomic.Bool
	closeOnce sync.Once
	closeErr  error
	dropped   atomic.Uint64 // all reasons
	dropAge   atomic.Uint64 // reason max_age
	dropDev   atomic.Uint64 // reason invalid_device
	bounded   boundCounts   // reasons too_many_devices and device_full
	logs      logonce.Set

	quarantined string // where a corrupt receipts.db was moved at start, or ""

	mConsumed  prometheus.Counter
	mDelivered prometheus.Counter
	mAcked     prometheus.Counter
	mDropped   *prometheus.CounterVec
	mConfirm   *prometheus.CounterVec

	mUnconfirmed prometheus.Counter
}

// New validates the options and opens the outbox; it does no network I/O.
func New(opts Options) (*Receipts, error) {
	if opts.Config == nil || opts.Broker == nil {
		return nil, errors.New("receipts: Config and Broker are required")
	}
	cfg := opts.Config
	if cfg.Receipts.ConfirmTopic != "" && opts.Buffer == nil {
		return nil, errors.New("receipts: Buffer is required when receipts.confirm_topic is set")
	}
	if cfg.Receipts.DeviceFrom != "key" && !strings.HasPrefix(cfg.Receipts.DeviceFrom, "header:") {
		return nil, fmt.Errorf("receipts: receipts.device_from must be key or header:NAME, not %q", cfg.Receipts.DeviceFrom)
	}
	lg := opts.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	if opts.Path == "" {
		opts.Path = filepath.Join(cfg.DataDir, "receipts.db")
	}
	if opts.Workers <= 0 {
		opts.Workers = 8
	}
	if opts.SweepInterval <= 0 {
		opts.SweepInterval = min(max(cfg.Receipts.MaxAge/10, 100*time.Millisecond), time.Minute)
	}
	sc, err := kafkaclient.Config(cfg.Kafka)
	if err != nil {
		return nil, fmt.Errorf("receipts: %w", err)
	}
	// Receipts produced before this gateway's first start are still its
	// terminals' receipts.
	sc.Consumer.Offsets.Initial = sarama.OffsetOldest
	sc.Consumer.Offsets.AutoCommit.Enable = true
	sc.Consumer.Offsets.AutoCommit.Interval = time.Second
	sc.Consumer.Return.Errors = true
	if sc.Version.IsAtLeast(sarama.V2_3_0_0) {
		// Static membership: a restarted gateway takes its partitions back at
		// once instead of waiting out the dead member's session timeout.
		sc.Consumer.Group.InstanceId = "gateway-" + cfg.ID
	}
	if opts.SaramaConfig != nil {
		opts.SaramaConfig(sc)
	}
	if err := sc.Validate(); err != nil {
		return nil, fmt.Errorf("receipts: kafka consumer config: %w", err)
	}

	r := &Receipts{
		opts:    opts,
		cfg:     cfg.Receipts,
		log:     lg,
		topic:   cfg.ReceiptsTopic(),
		group:   "gateway-" + cfg.ID + "-receipts",
		sarama:  sc,
		brk:     opts.Broker,
		queued:  map[string]bool{},
		running: map[string]bool{},
		again:   map[string]bool{},
		acked:   map[ref]bool{},
		acks:    make(chan ref, 4096),
	}
	r.qcond = sync.NewCond(&r.qmu)
	r.mConsumed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gateway_receipts_stored_total",
		Help: "Receipts consumed from Kafka and stored in device outboxes.",
	})
	r.mDelivered = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gateway_receipts_sent_total",
		Help: "Receipt deliveries written to terminals (first sends, not mochi's resends after a reconnect).",
	})
	r.mAcked = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gateway_receipts_acked_total",
		Help: "Receipts acknowledged by their terminal and removed from the outbox.",
	})
	r.mDropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gateway_receipts_dropped_total",
		Help: "Receipts dropped undelivered, by reason (max_age, invalid_device, too_many_devices, device_full).",
	}, []string{"reason"})
	r.mConfirm = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gateway_receipts_confirmations_total",
		Help: "Delivery confirmations appended to the uplink buffer, by result (stored, failed).",
	}, []string{"result"})
	r.mUnconfirmed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gateway_receipts_unconfirmed_total",
		Help: "Receipts delivered at QoS 0 (terminal subscribed at QoS 0): written, never acknowledged, so no confirmation was sent.",
	})
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{r.mConsumed, r.mDelivered, r.mAcked, r.mDropped, r.mConfirm, r.mUnconfirmed} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("receipts: metrics: %w", err)
			}
		}
	}
	var cause error
	if r.box, r.quarantined, cause, err = openOutboxQuarantine(opts.Path, time.Now()); err != nil {
		return nil, err
	}
	if r.quarantined != "" {
		lg.Error("receipts: receipts.db could not be read; moved it aside and started an empty outbox",
			"error", cause, "kept_as", r.quarantined)
	}
	return r, nil
}

// Start begins consuming and delivering; receipts left in the outbox by an
// earlier run are offered to their devices again. Kafka being unreachable is
// not an error: the consumer retries in the background.
func (r *Receipts) Start() {
	if !r.started.CompareAndSwap(false, true) {
		return
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.brk.SetDownlinkEvents(events{r})
	for i := 0; i < r.opts.Workers; i++ {
		r.wg.Add(1)
		go r.worker()
	}
	r.wg.Add(3)
	go r.consume()
	go r.finisher()
	go r.sweeper()
	for dev := range r.box.pendingAll() {
		r.kick(dev)
	}
	r.log.Info("receipts downlink started", "topic", r.topic, "group", r.group,
		"pending", r.box.pendingTotal())
}

// Close stops consuming (committing the offsets of what is stored), stops
// delivering, finishes the confirmations of receipts already acknowledged,
// and closes the outbox. The uplink buffer must still be open. Safe to call
// twice.
func (r *Receipts) Close() error {
	r.closeOnce.Do(func() {
		if r.started.Load() {
			r.brk.SetDownlinkEvents(nil)
			r.cancel()
			r.qmu.Lock()
			r.qclosed = true
			r.qcond.Broadcast()
			r.qmu.Unlock()
			r.closeMu.Lock()
			r.aclosed = true
			close(r.acks)
			r.closeMu.Unlock()
			r.wg.Wait()
		}
		r.closeErr = r.box.close()
	})
	return r.closeErr
}

// Quarantined returns where a corrupt receipts.db was moved at start, or "".
func (r *Receipts) Quarantined() string { return r.quarantined }

// Pending returns, per device, how many receipts wait in its outbox.
func (r *Receipts) Pending() map[string]int { return r.box.pendingAll() }

// Dropped is how many receipts were dropped undelivered since start
// (max_age or no valid device).
func (r *Receipts) Dropped() uint64 { return r.dropped.Load() }

// DroppedByReason is Dropped split by reason ("max_age", "invalid_device",
// and once one happened "too_many_devices", "device_full"), for /status;
// the first two keys are always present.
func (r *Receipts) DroppedByReason() map[string]uint64 {
	out := map[string]uint64{"max_age": r.dropAge.Load(), "invalid_device": r.dropDev.Load()}
	r.bounded.each(func(reason string, n uint64) { out[reason] = n })
	return out
}

// boundCounts counts receipts dropped by the outbox bounds, per reason.
type boundCounts struct {
	mu sync.Mutex
	n  map[string]uint64
}

func (b *boundCounts) Add(reason string, n uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.n == nil {
		b.n = map[string]uint64{}
	}
	b.n[reason] += n
}

func (b *boundCounts) each(f func(string, uint64)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, v := range b.n {
		f(k, v)
	}
}

// events adapts Receipts to broker.DownlinkEvents without exporting the
// methods on Receipts.
type events struct{ r *Receipts }

func (e events) DownlinkReady(clientID string) {
	if e.r.box.pendingCount(clientID) > 0 {
		e.r.kick(clientID)
	}
}

func (e events) DownlinkAcked(clientID string, token uint64) {
	e.r.ack(ref{Device: clientID, Seq: token})
}

// ack hands an acknowledged receipt to the finisher. It blocks while the
// finisher is behind (bounded memory; it slows the client's read loop).
func (r *Receipts) ack(rf ref) {
	r.closeMu.RLock()
	defer r.closeMu.RUnlock()
	if r.aclosed {
		return // shutting down: still in the outbox, delivered again after restart
	}
	r.amu.Lock()
	r.acked[rf] = true
	r.amu.Unlock()
	r.mAcked.Inc()
	r.acks <- rf // the finisher takes no closeMu, so it always drains
}

func (r *Receipts) isAcked(dev string) func(uint64) bool {
	return func(seq uint64) bool {
		r.amu.Lock()
		defer r.amu.Unlock()
		return r.acked[ref{Device: dev, Seq: seq}]
	}
}

// kick queues a device for a delivery attempt.
func (r *Receipts) kick(dev string) {
	r.qmu.Lock()
	defer r.qmu.Unlock()
	switch {
	case r.qclosed:
	case r.running[dev]:
		r.again[dev] = true
	case !r.queued[dev]:
		r.queued[dev] = true
		r.queue = append(r.queue, dev)
		r.qcond.Signal()
	}
}

func (r *Receipts) worker() {
	defer r.wg.Done()
	for {
		r.qmu.Lock()
		for len(r.queue) == 0 && !r.qclosed {
			r.qcond.Wait()
		}
		if r.qclosed {
			r.qmu.Unlock()
			return
		}
		dev := r.queue[0]
		r.queue[0] = ""
		r.queue = r.queue[1:]
		delete(r.queued, dev)
		r.running[dev] = true
		r.qmu.Unlock()

		r.deliver(dev)

		r.qmu.Lock()
		delete(r.running, dev)
		if r.again[dev] {
			delete(r.again, dev)
			if !r.queued[dev] && !r.qclosed {
				r.queued[dev] = true
				r.queue = append(r.queue, dev)
				r.qcond.Signal()
			}
		}
		r.qmu.Unlock()
	}
}

// deliver sends the device's oldest pending receipt if nothing is in flight
// to it. With QoS 0 it goes on to the next at once.
func (r *Receipts) deliver(dev string) {
	if r.box.pendingCount(dev) == 0 {
		return
	}
	if _, busy := r.brk.DownlinkInflight(dev); busy {
		return // its ack kicks the device again
	}
	cutoff := time.Now().Add(-r.cfg.MaxAge)
	for r.ctx.Err() == nil {
		r.viewMu.RLock()
		rc, ok, err := r.box.next(dev, r.isAcked(dev))
		r.viewMu.RUnlock()
		if err != nil {
			r.logs.Warn(r.log, "read", "receipts: reading the outbox failed", "error", err)
			return
		}
		if !ok {
			return
		}
		if r.cfg.MaxAge > 0 && rc.Stored.Before(cutoff) {
			r.drop([]ref{{Device: dev, Seq: rc.Seq}})
			continue
		}
		acked, err := r.brk.SendDownlink(dev, rc.Seq, r.message(&rc))
		if err != nil {
			return // not connected, not subscribed, or busy: an event kicks it again
		}
		r.mDelivered.Inc()
		if !acked {
			return
		}
		// QoS 0 (the terminal subscribed at QoS 0, or receipts.qos is 0):
		// written is all there is. No PUBACK, so no confirmation: it leaves
		// the outbox counted as unconfirmed (README "Receipts").
		r.unconfirmed(ref{Device: dev, Seq: rc.Seq})
	}
}

// unconfirmed removes a receipt delivered at QoS 0, which no terminal
// acknowledges, without a confirmation, and counts it.
func (r *Receipts) unconfirmed(rf ref) {
	if _, err := r.box.remove([]ref{rf}); err != nil {
		r.logs.Warn(r.log, "remove", "receipts: removing from the outbox failed", "error", err)
		return
	}
	r.mUnconfirmed.Inc()
	r.logs.Warn(r.log, "qos0", "receipts delivered at QoS 0 (the terminal subscribed at QoS 0): no acknowledgement, so no delivery confirmation (logged once; see gateway_receipts_unconfirmed_total)",
		"first_device", rf.Device)
}

// message builds the MQTT publish of a receipt (CONTRACT §4 downlink).
func (r *Receipts) message(rc *receipt) broker.DownlinkMessage {
	m := broker.DownlinkMessage{
		Topic:   strings.ReplaceAll(r.cfg.MQTTTopic, "{device}", rc.Device),
		Payload: rc.Payload,
		QoS:     r.cfg.QoS,
	}
	for _, h := range rc.Headers {
		if h.Key == "mqtt.correlation_data" {
			m.CorrelationData = h.Value
			continue
		}
		m.UserProperties = append(m.UserProperties, packets.UserProperty{Key: h.Key, Val: string(h.Value)})
	}
	return m
}

// drop removes expired receipts, counting them.
func (r *Receipts) drop(refs []ref) {
	n, err := r.box.remove(refs)
	if err != nil {
		r.logs.Warn(r.log, "remove", "receipts: removing from the outbox failed", "error", err)
		return
	}
	if n == 0 {
		return
	}
	r.dropped.Add(uint64(n))
	r.dropAge.Add(uint64(n))
	r.mDropped.WithLabelValues("max_age").Add(float64(n))
	r.logs.Warn(r.log, "max_age", "receipts older than receipts.max_age dropped undelivered (logged once; see gateway_receipts_dropped_total)",
		"max_age", r.cfg.MaxAge, "first_device", refs[0].Device)
}

// finisher turns acknowledgements into confirmations (through the uplink
// buffer) and removes the receipts from the outbox once those are committed:
// a crash in between re-delivers the receipt, it never loses the
// confirmation.
func (r *Receipts) finisher() {
	defer r.wg.Done()
	for rf := range r.acks {
		batch := []ref{rf}
	gather:
		for len(batch) < 1024 {
			select {
			case x, ok := <-r.acks:
				if !ok {
					break gather
				}
				batch = append(batch, x)
			default:
				break gather
			}
		}
		r.finish(batch)
	}
}

func (r *Receipts) finish(batch []ref) {
	done := batch   // leave the outbox
	var retry []ref // acknowledged, confirmation not stored yet: stay, retried
	keep := false   // true: leave everything in the outbox (the buffer is closing)
	if topic := r.cfg.ConfirmTopic; topic != "" {
		done, retry, keep = r.confirm(batch)
	}
	if !keep && len(done) > 0 {
		if _, err := r.box.remove(done); err != nil {
			r.logs.Warn(r.log, "remove", "receipts: removing from the outbox failed", "error", err)
		}
	}
	r.viewMu.Lock()
	r.amu.Lock()
	if keep {
		for _, rf := range batch {
			delete(r.acked, rf)
		}
	} else {
		for _, rf := range done {
			delete(r.acked, rf)
		}
		// Still acknowledged (so never sent to the terminal again), and
		// confirmed by the sweeper once the buffer takes it.
		r.retry = append(r.retry, retry...)
	}
	r.amu.Unlock()
	r.viewMu.Unlock()
	seen := map[string]bool{}
	for _, rf := range batch {
		if !seen[rf.Device] {
			seen[rf.Device] = true
			r.kick(rf.Device)
		}
	}
}

// confirm appends the confirmations of acknowledged receipts to the uplink
// buffer. A receipt leaves the outbox only once its confirmation is durably
// stored (done); those whose append failed are retried (retry); keep is true
// when the buffer is closing (the process stops: all stay, delivered and
// confirmed after the restart).
func (r *Receipts) confirm(batch []ref) (done, retry []ref, keep bool) {
	recs, err := r.box.get(batch)
	if err != nil {
		r.logs.Warn(r.log, "read", "receipts: reading the outbox failed", "error", err)
		return nil, batch, false
	}
	present := make(map[ref]bool, len(recs))
	for i := range recs {
		present[ref{Device: recs[i].Device, Seq: recs[i].Seq}] = true
	}
	for _, rf := range batch {
		if !present[rf] {
			done = append(done, rf) // gone already (expired): nothing to confirm
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var closed atomic.Int32
	var firstErr error
	result := func(rf ref, err error) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err == nil:
			done = append(done, rf)
		default:
			retry = append(retry, rf)
			if firstErr == nil {
				firstErr = err
			}
			if errors.Is(err, buffer.ErrClosed) {
				closed.Add(1)
			}
		}
	}
	for i := range recs {
		rc := &recs[i]
		rf := ref{Device: rc.Device, Seq: rc.Seq}
		wg.Add(1)
		err := r.opts.Buffer.Append(&buffer.Append{Record: r.confirmation(rc), Done: func(res buffer.Result) {
			result(rf, res.Err)
			wg.Done()
		}})
		if err != nil {
			result(rf, err)
			wg.Done()
		}
	}
	wg.Wait()
	r.mConfirm.WithLabelValues("stored").Add(float64(len(recs) - len(retry)))
	if len(retry) > 0 {
		r.mConfirm.WithLabelValues("failed").Add(float64(len(retry)))
		r.logs.Warn(r.log, "confirm", "receipts: storing delivery confirmations failed; the receipts stay in the outbox and their confirmations are retried",
			"failed", len(retry), "error", firstErr)
	}
	return done, retry, closed.Load() > 0
}

// retryConfirmations tries again the confirmations whose append failed.
func (r *Receipts) retryConfirmations() {
	r.amu.Lock()
	batch := r.retry
	r.retry = nil
	r.amu.Unlock()
	if len(batch) > 0 {
		r.finish(batch)
	}
}

// confirmation is the uplink record of CONTRACT §4 for a delivered receipt
// (gw.id and gw.seq are added by the bridge).
func (r *Receipts) confirmation(rc *receipt) buffer.Record {
	return buffer.Record{
		Route:      rules.ConfirmRoute,
		Received:   time.Now(),
		KafkaTopic: r.cfg.ConfirmTopic,
		Key:        []byte(rc.Device),
		ClientID:   rc.Device,
		MQTTTopic:  strings.ReplaceAll(r.cfg.MQTTTopic, "{device}", rc.Device),
		Headers: []buffer.Header{
			{Key: "receipt.topic", Value: []byte(rc.Topic)},
			{Key: "receipt.partition", Value: strconv.AppendInt(nil, int64(rc.Partition), 10)},
			{Key: "receipt.offset", Value: strconv.AppendInt(nil, rc.Offset, 10)},
		},
	}
}

// sweeper drops expired receipts and retries devices with pending receipts,
// in case an event was missed (a client that subscribed while its receipt
// was being stored).
func (r *Receipts) sweeper() {
	defer r.wg.Done()
	t := time.NewTicker(r.opts.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
		if r.cfg.MaxAge > 0 {
			old, err := r.box.olderThan(time.Now().Add(-r.cfg.MaxAge))
			if err != nil {
				r.logs.Warn(r.log, "scan", "receipts: scanning the outbox failed", "error", err)
			} else if len(old) > 0 {
				r.drop(old)
			}
		}
		r.retryConfirmations()
		for dev := range r.box.pendingAll() {
			r.kick(dev)
		}
	}
}

// consume runs the consumer group until Close, reconnecting with backoff.
func (r *Receipts) consume() {
	defer r.wg.Done()
	backoff := 100 * time.Millisecond
	wait := func() bool {
		select {
		case <-r.ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
		return true
	}
	var group sarama.ConsumerGroup
	defer func() {
		if group != nil {
			// Commits the offsets marked so far: everything marked is stored.
			if err := group.Close(); err != nil {
				r.log.Warn("receipts: closing the consumer group", "error", err)
			}
		}
	}()
	for r.ctx.Err() == nil {
		if group == nil {
			g, err := sarama.NewConsumerGroup(r.opts.Config.Kafka.Brokers, r.group, r.sarama)
			if err != nil {
				r.logs.Warn(r.log, "connect", "receipts: kafka not reachable yet; retrying", "error", err)
				if !wait() {
					return
				}
				continue
			}
			group = g
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				for err := range g.Errors() {
					r.log.Debug("receipts: consumer error", "error", err)
				}
			}()
		}
		err := group.Consume(r.ctx, []string{r.topic}, handler{r})
		if err != nil {
			if errors.Is(err, sarama.ErrClosedConsumerGroup) {
				return
			}
			r.log.Debug("receipts: consume ended", "error", err)
			if !wait() {
				return
			}
			continue
		}
		backoff = 100 * time.Millisecond
	}
}

// handler is the sarama consumer group handler.
type handler struct{ r *Receipts }

func (handler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (handler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

// ConsumeClaim stores records in batches and marks each batch's offsets only
// after its transaction committed.
func (h handler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	r := h.r
	msgs := claim.Messages()
	for {
		var batch []*sarama.ConsumerMessage
		select {
		case m, ok := <-msgs:
			if !ok {
				return nil
			}
			batch = append(batch, m)
		case <-sess.Context().Done():
			return nil
		}
	gather:
		for len(batch) < 1000 {
			select {
			case m, ok := <-msgs:
				if !ok {
					break gather
				}
				batch = append(batch, m)
			default:
				break gather
			}
		}
		if !r.storeBatch(sess.Context(), batch) {
			return nil // stopping: nothing marked, re-consumed next time
		}
		for _, m := range batch {
			sess.MarkMessage(m, "")
		}
	}
}

// storeBatch writes a batch to the outbox, retrying a failing disk until it
// works or the consumer stops, and queues the devices for delivery.
func (r *Receipts) storeBatch(ctx context.Context, batch []*sarama.ConsumerMessage) bool {
	in := make([]incoming, 0, len(batch))
	for _, m := range batch {
		x := incoming{Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Payload: m.Value}
		for _, h := range m.Headers {
			if h != nil {
				x.Headers = append(x.Headers, header{Key: string(h.Key), Value: h.Value})
			}
		}
		x.Device = r.device(m)
		in = append(in, x)
	}
	invalid := 0
	for _, x := range in {
		if x.Device == "" {
			invalid++
		}
	}
	tooMany, full := r.bound(in)
	for {
		stored, err := r.box.store(in, time.Now())
		if err == nil {
			r.mConsumed.Add(float64(len(stored)))
			r.countBounded("too_many_devices", tooMany, "receipts for a device with none waiting were dropped: receipts.max_devices devices have receipts waiting (see gateway_receipts_dropped_total)")
			r.countBounded("device_full", full, "receipts were dropped: their device has receipts.max_pending_per_device waiting (see gateway_receipts_dropped_total)")
			if invalid > 0 {
				r.dropped.Add(uint64(invalid))
				r.dropDev.Add(uint64(invalid))
				r.mDropped.WithLabelValues("invalid_device").Add(float64(invalid))
				r.logs.Warn(r.log, "device", "receipts without a valid device dropped (logged once; see gateway_receipts_dropped_total)",
					"device_from", r.cfg.DeviceFrom)
			}
			seen := map[string]bool{}
			for _, rc := range stored {
				if !seen[rc.Device] {
					seen[rc.Device] = true
					r.kick(rc.Device)
				}
			}
			return true
		}
		r.logs.Warn(r.log, "store", "receipts: storing in the outbox failed; retrying", "error", err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(time.Second):
		}
	}
}

// bound applies receipts.max_devices and receipts.max_pending_per_device to
// a batch about to be stored: a receipt beyond either gets no device (it
// only advances its partition's mark, so its offset is committed) and is
// counted. A terminal that can make the payment processor answer many
// made-up device ids, or never acknowledges, fills neither the disk nor the
// outbox's memory; every device under its bounds is untouched.
func (r *Receipts) bound(in []incoming) (tooMany, full map[string]int) {
	maxDev, maxPer := r.cfg.MaxDevices, r.cfg.MaxPendingPerDevice
	if maxDev <= 0 && maxPer <= 0 {
		return nil, nil
	}
	pending := r.box.pendingAll()
	devices := len(pending)
	for i := range in {
		dev := in[i].Device
		if dev == "" {
			continue
		}
		n, known := pending[dev]
		switch {
		case !known && maxDev > 0 && devices >= maxDev:
			if tooMany == nil {
				tooMany = map[string]int{}
			}
			tooMany[dev]++
			in[i].Device = ""
		case maxPer > 0 && n >= maxPer:
			if full == nil {
				full = map[string]int{}
			}
			full[dev]++
			in[i].Device = ""
		default:
			if !known {
				devices++
			}
			pending[dev] = n + 1
		}
	}
	return tooMany, full
}

// countBounded counts receipts that bound dropped, by device.
func (r *Receipts) countBounded(reason string, byDevice map[string]int, msg string) {
	n, first := 0, ""
	for dev, c := range byDevice {
		n += c
		first = dev
	}
	if n == 0 {
		return
	}
	r.dropped.Add(uint64(n))
	r.mDropped.WithLabelValues(reason).Add(float64(n))
	r.bounded.Add(reason, uint64(n))
	r.logs.Warn(r.log, reason, msg+" (logged once)", "reason", reason, "first_device", first)
}

// device extracts the device from the record per receipts.device_from; ""
// when it names none a terminal could have as client id (also one longer
// than mqtt.max_client_id_length).
func (r *Receipts) device(m *sarama.ConsumerMessage) string {
	var v []byte
	if name, ok := strings.CutPrefix(r.cfg.DeviceFrom, "header:"); ok {
		for _, h := range m.Headers {
			if h != nil && string(h.Key) == name {
				v = h.Value
				break
			}
		}
	} else {
		v = m.Key
	}
	d := string(v)
	if maxID := r.opts.Config.MQTT.MaxClientIDLength; maxID > 0 && len(d) > maxID {
		return ""
	}
	if d == "" || !utf8.ValidString(d) || strings.ContainsAny(d, "/+#\x00") {
		return ""
	}
	return d
}
