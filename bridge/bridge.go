// Package bridge is the drain: it reads the durable uplink buffer by route
// priority, produces each record to Kafka with an idempotent sarama producer
// (acks=all), and deletes a record from the buffer only after Kafka
// acknowledged it. It keeps the link state (up, down, connecting) and
// reconnects by itself, with exponential backoff and jitter, whether Kafka
// refuses connections or accepts them and never answers.
package bridge

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/internal/logonce"
)

// Link states reported by LinkStatus.State.
const (
	StateUp         = "up"
	StateDown       = "down"
	StateConnecting = "connecting"
)

// Defaults for Options fields left zero.
const (
	DefaultMaxBatchRecords    = 10000
	DefaultMaxBatchBytes      = 8 << 20
	DefaultMaxInflightBatches = 4
	DefaultCloseTimeout       = 10 * time.Second
)

// Reconnect backoff for (re)creating the producer, and how long records may
// wait for an acknowledgement before the link is reported down.
const (
	reconnectMin = 500 * time.Millisecond
	reconnectMax = 30 * time.Second
	stallAfter   = netTimeout + 5*time.Second
	idleTick     = time.Second
)

// Options configure New. Zero values take the defaults named per field.
type Options struct {
	// Kafka holds brokers, client id, protocol version, compression, TLS and
	// SASL. Brokers is required.
	Kafka config.Kafka
	// GatewayID goes into the gw.id header of every record. Required.
	GatewayID string
	// Link is the bandwidth cap (bytes per second of record keys, values
	// and headers, counted before compression), the drain windows and the
	// urgent priority that drains outside them. SetLink replaces it.
	Link config.Link
	// Priority ranks routes: lower drains first. Nil: all routes equal.
	// SetPriority replaces it.
	Priority func(route string) int
	// Now is the clock the drain windows are checked against (local time);
	// nil is time.Now. Tests inject one.
	Now func() time.Time
	// MaxBatchRecords is the most records read from the buffer and sent as
	// one batch (default 10000). Batches start at MinBatchRecords and grow
	// towards it while Kafka acknowledges them promptly.
	MaxBatchRecords int
	// MinBatchRecords is the smallest adaptive batch (default 64): where
	// batches shrink to after errors and slow acknowledgements.
	MinBatchRecords int
	// MaxBatchBytes bounds a batch's encoded size in bytes (default 8 MiB).
	MaxBatchBytes int
	// MaxInflightBatches is how many batches may await Kafka's
	// acknowledgement at once (default 4); it bounds the drain's memory.
	MaxInflightBatches int
	// CloseTimeout bounds how long Close waits for in-flight records to be
	// acknowledged before it cuts the connections (default 10s).
	CloseTimeout time.Duration
	// Logger receives link state changes; nil discards.
	Logger *slog.Logger
	// Registerer, if set, gets the drain's Prometheus metrics.
	Registerer prometheus.Registerer
	// PresenceInterval is how often the bridge claims its gateway id in
	// OffsetsTopic to detect another box using the same id (default 15m;
	// negative disables; see identity.go).
	PresenceInterval time.Duration
}

// LinkStatus is the uplink as the drain sees it.
type LinkStatus struct {
	State       string    // StateUp, StateDown or StateConnecting
	LastAck     time.Time // last acknowledgement from Kafka; zero if none yet
	DownSince   time.Time // when the link went down; zero unless State is down
	LastError   string    // the last error talking to Kafka, "" if none since up
	SentRecords uint64    // records acknowledged by Kafka since start
	RecentRate  float64   // acknowledged records per second over the last ~10 s
	// OutsideWindow is true while link.windows are set and none is open:
	// only routes at or below UrgentPriority drain.
	OutsideWindow bool
	// NextWindow is when the next drain window opens; zero unless
	// OutsideWindow.
	NextWindow time.Time
	// MaxBytesPerSecond is the bandwidth cap in force; 0 = none.
	MaxBytesPerSecond int64
	// BatchRecords is the current adaptive batch size.
	BatchRecords int
}

