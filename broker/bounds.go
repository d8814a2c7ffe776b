package broker

import (
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgegw/gateway/config"
)

// boundsHook keeps what one client can make the broker hold or compute
// within the configured bounds (DESIGN invariant 12, issue 23), and watches
// that mochi's event loop makes progress.
//
// Outbound flow control. mochi v2.7.9 holds deliveries beyond a client's
// receive maximum in its in-flight map and sends them one at a time from
// the client's read loop (Inflight.NextImmediate). NextImmediate takes the
// map's read lock and then again inside GetAll; a delivery from another
// goroutine (another client's publish, the ingest acker's InjectPacket,
// a receipt) calls Inflight.Set, whose write lock queued between the two
// read locks blocks both for good: the client's session, every later
// CONNECT with its id, mochi's event loop (clearExpiredInflights) and
// shutdown with them (TestPinInflightNextImmediateReadLocksTwice). The
// gateway turns that mechanism off (a send quota of 0 makes mochi never call
// NextImmediate) and bounds deliveries itself, before mochi stores them: a
// client with its window (mqtt.max_inflight, or its own receive maximum if
// lower) of deliveries unacknowledged gets no more until it acknowledges;
// those are dropped for it and counted. Its own publishes, and everyone
// else, are untouched.
type boundsHook struct {
	mqtt.HookBase
	b      *Broker
	log    *slog.Logger
	bounds config.Bounds
	window int // mqtt.max_inflight

	clients sync.Map // *mqtt.Client -> *clientBounds

	beat  atomic.Int64  // unix nanoseconds of mochi's last $SYS tick (its event loop)
	stall time.Duration // loopStall; shorter in tests

	deliveriesDropped *prometheus.CounterVec
	subsRefused       *prometheus.CounterVec
}

// clientBounds is what the bounds hook keeps per connection.
type clientBounds struct {
	// subscribing holds the filters of the SUBSCRIBE being processed, so
	// that the ACL check mochi makes for each is told from the one it makes
	// for a delivery (see authHook.OnACLCheck).
	subscribing atomic.Pointer[map[string]bool]

	mu sync.Mutex
	// suback: reason codes to put into the SUBACK of a packet id, by
	// filter index (0: mochi's own), for filters refused in OnSubscribe.
	suback map[uint16][]byte
}

// loopStall is how long mochi's event loop may go without a tick (it ticks
// every second) before the broker reports itself not ready.
const loopStall = 15 * time.Second

func newBoundsHook(b *Broker, cfg *config.Config, log *slog.Logger) *boundsHook {
	h := &boundsHook{b: b, log: log, bounds: cfg.MQTT.Bounds, window: cfg.MQTT.MaxInflight, stall: loopStall}
	h.beat.Store(time.Now().UnixNano())
	h.deliveriesDropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gateway_mqtt_deliveries_dropped_total",
		Help: "Deliveries to local subscribers dropped for that subscriber only, by reason (inflight_full: it has mqtt.max_inflight, or its receive maximum, unacknowledged).",
	}, []string{"reason"})
	h.subsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gateway_mqtt_subscriptions_refused_total",
		Help: "Subscriptions refused in SUBACK by the gateway's bounds, by reason (topic_too_long, topic_too_deep, too_many).",
	}, []string{"reason"})
	return h
}

func (h *boundsHook) ID() string { return "gateway-bounds" }

func (h *boundsHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablish, mqtt.OnSessionEstablished, mqtt.OnSubscribe, mqtt.OnSubscribed, mqtt.OnUnsubscribe, mqtt.OnDisconnect,
		mqtt.OnSysInfoTick, mqtt.OnPacketEncode, mqtt.OnRetainMessage, mqtt.OnRetainedExpired, mqtt.OnWill:
		return true
	}
	return false
}

func (h *boundsHook) state(cl *mqtt.Client) *clientBounds {
	if v, ok := h.clients.Load(cl); ok {
		return v.(*clientBounds)
	}
	v, _ := h.clients.LoadOrStore(cl, &clientBounds{})
	return v.(*clientBounds)
}

