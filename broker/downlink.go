package broker

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/gateway/rules"
)

// The downlink (receipts) path:
//
// A downlink message is meant for exactly one client: the one whose client id
// is the device. It never goes through mochi's topic tree, so no other
// subscriber (terminals/+/receipts, #, a shared subscription) can see it. The
// broker writes it straight into that client's session: a packet id from
// mochi's allocator, the packet placed in the client's in-flight map (so mochi
// neither reuses the id nor forgets to resend it when a persistent session is
// taken over by a reconnect), then written to the connection. The PUBACK (or
// PUBCOMP) comes back through OnQosComplete and is reported to the owner of the
// outbox (receipts/), which alone decides what is pending: mochi's session
// store never sees these packets (see sessionStore), because in v2.7.9 it
// restores in-flight messages without their packet id.
//
// One message per client is in flight at a time: mochi resends in-flight
// messages after a takeover in an order of its own, so a window of one is
// what keeps a device's messages in order.

// downlinkOrigin marks a downlink packet in mochi's in-flight map. Origin is
// never encoded on the wire, survives Inflight.Clone on a takeover, and no
// real client id starts with "$".
const downlinkOrigin = "$gateway/downlink"

// Errors SendDownlink returns that callers branch on.
var (
	// ErrNotDeliverable: the client is not connected, or has no subscription
	// matching the topic; try again when DownlinkReady reports it.
	ErrNotDeliverable = errors.New("broker: client not connected or not subscribed")
	// ErrDownlinkBusy: the client has a downlink message awaiting its
	// acknowledgement; DownlinkAcked reports when it is done.
	ErrDownlinkBusy = errors.New("broker: a downlink message is already in flight for this client")
)

// DownlinkMessage is one message for one client.
type DownlinkMessage struct {
	Topic           string
	Payload         []byte
	QoS             byte                   // the most the client gets; lowered to its subscription's QoS
	UserProperties  []packets.UserProperty // MQTT 5 only; dropped for 3.1.1 clients by the encoder
	CorrelationData []byte                 // MQTT 5 only
}

// DownlinkEvents receives what happens to downlink deliveries. Methods are
// called from client goroutines and must return quickly.
type DownlinkEvents interface {
	// DownlinkReady: the client's session was established or it subscribed;
	// messages waiting for it may be sent now.
	DownlinkReady(clientID string)
	// DownlinkAcked: the client acknowledged the message sent with token
	// (PUBACK for QoS 1, PUBCOMP for QoS 2).
	DownlinkAcked(clientID string, token uint64)
}

// downlinkHook tracks the one downlink message in flight per client.
type downlinkHook struct {
	mqtt.HookBase
	b      *Broker
	events atomic.Pointer[eventsBox]

	mu       sync.Mutex
	inflight map[string]downlinkInflight // client id -> its message awaiting ack
	// recent: per client, the packet ids of its own recent QoS>0 publishes.
	// MQTT gives each direction its own id space, but mochi keeps one
	// in-flight map per client for both: a downlink id equal to one the
	// client publishes with is deleted from it by mochi (and its PUBACK then
	// ignored). Downlink ids are taken from the top of the range, skipping
	// these; a collision that happens anyway re-sends the message under a
	// new id (see OnPacketRead).
	recent map[string]*recentIDs
}

// recentIDs remembers the last len(ring) packet ids a client published with.
// It is written on every publish and read only when a downlink id is
// picked, so it is a bare ring (a map beside it cost ~2% of ingest CPU).
type recentIDs struct {
	ring [64]uint16
	n    int
	next uint16 // next downlink id to try (counts down)
}

func (r *recentIDs) add(id uint16) {
	r.ring[r.n%len(r.ring)] = id
	r.n++
}

func (r *recentIDs) has(id uint16) bool {
	for _, v := range r.ring[:min(r.n, len(r.ring))] {
		if v == id {
			return true
		}
	}
	return false
}

type eventsBox struct{ ev DownlinkEvents }

type downlinkInflight struct {
	packetID uint16
	token    uint64
	cl       *mqtt.Client // the client object it was written to
}

func (h *downlinkHook) ID() string { return "gateway-downlink" }

func (h *downlinkHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablished, mqtt.OnSubscribed, mqtt.OnQosComplete, mqtt.OnQosDropped,
		mqtt.OnPacketRead, mqtt.OnDisconnect:
		return true
	}
	return false
}

func (h *downlinkHook) ev() DownlinkEvents {
	if b := h.events.Load(); b != nil {
		return b.ev
	}
	return nil
}