// Bridge drains a buffer to Kafka. Create it with New, run it with Start,
// stop it with Close.
type Bridge struct {
	buf  *buffer.Buffer
	opts Options
	log  *slog.Logger
	base *sarama.Config
	m    *metrics

	quit      chan struct{}
	done      chan struct{}
	wake      chan struct{} // SetLink/SetPriority: look at the rules again
	rules     atomic.Pointer[linkRules]
	lim       *rate.Limiter // the bandwidth cap; safe for concurrent use
	sizer     *batchSizer
	outside   atomic.Bool // outside every drain window (logged on change)
	startOnce sync.Once
	closeOnce sync.Once
	started   atomic.Bool

	mu   sync.Mutex // guards link, rate and sess
	link LinkStatus
	rate rateWindow
	sess *session

	// delMu orders buffer deletes against Close giving up: once abandoned
	// is set no late acknowledgement touches the buffer.
	delMu     sync.Mutex
	abandoned bool

	// waits, suspects: routes waiting on their topic, and routes with
	// records a broker refused within a batch (poison.go); guarded by waitMu.
	waitMu   sync.Mutex
	waits    map[string]*RouteWait
	suspects map[string]uint64
	dlq      dlqSender // kafka.dead_letter_topic copies
	logs     logonce.Set

	claims       atomic.Int64  // presence claims written (identity.go)
	presenceDone chan struct{} // closed when presenceLoop returned

	// wroteMarks: this process committed exactly-once marks of its epoch.
	wroteMarks atomic.Bool
	// dupID is the last evidence that another live box uses this gateway
	// id ("" if none); see DuplicateID.
	dupID atomic.Pointer[string]
}