// OnSessionEstablished turns mochi's outbound send quota off for the
// client (see boundsHook): with a maximum of 0, mochi never queues a
// delivery for later and never calls Inflight.NextImmediate. It runs before
// the client's read loop starts, the only caller of NextImmediate.
func (h *boundsHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	cl.State.Inflight.ResetSendQuota(0)
}

// OnSessionEstablish: the login is accepted (mochi sends CONNACK next): the
// connection no longer counts among those not logged in.
func (h *boundsHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	if g := guardOf(cl); g != nil {
		g.slot.release()
	}
}

func (h *boundsHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.clients.Delete(cl)
}

// OnSubscribe refuses filters beyond the bounds before mochi's topic tree
// sees them (its cost grows with the square of a filter's depth, under a
// lock every client shares): too long or too deep (0x8F topic filter
// invalid), or one subscription more than mqtt.max_subscriptions_per_client
// (0x97 quota exceeded). mochi refuses an empty filter as invalid without
// touching its tree, so a refused filter is emptied here and its reason
// code put into the SUBACK by OnPacketEncode. It also notes the filters
// mochi is about to check (see clientBounds.subscribing).
func (h *boundsHook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	st := h.state(cl)
	filters := make(map[string]bool, len(pk.Filters))
	var codes []byte
	held := cl.State.Subscriptions.Len()
	fs := make(packets.Subscriptions, len(pk.Filters))
	copy(fs, pk.Filters)
	for i, f := range fs {
		code, reason := byte(0), ""
		switch {
		case topicTooLong(f.Filter, h.bounds):
			code, reason = packets.ErrTopicFilterInvalid.Code, "topic_too_long"
		case topicTooDeep(f.Filter, h.bounds):
			code, reason = packets.ErrTopicFilterInvalid.Code, "topic_too_deep"
		default:
			if _, again := cl.State.Subscriptions.Get(f.Filter); !again && !filters[f.Filter] {
				if held >= h.bounds.MaxSubscriptions {
					code, reason = packets.ErrQuotaExceeded.Code, "too_many"
				} else {
					held++
				}
			}
		}
		if code == 0 {
			filters[f.Filter] = true
			continue
		}
		h.subsRefused.WithLabelValues(reason).Inc()
		h.b.logEvery.Log(h.log, slog.LevelWarn, "subscribe/"+reason+"/"+cl.ID, "a subscription beyond the gateway's bounds was refused (see gateway_mqtt_subscriptions_refused_total)",
			"client", cl.ID, "reason", reason, "filter_bytes", len(f.Filter))
		if codes == nil {
			codes = make([]byte, len(fs))
		}
		codes[i] = code
		fs[i].Filter = "" // mochi: invalid, refused without touching its tree
	}
	pk.Filters = fs
	st.subscribing.Store(&filters)
	if codes != nil {
		st.mu.Lock()
		if st.suback == nil {
			st.suback = map[uint16][]byte{}
		}
		st.suback[pk.PacketID] = codes
		st.mu.Unlock()
	}
	return pk
}

// OnUnsubscribe empties filters beyond the length and depth bounds (no
// subscription can have them): mochi answers 0x11 (no subscription
// existed) without walking its tree down them.
func (h *boundsHook) OnUnsubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	var fs packets.Subscriptions
	for i, f := range pk.Filters {
		if topicTooLong(f.Filter, h.bounds) || topicTooDeep(f.Filter, h.bounds) {
			if fs == nil {
				fs = make(packets.Subscriptions, len(pk.Filters))
				copy(fs, pk.Filters)
			}
			fs[i].Filter = ""
		}
	}
	if fs != nil {
		pk.Filters = fs
	}
	return pk
}

// OnPacketEncode puts the reason codes of filters refused in OnSubscribe
// into their SUBACK (MQTT 3.1.1: mochi already made every refusal 0x80).
func (h *boundsHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type != packets.Suback {
		return pk
	}
	v, ok := h.clients.Load(cl)
	if !ok {
		return pk
	}
	st := v.(*clientBounds)
	st.mu.Lock()
	codes, ok := st.suback[pk.PacketID]
	delete(st.suback, pk.PacketID)
	st.mu.Unlock()
	if !ok || cl.Properties.ProtocolVersion < 5 || len(codes) != len(pk.ReasonCodes) {
		return pk
	}
	rc := append([]byte(nil), pk.ReasonCodes...)
	for i, c := range codes {
		if c != 0 {
			rc[i] = c
		}
	}
	pk.ReasonCodes = rc
	return pk
}

