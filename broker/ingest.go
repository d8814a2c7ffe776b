package broker

import (
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/rules"
)

// The ingest path (DESIGN invariant 1, PUBACK after fsync):
//
// mochi reads a client's packets one at a time and would PUBACK as soon as
// OnPublish returns. Blocking there until the fsync would hold a client with
// many publishes in flight to one message per commit. So OnPublish hands the
// message to the buffer's group-commit writer and returns ErrRejectPacket
// (mochi then sends nothing). A per-client acker goroutine takes the client's
// publishes in arrival order, waits for each one's commit, and re-injects the
// publish into mochi marked as stored: mochi then PUBACKs it and delivers it to
// local subscribers. A publish that could not be stored is refused instead:
// an MQTT 5 client gets the reason code, a 3.1.1 client is disconnected (for
// 3.1.1 mochi would PUBACK any error but ErrRejectPacket).

// injectMark tags a re-injected publish. mochi never sets Mods.MaxSize on an
// inbound packet, and OnPublish clears it before mochi encodes anything.
const injectMark = 0x9e7a11ed

// ingestHook is the mochi hook on the publish path.
type ingestHook struct {
	mqtt.HookBase
	b *Broker

	clients sync.Map // *mqtt.Client -> *clientState
}

// clientState orders one connection's QoS>0 publishes between arrival and
// acknowledgement.
type clientState struct {
	conn      uint64         // unique per connection, for the buffer's dedup (see buffer.Acknowledged)
	slots     chan struct{}  // one per publish awaiting its ack; bounds memory per client
	queue     chan *inflight // arrival order
	injecting atomic.Bool    // the acker is inside mochi's InjectPacket for this client
}

type inflight struct {
	id     uint16
	qos    byte
	pk     *packets.Packet // only for a publish mochi must see again (see needsMochi)
	route  string
	topic  string // for a retained publish refused late (see resyncRetained)
	retain bool
	result chan buffer.Result  // filled once by the buffer (or at once for local/refused)
	code   packets.Code        // set: refuse with this code, nothing was stored
	app    buffer.Append       // what was handed to the buffer (one allocation with the rest)
	done   func(buffer.Result) // fills result; made once per inflight, which is reused
}

// inflights are reused: one per publish was a tenth of the bytes allocated
// at full ingest. The acker puts one back once its PUBACK (or refusal) is
// written: the buffer has called Done by then and does not touch it again.
var inflights = sync.Pool{New: func() any {
	f := &inflight{result: make(chan buffer.Result, 1)}
	f.done = func(r buffer.Result) { f.result <- r }
	return f
}}

func newInflight(id uint16, qos byte) *inflight {
	f := inflights.Get().(*inflight)
	f.id, f.qos = id, qos
	return f
}

// release returns f, whose result has been received, for reuse.
func (f *inflight) release() {
	*f = inflight{result: f.result, done: f.done}
	inflights.Put(f)
}

func (h *ingestHook) ID() string { return "gateway-ingest" }

func (h *ingestHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnPublish, mqtt.OnDisconnect, mqtt.OnPacketRead, mqtt.OnWillSent,
		mqtt.OnSubscribe, mqtt.OnSubscribed, mqtt.OnUnsubscribed:
		return true
	}
	return false
}

// OnPacketRead refuses a PUBLISH whose topic name is not valid (wildcards, or
// empty without an alias). mochi would drop it silently, leaving a QoS 1
// client waiting for a PUBACK that never comes.
//
// A publish by topic alias alone gets its topic here: mochi v2.7.9 checks
// the ACL against the publish's topic name before it resolves the alias, so
// every publish by alias was refused 0x87 (TestTopicAliasPublish). An alias
// the client never set is a protocol error (0x82).
func (h *ingestHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish {
		return pk, nil
	}
	if pk.TopicName == "" && pk.Properties.TopicAlias > 0 {
		if pk.TopicName = cl.State.TopicAliases.Inbound.Set(pk.Properties.TopicAlias, ""); pk.TopicName == "" {
			h.b.countRefused("", "topic_alias_unknown")
			_ = h.b.server.DisconnectClient(cl, packets.ErrProtocolViolation)
			return pk, packets.ErrProtocolViolation
		}
	}
	if pk.TopicName == "" || !mqtt.IsValidFilter(pk.TopicName, true) {
		h.b.countRefused("", "topic_invalid")
		if cl.Properties.ProtocolVersion == 5 {
			_ = h.b.server.DisconnectClient(cl, packets.ErrTopicNameInvalid)
		}
		return pk, packets.ErrTopicNameInvalid
	}
	return pk, nil
}