// New validates opts and prepares a bridge; it does no network I/O.
func New(buf *buffer.Buffer, opts Options) (*Bridge, error) {
	if buf == nil {
		return nil, errors.New("bridge: buffer is required")
	}
	if len(opts.Kafka.Brokers) == 0 {
		return nil, errors.New("bridge: kafka.brokers: at least one broker is required")
	}
	if opts.GatewayID == "" {
		return nil, errors.New("bridge: gateway id is required (it is the gw.id header)")
	}
	base, err := NewSaramaConfig(opts.Kafka)
	if err != nil {
		return nil, err
	}
	if opts.Kafka.ExactlyOnce {
		// One transaction per batch (see exactlyonce.go), one at a time:
		// the next batch is read and sent while the committed one is
		// being deleted.
		base.Producer.Transaction.ID = transactionalID(opts.GatewayID)
		base.Consumer.IsolationLevel = sarama.ReadCommitted
		opts.MaxInflightBatches = 2
	}
	if opts.MaxBatchRecords <= 0 {
		opts.MaxBatchRecords = DefaultMaxBatchRecords
	}
	if opts.MaxBatchBytes <= 0 {
		opts.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if opts.MaxInflightBatches <= 0 {
		opts.MaxInflightBatches = DefaultMaxInflightBatches
	}
	if opts.CloseTimeout <= 0 {
		opts.CloseTimeout = DefaultCloseTimeout
	}
	if opts.MinBatchRecords <= 0 {
		opts.MinBatchRecords = DefaultMinBatchRecords
	}
	if opts.Priority == nil {
		opts.Priority = func(string) int { return 0 }
	}
	if opts.PresenceInterval == 0 {
		opts.PresenceInterval = DefaultPresenceInterval
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Link.MaxBytesPerSecond < 0 {
		return nil, fmt.Errorf("bridge: link.max_bytes_per_second %d is negative", opts.Link.MaxBytesPerSecond)
	}
	lg := opts.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	b := &Bridge{
		buf:   buf,
		opts:  opts,
		log:   lg.With("component", "bridge"),
		base:  base,
		m:     m,
		quit:  make(chan struct{}),
		done:  make(chan struct{}),
		wake:  make(chan struct{}, 1),
		lim:   rate.NewLimiter(rate.Inf, 1),
		sizer: newBatchSizer(opts.MinBatchRecords, opts.MaxBatchRecords),
		link:  LinkStatus{State: StateConnecting},

		waits:    map[string]*RouteWait{},
		suspects: map[string]uint64{},
	}
	b.rules.Store(&linkRules{link: cloneLink(opts.Link), priority: opts.Priority})
	b.setLimit(opts.Link.MaxBytesPerSecond)
	b.m.windowOpen.Set(1)
	return b, nil
}

// Start runs the drain loop in the background. Calling it again, or after
// Close, does nothing.
func (b *Bridge) Start() {
	b.startOnce.Do(func() {
		select {
		case <-b.quit:
			return
		default:
		}
		b.started.Store(true)
		go b.run()
		if b.opts.PresenceInterval > 0 {
			b.presenceDone = make(chan struct{})
			go b.presenceLoop()
		}
	})
}

// Close stops the drain and waits for in-flight records to be acknowledged,
// at most CloseTimeout; then it cuts the connections and returns. Records
// not acknowledged stay in the buffer and are sent again on the next start.
// It is safe to call twice.
func (b *Bridge) Close() error {
	b.closeOnce.Do(func() {
		close(b.quit)
		// Waits for a concurrent Start and makes later ones no-ops.
		b.startOnce.Do(func() {})
		if !b.started.Load() {
			return
		}
		if b.presenceDone != nil {
			// A claim talks to Kafka with its own client: waited for
			// briefly, never for a Kafka that does not answer.
			defer func() {
				select {
				case <-b.presenceDone:
				case <-time.After(2 * time.Second):
				}
			}()
		}
		timer := time.NewTimer(b.opts.CloseTimeout)
		defer timer.Stop()
		select {
		case <-b.done:
			return
		case <-timer.C:
		}
		// Kafka is not answering: fail what is in flight so sarama gives up.
		b.mu.Lock()
		s := b.sess
		b.mu.Unlock()
		if s != nil {
			s.f.kill(errClosing)
		}
		select {
		case <-b.done:
		case <-time.After(2 * time.Second):
			b.log.Warn("kafka producer did not stop in time; unacknowledged records stay buffered")
		}
		b.delMu.Lock()
		b.abandoned = true
		b.delMu.Unlock()
	})
	b.closeDeadLetters()
	return nil
}

var errClosing = errors.New("bridge: closing")

// Link returns the current link status.
func (b *Bridge) Link() LinkStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.link
	st.RecentRate = b.rate.rate(time.Now())
	l := b.rules.Load().link
	ws := windowAt(l, b.opts.Now())
	st.OutsideWindow, st.NextWindow = !ws.open, ws.next
	st.MaxBytesPerSecond = l.MaxBytesPerSecond
	st.BatchRecords = b.sizer.size()
	return st
}

func (b *Bridge) stopping() bool {
	select {
	case <-b.quit:
		return true
	default:
		return false
	}
}

// run is the drain loop: connect, drain until an error, shut the producer
// down cleanly, back off, start over from the buffer's head.
func (b *Bridge) run() {
	defer close(b.done)
	defer b.setSession(nil)
	failures := 0
	for !b.stopping() {
		s, err := b.connect()
		if err != nil {
			if b.stopping() {
				return
			}
			b.m.errors.WithLabelValues("connect").Inc()
			b.setDown(fmt.Errorf("connect: %w", err))
			failures++
			if !b.sleep(backoff(failures, reconnectMin, reconnectMax)) {
				return
			}
			continue
		}
		b.setUp()
		err = s.drain()
		s.shutdown()
		if s.acked.Load() > 0 || s.setAside.Load() > 0 {
			failures = 0
		}
		if b.stopping() {
			return
		}
		if err == nil {
			continue
		}
		if s.setAside.Load() > 0 {
			// The session ended on a record Kafka refuses or a topic it
			// lacks: Kafka answered, the link is up, the rest goes on.
			b.log.Debug("drain session restarts after setting records aside or a route waiting", "error", err)
			if !b.sleep(reconnectMin / 5) {
				return
			}
			continue
		}
		if errors.Is(err, sarama.ErrProducerFenced) {
			// Only a newer registration of the same transactional id fences
			// a live producer: another process runs with this gateway id.
			b.duplicateID("Kafka fenced this gateway's transactional producer: another process registered the same transactional.id")
		}
		b.m.errors.WithLabelValues("produce").Inc()
		b.sizer.shrink()
		b.setDown(err)
		failures++
		if !b.sleep(backoff(failures, reconnectMin, reconnectMax)) {
			return
		}
	}
}

// sleep waits d or until Close; it reports whether to go on.
func (b *Bridge) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-b.quit:
		return false
	}
}