// OnPacketRead notes the ids of the client's own publishes, and handles a
// publish whose id equals the downlink message's in flight: mochi is about
// to drop that message from its in-flight map (so it would never match its
// PUBACK nor be resent), so the message is released here and offered again,
// under a new id. The terminal may then get it twice (QoS 1 allows it); it
// never stalls.
func (h *downlinkHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos == 0 || cl.Net.Inline {
		return pk, nil
	}
	h.mu.Lock()
	r := h.recent[cl.ID]
	if r == nil {
		r = &recentIDs{next: 65535}
		h.recent[cl.ID] = r
	}
	r.add(pk.PacketID)
	f, collides := h.inflight[cl.ID]
	collides = collides && f.packetID == pk.PacketID
	if collides {
		delete(h.inflight, cl.ID)
		if old, held := cl.State.Inflight.Get(pk.PacketID); held && old.Origin == downlinkOrigin {
			if cl.State.Inflight.Delete(pk.PacketID) {
				atomic.AddInt64(&h.b.server.Info.Inflight, -1)
			}
		}
	}
	h.mu.Unlock()
	if collides {
		h.b.log.Debug("downlink packet id collided with the client's own publish; sending again under a new id",
			"client", cl.ID, "packet_id", pk.PacketID)
		if ev := h.ev(); ev != nil {
			ev.DownlinkReady(cl.ID)
		}
	}
	return pk, nil
}

// OnDisconnect forgets the client's recent ids.
func (h *downlinkHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.mu.Lock()
	if !cl.IsTakenOver() {
		delete(h.recent, cl.ID)
	}
	h.mu.Unlock()
}

// nextID picks a downlink packet id: from the top of the range down (clients
// number their own publishes from 1 up), free in mochi's in-flight map and
// not among the client's recent publish ids. h.mu held.
func (h *downlinkHook) nextID(cl *mqtt.Client) (uint16, bool) {
	r := h.recent[cl.ID]
	if r == nil {
		r = &recentIDs{next: 65535}
		h.recent[cl.ID] = r
	}
	for range 65535 {
		id := r.next
		if r.next--; r.next == 0 {
			r.next = 65535
		}
		if _, used := cl.State.Inflight.Get(id); used || r.has(id) {
			continue
		}
		return id, true
	}
	return 0, false
}

func (h *downlinkHook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if ev := h.ev(); ev != nil && !cl.Net.Inline {
		ev.DownlinkReady(cl.ID)
	}
}

func (h *downlinkHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	ev := h.ev()
	if ev == nil || cl.Net.Inline {
		return
	}
	for _, c := range codes {
		if c < packets.ErrUnspecifiedError.Code {
			ev.DownlinkReady(cl.ID)
			return
		}
	}
}

// OnQosComplete reports the acknowledgement of a downlink message. The
// owner hears of the ack before the client stops counting as busy, and is
// told it is ready afterwards: whoever looks in between sees either "busy" or
// "acknowledged", never a message that seems to need sending again.
func (h *downlinkHook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	h.mu.Lock()
	f, ok := h.inflight[cl.ID]
	h.mu.Unlock()
	if !ok || f.packetID != pk.PacketID {
		return
	}
	ev := h.ev()
	if ev != nil {
		ev.DownlinkAcked(cl.ID, f.token)
	}
	h.mu.Lock()
	if g, ok := h.inflight[cl.ID]; ok && g.packetID == f.packetID && g.token == f.token {
		delete(h.inflight, cl.ID)
	}
	h.mu.Unlock()
	if ev != nil {
		ev.DownlinkReady(cl.ID)
	}
}

// OnQosDropped forgets a message mochi dropped (clean session, expiry). On a
// takeover of a persistent session mochi clears the old client's in-flight
// map after copying it to the new one: the message is still in flight then.
func (h *downlinkHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if cl.IsTakenOver() {
		return
	}
	h.mu.Lock()
	if f, ok := h.inflight[cl.ID]; ok && f.packetID == pk.PacketID {
		delete(h.inflight, cl.ID)
	}
	h.mu.Unlock()
}

