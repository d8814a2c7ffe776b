package broker

import (
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// localSubs remembers, per topic, whether a local subscriber wants it, so
// the ingest path does not walk mochi's topic tree (which allocates four
// maps) for every publish. Any SUBSCRIBE or UNSUBSCRIBE starts a new
// generation and every answer is asked again. A SUBSCRIBE bumps it both
// before mochi adds the subscription and after: a publish that raced it
// is treated as having come just before it, as it could have. Wrong the
// other way (a subscriber gone, mochi removing it without a hook on a clean
// disconnect) costs only a trip through mochi that delivers to no one.
type localSubs struct {
	gen   atomic.Uint64
	mu    sync.RWMutex
	m     map[string]localSubsEntry
	bytes int // of the topics in m
}

type localSubsEntry struct {
	gen uint64
	has bool
}

// localSubsMax and localSubsMaxBytes bound the cache; topics are the
// clients' to choose (each at most mqtt.max_topic_length).
const (
	localSubsMax      = 1 << 16
	localSubsMaxBytes = 4 << 20
)

func (c *localSubs) changed() { c.gen.Add(1) }

func (c *localSubs) has(topic string, ask func(string) bool) bool {
	gen := c.gen.Load()
	c.mu.RLock()
	e, ok := c.m[topic]
	c.mu.RUnlock()
	if ok && e.gen == gen {
		return e.has
	}
	has := ask(topic)
	c.mu.Lock()
	if c.m == nil || len(c.m) >= localSubsMax || c.bytes+len(topic) > localSubsMaxBytes {
		c.m = make(map[string]localSubsEntry)
		c.bytes = 0
	}
	if _, ok := c.m[topic]; !ok {
		c.bytes += len(topic)
	}
	c.m[topic] = localSubsEntry{gen: gen, has: has}
	c.mu.Unlock()
	return has
}

// The ingest hook's part: subscriptions change.

func (h *ingestHook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	h.b.localSubs.changed()
	return pk
}

func (h *ingestHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	h.b.localSubs.changed()
}

func (h *ingestHook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	h.b.localSubs.changed()
}