func (h *ingestHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil // in-process publishes (receipts) are not uplink traffic
	}
	if pk.Mods.MaxSize == injectMark {
		pk.Mods.MaxSize = 0
		return pk, nil // stored and committed: let mochi PUBACK and deliver
	}

	b := h.b
	// Before anything walks the topic (mochi's tree costs the square of its
	// depth): a topic beyond mqtt.max_topic_length or max_topic_levels is
	// refused, 0x90 for MQTT 5 (3.1.1: disconnected).
	var bound string
	switch {
	case topicTooLong(pk.TopicName, b.bounds.bounds):
		bound = "topic_too_long"
	case topicTooDeep(pk.TopicName, b.bounds.bounds):
		bound = "topic_too_deep"
	}
	if bound != "" {
		b.countRefused("", bound)
		if pk.FixedHeader.Qos == 0 {
			return pk, packets.ErrRejectPacket
		}
	}
	route := b.rules().Match(pk.TopicName)
	if bound != "" {
		route = nil
	}
	unrouted := route == nil
	local := unrouted && b.rules().Unrouted == "local" && bound == ""
	// A retained publish that will be taken: the retained bounds, counted
	// now (see retainedBook); a receipts topic is the gateway's alone.
	var retainRefused packets.Code
	if pk.FixedHeader.Retain && bound == "" && (local || !unrouted) {
		switch {
		case b.isReceiptsTopic(pk.TopicName):
			b.countRefused(routeName(route), "receipts_topic")
			retainRefused = packets.ErrNotAuthorized
		default:
			if why := b.retained.take(pk.TopicName, cl.ID, retainedSize(&pk), len(pk.Payload) == 0); why != "" {
				b.countRefused(routeName(route), why)
				b.logEvery.Log(b.log, slog.LevelWarn, "retained/"+cl.ID, "a retained publish beyond the retained bounds was refused (see gateway_ingest_refused_total)",
					"client", cl.ID, "bound", why)
				retainRefused = packets.ErrQuotaExceeded
			}
		}
		if retainRefused.Code != 0 && pk.FixedHeader.Qos == 0 {
			return pk, packets.ErrRejectPacket
		}
	}

	if pk.FixedHeader.Qos == 0 {
		switch {
		case local:
			return pk, nil
		case unrouted:
			b.countRefused("", "unrouted")
			return pk, packets.ErrRejectPacket
		}
		// Best effort: buffered without waiting, delivered locally at once.
		rec := b.record(cl, pk, route)
		err := b.buf.Append(&buffer.Append{Record: rec, Done: func(r buffer.Result) {
			b.countStored(route.Name, r)
		}})
		if err != nil {
			b.countRefused(route.Name, "write_failed")
		}
		return pk, nil
	}

	st := h.state(cl)
	st.slots <- struct{}{} // waits while this client has max_inflight unacknowledged
	f := newInflight(pk.PacketID, pk.FixedHeader.Qos)
	if bound == "" && retainRefused.Code == 0 && b.needsMochi(pk) {
		keep := pk
		f.pk = &keep
	}
	f.topic, f.retain = pk.TopicName, pk.FixedHeader.Retain
	switch {
	case retainRefused.Code != 0:
		f.code = retainRefused
		f.result <- buffer.Result{}
	case local:
		f.result <- buffer.Result{}
	case unrouted:
		if bound == "" {
			b.countRefused("", "unrouted")
		}
		f.code = packets.ErrTopicNameInvalid
		f.result <- buffer.Result{}
	default:
		f.route = route.Name
		f.app = buffer.Append{
			Record: b.record(cl, pk, route),
			Dedup:  buffer.DedupKey{ClientID: cl.ID, PacketID: pk.PacketID, Dup: pk.FixedHeader.Dup, Conn: st.conn},
			Done:   f.done,
		}
		if err := b.buf.Append(&f.app); err != nil {
			f.result <- buffer.Result{Err: err}
		}
	}
	st.queue <- f
	return ignored(pk), nil
}

// ignored is what OnPublish gives back to mochi for a publish the acker
// answers: marked Ignore, not retained and at QoS 0, mochi sends nothing for
// it, retains nothing and delivers nothing (processPublish; pinned by
// TestPinIgnoredPublishIsSilent). ErrRejectPacket would do the same, but
// mochi then logs the packet, boxing a copy of it for every publish even
// with debug logging off: a tenth of the allocations at full ingest.
func ignored(pk packets.Packet) packets.Packet {
	pk.Ignore = true
	pk.FixedHeader.Retain = false
	pk.FixedHeader.Qos = 0
	return pk
}