func (b *Bridge) setSession(s *session) {
	b.mu.Lock()
	b.sess = s
	b.mu.Unlock()
}

// setUp and setDown log state changes once each, not per retry.
func (b *Bridge) setUp() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.link.State == StateUp {
		return
	}
	if !b.link.DownSince.IsZero() {
		b.log.Info("kafka link up", "was_down_for", time.Since(b.link.DownSince).Round(time.Millisecond))
	} else {
		b.log.Info("kafka link up")
	}
	b.link.State = StateUp
	b.link.DownSince = time.Time{}
	b.link.LastError = ""
	b.m.up.Set(1)
}

func (b *Bridge) setDown(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	msg := err.Error()
	b.link.LastError = msg
	if b.link.State == StateDown {
		b.log.Debug("kafka still unreachable", "error", msg)
		return
	}
	b.link.State = StateDown
	b.link.DownSince = time.Now()
	b.m.up.Set(0)
	b.log.Warn("kafka link down; buffering", "error", msg)
}

// acked records n acknowledgements at t.
func (b *Bridge) acked(n int, t time.Time) {
	b.mu.Lock()
	b.link.SentRecords += uint64(n)
	if t.After(b.link.LastAck) {
		b.link.LastAck = t
	}
	b.rate.add(t, uint64(n))
	b.mu.Unlock()
	b.m.sent.Add(float64(n))
	b.m.lastAck.Set(float64(t.UnixNano()) / 1e9)
}

// deleteAcked removes acknowledged records unless Close has given up.
func (b *Bridge) deleteAcked(refs []buffer.Ref) error {
	b.delMu.Lock()
	defer b.delMu.Unlock()
	if b.abandoned {
		return errClosing
	}
	return b.buf.Delete(refs)
}

// The header keys every record carries (CONTRACT §4).
var (
	headerMQTTTopic    = []byte("mqtt.topic")
	headerMQTTClientID = []byte("mqtt.client_id")
	headerGatewayID    = []byte("gw.id")
	headerSeq          = []byte("gw.seq")
	headerEpoch        = []byte("gw.epoch")
)

// bridgeSets reports whether the bridge sets header name itself on every
// record.
func bridgeSets(name string) bool {
	switch name {
	case "mqtt.topic", "mqtt.client_id", "gw.id", "gw.seq", "gw.epoch":
		return true
	}
	return false
}

// bytesOf is s's bytes without a copy. Header keys and values are only read
// by sarama (encoded into the batch), and the strings of a buffered record
// are never changed, so sharing is safe; copying them was a tenth of the
// drain's CPU.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// message builds the Kafka record of CONTRACT §4.
func (b *Bridge) message(rec *buffer.Record) *sarama.ProducerMessage {
	return b.messageIn(newSlab(1), rec)
}

// slab hands out a batch's Kafka messages, their headers, key and value
// encoders and gw.seq digits from a few allocations, instead of six small
// ones per record (the drain's garbage was most of the collector's work).
// A message keeps its slab alive; a batch's messages settle together.
type slab struct {
	msgs   []sarama.ProducerMessage
	hs     []sarama.RecordHeader
	encs   []sarama.ByteEncoder
	digits []byte
}

func newSlab(n int) *slab {
	return &slab{
		msgs:   make([]sarama.ProducerMessage, 0, n),
		hs:     make([]sarama.RecordHeader, 0, 5*n),
		encs:   make([]sarama.ByteEncoder, 0, 2*n),
		digits: make([]byte, 0, 12*n),
	}
}

