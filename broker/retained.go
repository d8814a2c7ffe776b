package broker

import (
	"strings"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/rules"
)

// retainedBook keeps account of the retained messages clients set, per
// client and in total, so mqtt.max_retained_* hold: retained messages live
// in memory and in sessions.db and come back after every restart, so
// without a bound one terminal could make every start run out of memory.
//
// It counts a retained publish when the ingest hook accepts it (OnPublish,
// before the commit), as if mochi had retained it already, so publishes in
// flight cannot pass the bounds together; a publish that ends refused or
// failed is put back to what mochi holds (resync). mochi's own retains
// (OnRetainMessage, also wills and restored messages) correct the book to
// what is held. The last publisher of a topic holds its retained message.
type retainedBook struct {
	bounds config.Bounds

	mu     sync.Mutex
	topics map[string]retainedEntry // topic -> who holds it, its size
	owners map[string]*retainedUse  // client id -> what it holds
	total  retainedUse
}

type retainedEntry struct {
	owner string
	size  int64
}

type retainedUse struct {
	count int
	bytes int64
}

func newRetainedBook(b config.Bounds) *retainedBook {
	return &retainedBook{bounds: b, topics: map[string]retainedEntry{}, owners: map[string]*retainedUse{}}
}

// retainedSize is what a retained message costs: topic, payload and the
// properties stored with it.
func retainedSize(pk *packets.Packet) int64 {
	n := len(pk.TopicName) + len(pk.Payload) + len(pk.Properties.ResponseTopic) +
		len(pk.Properties.CorrelationData) + len(pk.Properties.ContentType)
	for _, u := range pk.Properties.User {
		n += len(u.Key) + len(u.Val)
	}
	return int64(n)
}

// set records that owner holds topic's retained message of size (size < 0:
// none is held). r.mu held.
func (r *retainedBook) set(topic, owner string, size int64) {
	if old, ok := r.topics[topic]; ok {
		u := r.owners[old.owner]
		u.count--
		u.bytes -= old.size
		if u.count <= 0 {
			delete(r.owners, old.owner)
		}
		r.total.count--
		r.total.bytes -= old.size
		delete(r.topics, topic)
	}
	if size < 0 {
		return
	}
	r.topics[topic] = retainedEntry{owner: owner, size: size}
	u := r.owners[owner]
	if u == nil {
		u = &retainedUse{}
		r.owners[owner] = u
	}
	u.count++
	u.bytes += size
	r.total.count++
	r.total.bytes += size
}

// take counts a retained publish by owner to topic of size (an empty one
// clears the topic: always taken) unless it would pass a bound; it returns
// which bound ("" when taken).
func (r *retainedBook) take(topic, owner string, size int64, clear bool) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if clear {
		r.set(topic, "", -1)
		return ""
	}
	if why := r.over(topic, owner, size); why != "" {
		return why
	}
	r.set(topic, owner, size)
	return ""
}

// check is take without counting.
func (r *retainedBook) check(topic, owner string, size int64) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.over(topic, owner, size)
}

// over returns the bound one more retained message would pass. r.mu held.
func (r *retainedBook) over(topic, owner string, size int64) string {
	// what the owner and everyone would hold after it
	own, all := retainedUse{}, r.total
	if u := r.owners[owner]; u != nil {
		own = *u
	}
	if old, ok := r.topics[topic]; ok {
		all.count--
		all.bytes -= old.size
		if old.owner == owner {
			own.count--
			own.bytes -= old.size
		}
	}
	own.count++
	own.bytes += size
	all.count++
	all.bytes += size
	b := r.bounds
	switch {
	case all.count > b.MaxRetained || own.count > b.MaxRetainedPerClient:
		return "retained_count"
	case all.bytes > b.MaxRetainedBytes || own.bytes > b.MaxRetainedBytesPerClient:
		return "retained_bytes"
	}
	return ""
}

// held sets topic's entry to what mochi holds (pk nil: nothing).
func (r *retainedBook) held(topic string, pk *packets.Packet) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if pk == nil || len(pk.Payload) == 0 {
		r.set(topic, "", -1)
		return
	}
	r.set(topic, pk.Origin, retainedSize(pk))
}

// usage is what is held (and counted in flight) in total.
func (r *retainedBook) usage() (count int, bytes int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total.count, r.total.bytes
}

// resyncRetained puts topic's entry back to what mochi holds, after a
// retained publish counted in OnPublish ended without being retained.
func (b *Broker) resyncRetained(topic string) {
	if pk, ok := b.server.Topics.Retained.Get(topic); ok {
		b.retained.held(topic, &pk)
		return
	}
	b.retained.held(topic, nil)
}

// loadRetained counts the retained messages mochi restored from sessions.db
// at start, and drops those on a receipts topic (see receiptsTopic).
func (b *Broker) loadRetained() {
	for topic, pk := range b.server.Topics.Retained.GetAll() {
		if strings.HasPrefix(topic, "$") {
			continue // mochi's own $SYS topics
		}
		if b.isReceiptsTopic(topic) {
			b.server.Topics.RetainMessage(packets.Packet{TopicName: topic}) // empty payload: removed
			if b.store != nil {
				b.store.OnRetainedExpired(topic)
			}
			b.log.Warn("broker: removed a retained message on a receipts topic (only the gateway delivers receipts there)", "topic_bytes", len(topic))
			continue
		}
		b.retained.held(topic, &pk)
	}
}

// isReceiptsTopic reports whether topic is some device's receipts topic
// (receipts.mqtt_topic with any device). A retained message there would be
// delivered to the terminal as if it were a receipt, and no terminal could
// clear it: the gateway refuses retained publishes and wills there.
func (b *Broker) isReceiptsTopic(topic string) bool {
	return b.receiptsFilter != nil && rules.MatchFilter(b.receiptsFilter, topic)
}

// receiptsFilterOf is receipts.mqtt_topic as a filter matching every
// device's ({device} is one level: a device id holds no "/").
func receiptsFilterOf(cfg *config.Config) []string {
	t := cfg.Receipts.MQTTTopic
	if !strings.Contains(t, "{device}") {
		return nil
	}
	return strings.Split(strings.ReplaceAll(t, "{device}", "+"), "/")
}

// The bounds hook's part: mochi retains, expires and sends wills.

func (h *boundsHook) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	if r == 0 {
		return
	}
	if r < 0 {
		h.b.retained.held(pk.TopicName, nil)
		return
	}
	if pk.Origin == "" {
		pk.Origin = cl.ID
	}
	h.b.retained.held(pk.TopicName, &pk)
}

func (h *boundsHook) OnRetainedExpired(topic string) { h.b.retained.held(topic, nil) }

// OnWill sends a retained will without retaining it when that would pass a
// retained bound (the will still reaches its subscribers), and never
// retains one on a receipts topic.
func (h *boundsHook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	if !will.Retain || len(will.Payload) == 0 {
		return will, nil
	}
	pk := packets.Packet{TopicName: will.TopicName, Payload: will.Payload, Properties: packets.Properties{User: will.User}}
	reason := "receipts_topic"
	if !h.b.isReceiptsTopic(will.TopicName) {
		// counted when mochi retains it (OnRetainMessage): a delayed will
		// may never be sent
		if reason = h.b.retained.check(will.TopicName, cl.ID, retainedSize(&pk)); reason == "" {
			return will, nil
		}
	}
	will.Retain = false
	h.b.countRefused("", "will_"+reason)
	return will, nil
}