// needsMochi: a stored publish must go through mochi again (inject) rather
// than be answered with a bare PUBACK: QoS 2, retained, or with a local
// subscriber when it arrived (the common case, a terminal's telemetry or
// payment, needs nothing but its PUBACK).
func (b *Broker) needsMochi(pk packets.Packet) bool {
	return pk.FixedHeader.Qos != 1 || pk.FixedHeader.Retain || b.hasLocalSubscribers(pk.TopicName)
}

// OnWillSent puts a will that matches a route into the uplink buffer, like
// a publish (terminal presence is what operators want to see in Kafka).
// mochi publishes wills to local subscribers itself, without OnPublish; the
// will's topic passed the publish ACL when its CONNECT was accepted.
func (h *ingestHook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	b := h.b
	route := b.rules().Match(pk.TopicName)
	if route == nil {
		return
	}
	rec := b.record(cl, pk, route)
	err := b.buf.Append(&buffer.Append{Record: rec, Done: func(r buffer.Result) {
		b.countStored(route.Name, r)
	}})
	if err != nil {
		b.countRefused(route.Name, "write_failed")
	}
}

var connIDs atomic.Uint64

// state returns the client's ordering state, starting its acker on first use.
// Only the client's read goroutine calls it, so creation does not race.
func (h *ingestHook) state(cl *mqtt.Client) *clientState {
	if v, ok := h.clients.Load(cl); ok {
		return v.(*clientState)
	}
	n := h.b.opts.Config.MQTT.MaxInflight
	st := &clientState{conn: connIDs.Add(1), slots: make(chan struct{}, n), queue: make(chan *inflight, n)}
	h.clients.Store(cl, st)
	h.b.ackers.Add(1)
	go h.acker(cl, st)
	return st
}

// OnDisconnect ends the client's acker once its queue is drained. mochi calls
// it after the read loop ended, so no more publishes can be queued.
func (h *ingestHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if v, ok := h.clients.LoadAndDelete(cl); ok {
		close(v.(*clientState).queue)
	}
}

func (h *ingestHook) isInjecting(cl *mqtt.Client) bool {
	if v, ok := h.clients.Load(cl); ok {
		return v.(*clientState).injecting.Load()
	}
	return false
}

// acker acknowledges the client's publishes in arrival order, each only after
// the transaction that holds it committed.
func (h *ingestHook) acker(cl *mqtt.Client, st *clientState) {
	defer h.b.ackers.Done()
	b := h.b
	// PUBACKs whose publishes are stored, written together: a client with
	// many publishes in flight gets one write per commit, not one per
	// message. They are flushed before anything else is written to the
	// client and before waiting, so order and latency are kept.
	var acks []byte
	flush := func() {
		if len(acks) > 0 {
			b.writeRaw(cl, acks)
			acks = acks[:0]
		}
	}
	for {
		var f *inflight
		select {
		case f = <-st.queue:
		default:
			flush()
			var ok bool
			if f, ok = <-st.queue; !ok {
				return
			}
		}
		if f == nil {
			flush()
			return // queue closed
		}
		var r buffer.Result
		select {
		case r = <-f.result:
		default:
			flush()
			r = <-f.result
		}
		if f.retain && (f.code.Code != 0 || r.Err != nil) {
			b.resyncRetained(f.topic) // counted in OnPublish, never retained
		}
		switch {
		case f.code.Code != 0:
			flush()
			b.refuse(cl, f.id, f.qos, f.code)
		case r.Err != nil:
			flush()
			reason, code := "write_failed", packets.ErrUnspecifiedError
			switch {
			case errors.Is(r.Err, buffer.ErrRouteFull), errors.Is(r.Err, buffer.ErrDiskFull):
				// the route's on_full is reject: the terminal keeps the message
				reason, code = "full", packets.ErrQuotaExceeded
			case errors.Is(r.Err, syscall.ENOSPC):
				// the filesystem is full (below the budget): like a full
				// budget, the terminal keeps the message and retries
				reason, code = "disk_full", packets.ErrQuotaExceeded
			case errors.Is(r.Err, buffer.ErrClosed):
				code = packets.ErrServerShuttingDown
			}
			b.countRefused(f.route, reason)
			b.refuse(cl, f.id, f.qos, code)
		default:
			if f.route != "" {
				b.countStored(f.route, r)
			}
			if f.qos > 0 && !r.Duplicate {
				b.buf.Acknowledged(cl.ID, f.id, r.Seq, st.conn)
			}
			if f.pk == nil {
				// PUBACK, remaining length 2, packet id (success needs no
				// reason code in MQTT 5 either)
				acks = append(acks, packets.Puback<<4, 2, byte(f.id>>8), byte(f.id))
			} else {
				flush()
				b.inject(cl, st, *f.pk)
			}
		}
		f.release()
		<-st.slots
	}
}