// topicTooLong and topicTooDeep apply mqtt.max_topic_length and
// mqtt.max_topic_levels to a topic name or filter.
func topicTooLong(topic string, b config.Bounds) bool {
	return b.MaxTopicLength > 0 && len(topic) > b.MaxTopicLength
}

func topicTooDeep(topic string, b config.Bounds) bool {
	return b.MaxTopicLevels > 0 && strings.Count(topic, "/")+1 > b.MaxTopicLevels
}

func (h *boundsHook) OnSubscribed(cl *mqtt.Client, _ packets.Packet, _ []byte) {
	h.state(cl).subscribing.Store(nil)
}

// subscribing reports whether mochi's ACL check of filter for cl is part of
// processing a SUBSCRIBE (not a delivery). A topic name never holds a
// wildcard; a filter without one is recognised by the SUBSCRIBE in
// progress. A delivery of exactly that topic from another goroutine at that
// instant passes the window once: the window is then exceeded by at most
// the SUBSCRIBE's filter count.
func (h *boundsHook) subscribing(cl *mqtt.Client, filter string) bool {
	if strings.ContainsAny(filter, "+#") || strings.HasPrefix(filter, "$share/") {
		return true
	}
	v, ok := h.clients.Load(cl)
	if !ok {
		return false
	}
	m := v.(*clientBounds).subscribing.Load()
	return m != nil && (*m)[filter]
}

// windowOf is how many deliveries cl may have unacknowledged:
// mqtt.max_inflight, or the receive maximum it asked for if lower (mochi
// keeps that in its properties; 0 means it sent none: 65,535).
func (h *boundsHook) windowOf(cl *mqtt.Client) int {
	w := h.window
	if rm := int(cl.Properties.Props.ReceiveMaximum); rm > 0 && rm < w {
		w = rm
	}
	return w
}

// outboundInFlight counts cl's deliveries awaiting acknowledgement (QoS 1
// publishes and QoS 2 publishes or releases), up to the client's window;
// the in-flight map also holds the client's own QoS 2 publishes awaiting
// PUBREL, which count against the other direction.
func outboundInFlight(cl *mqtt.Client) int {
	n := 0
	for _, pk := range cl.State.Inflight.GetAll(false) {
		if t := pk.FixedHeader.Type; t == packets.Publish || t == packets.Pubrel {
			n++
		}
	}
	return n
}

// roomFor reports whether cl may be sent one more delivery that needs an
// acknowledgement (see boundsHook).
func (h *boundsHook) roomFor(cl *mqtt.Client) bool {
	w := h.windowOf(cl)
	if cl.State.Inflight.Len() < w {
		return true // cheap: the map holds both directions
	}
	return outboundInFlight(cl) < w
}

// allowDelivery is the gate of a delivery to cl (mochi's publishToClient
// asks the ACL hook before it stores anything): a client whose window is
// full gets nothing more until it acknowledges. The delivery is dropped
// for that client and counted; the publish goes on to everyone else.
func (h *boundsHook) allowDelivery(cl *mqtt.Client, topic string) bool {
	if h.roomFor(cl) {
		return true
	}
	h.deliveriesDropped.WithLabelValues("inflight_full").Inc()
	h.b.logEvery.Log(h.log, slog.LevelWarn, "inflight_full/"+cl.ID,
		"a local subscriber has mqtt.max_inflight deliveries unacknowledged: further deliveries to it are dropped until it acknowledges (see gateway_mqtt_deliveries_dropped_total)",
		"client", cl.ID, "window", h.windowOf(cl))
	return false
}

// OnSysInfoTick runs on mochi's event loop every second: its heartbeat.
func (h *boundsHook) OnSysInfoTick(*system.Info) {
	h.beat.Store(time.Now().UnixNano())
}

// loopStalled reports since when mochi's event loop has not ticked, if for
// longer than loopStall.
func (h *boundsHook) loopStalled(now time.Time) (time.Time, bool) {
	last := time.Unix(0, h.beat.Load())
	return last, now.Sub(last) > h.stall
}