// owns reports whether pk belongs to a downlink delivery, so the session store
// keeps it out of sessions.db. Called before this hook's own OnQosComplete
// (the session store is registered first).
func (h *downlinkHook) owns(cl *mqtt.Client, pk packets.Packet) bool {
	if pk.Origin == downlinkOrigin {
		return true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	f, ok := h.inflight[cl.ID]
	return ok && f.packetID == pk.PacketID
}

// SetDownlinkEvents sets who hears about downlink readiness and
// acknowledgements (the receipts component). nil stops the reports.
func (b *Broker) SetDownlinkEvents(ev DownlinkEvents) {
	if ev == nil {
		b.downlink.events.Store(nil)
		return
	}
	b.downlink.events.Store(&eventsBox{ev: ev})
}

// DownlinkInflight returns the token of the message in flight to clientID, if
// any. It checks mochi's own state, so a message mochi no longer holds (its
// session expired or was cleaned) is forgotten here too.
func (b *Broker) DownlinkInflight(clientID string) (uint64, bool) {
	h := b.downlink
	h.mu.Lock()
	defer h.mu.Unlock()
	f, ok := h.inflight[clientID]
	if !ok {
		return 0, false
	}
	cl, found := b.server.Clients.Get(clientID)
	switch {
	case found && cl == f.cl:
		// Still the same session object: trust the record. mochi removes the
		// packet from its map just before reporting the PUBACK, so its absence
		// there means the acknowledgement is on its way, not that it is lost.
		return f.token, true
	case found:
		// A takeover copies the in-flight map to the new client object.
		if pk, held := cl.State.Inflight.Get(f.packetID); held && (pk.Origin == downlinkOrigin || pk.FixedHeader.Type == packets.Pubrel) {
			f.cl = cl
			h.inflight[clientID] = f
			return f.token, true
		}
	}
	// The session is gone (expired) or was replaced by one without it.
	delete(h.inflight, clientID)
	return 0, false
}

// SendDownlink delivers m to the connected client whose id is clientID, and
// to no one else, if that client has a subscription matching m.Topic. With
// QoS 0 (configured, or the subscription's) the message is written and
// needs no acknowledgement: acked is true. Otherwise DownlinkAcked reports
// the token when the client acknowledges it; until then the client has this
// message in flight (a reconnect of a persistent session resends it).
func (b *Broker) SendDownlink(clientID string, token uint64, m DownlinkMessage) (acked bool, err error) {
	cl, ok := b.server.Clients.Get(clientID)
	if !ok || cl.Net.Conn == nil || cl.Closed() || cl.Net.Inline {
		return false, ErrNotDeliverable
	}
	subQoS := -1
	for _, sub := range cl.State.Subscriptions.GetAll() {
		if mqtt.IsSharedFilter(sub.Filter) {
			continue // a shared subscription spreads messages over a group: not this device's own
		}
		if rules.MatchString(sub.Filter, m.Topic) && int(sub.Qos) > subQoS {
			subQoS = int(sub.Qos)
		}
	}
	if subQoS < 0 {
		return false, ErrNotDeliverable
	}
	qos := min(m.QoS, byte(subQoS), b.server.Options.Capabilities.MaximumQos)
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   m.Topic,
		Payload:     m.Payload,
		Origin:      downlinkOrigin,
		Created:     time.Now().Unix(), // mochi drops in-flight messages older than its maximum expiry from this
	}
	if cl.Properties.ProtocolVersion == 5 {
		pk.Properties.User = m.UserProperties
		pk.Properties.CorrelationData = m.CorrelationData
	}
	if qos == 0 {
		if err := cl.WritePacket(pk); err != nil {
			return false, ErrNotDeliverable
		}
		return true, nil
	}

	h := b.downlink
	h.mu.Lock()
	if _, busy := h.inflight[clientID]; busy {
		h.mu.Unlock()
		return false, ErrDownlinkBusy
	}
	if !b.bounds.roomFor(cl) {
		// The client's window is full of local deliveries: the receipt
		// waits in its outbox (the sweeper offers it again).
		h.mu.Unlock()
		return false, ErrDownlinkBusy
	}
	id, ok := h.nextID(cl)
	if !ok {
		h.mu.Unlock()
		return false, ErrDownlinkBusy
	}
	pk.PacketID = id
	if cl.State.Inflight.Set(pk) {
		atomic.AddInt64(&b.server.Info.Inflight, 1)
	}
	h.inflight[clientID] = downlinkInflight{packetID: pk.PacketID, token: token, cl: cl}
	h.mu.Unlock()

	// A failed write leaves the message in flight: the client is going away,
	// and a persistent session gets it resent on reconnect (a clean one drops
	// it, and OnQosDropped forgets it).
	if err := cl.WritePacket(pk); err != nil {
		b.log.Debug("downlink write failed; stays in flight", "client", clientID, "error", err)
	}
	return false, nil
}