// inject hands a stored publish back to mochi, marked as stored.
func (b *Broker) inject(cl *mqtt.Client, st *clientState, pk packets.Packet) {
	pk.Mods.MaxSize = injectMark
	st.injecting.Store(true)
	err := b.server.InjectPacket(cl, pk)
	st.injecting.Store(false)
	if err != nil && !cl.Closed() {
		b.log.Debug("puback after commit failed", "client", cl.ID, "error", err)
	}
}

// writeRaw writes encoded packets to the client under the client's lock, as
// mochi's WritePacket does (the gateway sets no client write buffer, so
// mochi writes straight to the connection too).
func (b *Broker) writeRaw(cl *mqtt.Client, p []byte) {
	if cl.Closed() {
		return
	}
	cl.Lock()
	_, err := cl.Net.Conn.Write(p)
	cl.Unlock()
	if err != nil && !cl.Closed() {
		b.log.Debug("puback write failed", "client", cl.ID, "error", err)
	}
}

func (b *Broker) hasLocalSubscribers(topic string) bool {
	return b.localSubs.has(topic, b.askLocalSubscribers)
}

func (b *Broker) askLocalSubscribers(topic string) bool {
	s := b.server.Topics.Subscribers(topic)
	return len(s.Subscriptions) > 0 || len(s.Shared) > 0 || len(s.InlineSubscriptions) > 0
}

// refuse answers a publish that was not stored: reason code for MQTT 5,
// disconnect for 3.1.1 (which has no negative PUBACK).
func (b *Broker) refuse(cl *mqtt.Client, id uint16, qos byte, code packets.Code) {
	if cl.Closed() {
		return
	}
	if cl.Properties.ProtocolVersion < 5 {
		cl.Stop(code)
		return
	}
	ackType := packets.Puback
	if qos == 2 {
		ackType = packets.Pubrec
	}
	ack := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: ackType},
		PacketID:    id,
		ReasonCode:  code.Code,
		Properties:  packets.Properties{ReasonString: code.Reason},
	}
	if err := cl.WritePacket(ack); err != nil {
		b.log.Debug("refusal not delivered", "client", cl.ID, "error", err)
	}
}

// record builds the buffer record for a routed publish; topic and key are
// fixed now and never change with later reloads.
func (b *Broker) record(cl *mqtt.Client, pk packets.Packet, route *rules.Route) buffer.Record {
	rec := buffer.Record{
		Route:      route.Name,
		Received:   time.Now(),
		KafkaTopic: route.KafkaTopic,
		Key:        route.Key(cl.ID, string(cl.Properties.Username), pk.TopicName),
		MQTTTopic:  pk.TopicName,
		ClientID:   cl.ID,
		Payload:    pk.Payload,
	}
	p := &pk.Properties
	if n := len(p.User); n > 0 || p.ResponseTopic != "" || len(p.CorrelationData) > 0 {
		rec.Headers = make([]buffer.Header, 0, n+2)
		for _, u := range p.User {
			if ReservedHeader(u.Key) {
				// The gateway's own names: a client must never add, repeat
				// or override them (another terminal's mqtt.client_id, a
				// forged gw.seq breaking the idempotency key).
				b.countReservedProperty(cl, u.Key)
				continue
			}
			rec.Headers = append(rec.Headers, buffer.Header{Key: u.Key, Value: []byte(u.Val)})
		}
		if p.ResponseTopic != "" {
			rec.Headers = append(rec.Headers, buffer.Header{Key: "mqtt.response_topic", Value: []byte(p.ResponseTopic)})
		}
		if len(p.CorrelationData) > 0 {
			rec.Headers = append(rec.Headers, buffer.Header{Key: "mqtt.correlation_data", Value: p.CorrelationData})
		}
	}
	return rec
}

// ReservedHeader reports whether a Kafka header name belongs to the
// gateway: every name starting with "gw." or "mqtt." (CONTRACT §4; see
// docs/kafka-records.md). An MQTT 5 user property with such a name is not
// copied into the record, so a record carries exactly one of each header
// the gateway sets, and none it did not.
func ReservedHeader(name string) bool {
	return strings.HasPrefix(name, "gw.") || strings.HasPrefix(name, "mqtt.")
}

// countReservedProperty counts (and logs, at most once a minute per client)
// a user property dropped for its reserved name.
func (b *Broker) countReservedProperty(cl *mqtt.Client, name string) {
	b.reservedDropped.Inc()
	b.logEvery.Log(b.log, slog.LevelWarn, "reserved/"+cl.ID, "an MQTT 5 user property with a name reserved for the gateway's own headers was not copied to Kafka (see gateway_ingest_user_properties_dropped_total)",
		"client", cl.ID, "property", name)
}

func routeName(r *rules.Route) string {
	if r == nil {
		return ""
	}
	return r.Name
}