// take returns n items from the end of s (a new array when it is full),
// capped so appending to them can never reach a neighbour's.
func take[T any](s *[]T, n int) []T {
	if cap(*s)-len(*s) < n {
		*s = make([]T, 0, max(n, cap(*s)))
	}
	l := len(*s)
	*s = (*s)[:l+n]
	return (*s)[l : l+n : l+n]
}

// messageIn builds the Kafka record of CONTRACT §4 from sl.
func (b *Bridge) messageIn(sl *slab, rec *buffer.Record) *sarama.ProducerMessage {
	hs := take(&sl.hs, 5+len(rec.Headers))
	l := len(sl.digits)
	if cap(sl.digits)-l < 20 {
		sl.digits, l = make([]byte, 0, max(cap(sl.digits), 20)), 0
	}
	sl.digits = strconv.AppendUint(sl.digits, rec.Seq, 10)
	seq := sl.digits[l:len(sl.digits):len(sl.digits)]
	hs[0] = sarama.RecordHeader{Key: headerMQTTTopic, Value: bytesOf(rec.MQTTTopic)}
	hs[1] = sarama.RecordHeader{Key: headerMQTTClientID, Value: bytesOf(rec.ClientID)}
	hs[2] = sarama.RecordHeader{Key: headerGatewayID, Value: bytesOf(b.opts.GatewayID)}
	hs[3] = sarama.RecordHeader{Key: headerSeq, Value: seq}
	hs[4] = sarama.RecordHeader{Key: headerEpoch, Value: bytesOf(b.buf.Epoch())}
	n := 5
	for _, h := range rec.Headers {
		if bridgeSets(h.Key) {
			// Set above, once: the broker no longer copies a user property
			// of a reserved name, but records buffered by an older release
			// may still carry one.
			continue
		}
		hs[n] = sarama.RecordHeader{Key: bytesOf(h.Key), Value: h.Value}
		n++
	}
	hs = hs[:n:n]
	enc := take(&sl.encs, 2)
	enc[0], enc[1] = rec.Key, rec.Payload
	if enc[0] == nil {
		enc[0] = []byte{} // one partition for "no key", not a random one
	}
	if enc[1] == nil {
		enc[1] = []byte{} // an empty publish is an empty value, not a tombstone
	}
	m := &take(&sl.msgs, 1)[0]
	*m = sarama.ProducerMessage{
		Topic:     rec.KafkaTopic,
		Key:       &enc[0],
		Value:     &enc[1],
		Headers:   hs,
		Timestamp: rec.Received,
	}
	return m
}

// duplicateID reports evidence that another live process uses this
// gateway's id: logged, counted and kept for /status.
func (b *Bridge) duplicateID(evidence string) {
	b.m.duplicateID.Inc()
	if old := b.dupID.Swap(&evidence); old == nil || *old != evidence {
		b.log.Error("another gateway is running with the same id: give every box its own id (records of the two would share gw.id)",
			"id", b.opts.GatewayID, "evidence", evidence)
	}
}

// DuplicateID returns the last evidence that another live process uses this
// gateway's id, or "" if there is none.
func (b *Bridge) DuplicateID() string {
	if p := b.dupID.Load(); p != nil {
		return *p
	}
	return ""
}

// rateWindow counts events per second over the last ten seconds.
type rateWindow struct {
	counts [10]uint64
	secs   [10]int64
}

func (w *rateWindow) add(t time.Time, n uint64) {
	s := t.Unix()
	i := s % int64(len(w.secs))
	if w.secs[i] != s {
		w.secs[i], w.counts[i] = s, 0
	}
	w.counts[i] += n
}

func (w *rateWindow) rate(now time.Time) float64 {
	s := now.Unix()
	var sum uint64
	for i := range w.secs {
		if d := s - w.secs[i]; d >= 0 && d < int64(len(w.secs)) {
			sum += w.counts[i]
		}
	}
	return float64(sum) / float64(len(w.secs))
}
