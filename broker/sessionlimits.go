package broker

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// sessionLimits bounds the sessions of offline clients (DESIGN invariant
// 12): each ends max_session_expiry after its client left (or sooner, as the
// client asked), also across restarts, and beyond max_sessions the
// longest-offline go first.
//
// mochi v2.7.9 keeps neither bound across a restart: its session records
// say nothing of when a client left, so every restored session would start
// its expiry again at the restart, and no restored session keeps its own
// expiry (all get the server maximum). So at shutdown the time each offline
// client left is written to the session store (key offlineKeyPrefix + id),
// with a mark that the shutdown was clean, in the store's last commit: a
// reconnect writes nothing (flash). After a crash there is no mark, and the
// sessions count as offline since the restart: kept longer, never dropped
// early.
type sessionLimits struct {
	mqtt.HookBase
	b      *Broker
	log    *slog.Logger
	expiry time.Duration // mqtt.max_session_expiry
	max    int           // mqtt.max_sessions
	now    func() time.Time

	mu      sync.Mutex
	offline map[string]time.Time // client id -> when it left; only sessions still held
	quit    chan struct{}
	done    chan struct{}
	closed  bool
}

// expiryCheck is how often offline sessions are checked for expiry.
const expiryCheck = time.Second

func (s *sessionLimits) ID() string { return "gateway-session-limits" }

func (s *sessionLimits) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnClientExpired:
		return true
	}
	return false
}

// cleanShutdownKey marks that the offline times were written at a clean
// shutdown (the value is its time).
const cleanShutdownKey = "GWCLEAN"

// save writes every offline session's time and the clean-shutdown mark.
func (s *sessionLimits) save() {
	if s.b.store == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, t := range s.offline {
		s.b.store.set(offlineKeyPrefix+id, binary.BigEndian.AppendUint64(nil, uint64(t.Unix())))
	}
	s.b.store.set(cleanShutdownKey, binary.BigEndian.AppendUint64(nil, uint64(s.now().Unix())))
}

// restore runs once mochi has loaded the stored sessions: each gets back the
// time its client left and its own expiry; sessions already expired, and
// the longest-offline beyond max_sessions, are dropped. Then the expiry and
// flush loop starts.
func (s *sessionLimits) restore() {
	since := map[string]time.Time{}
	clean := false
	if s.b.store != nil {
		for id, v := range s.b.store.withPrefix(offlineKeyPrefix) {
			if len(v) == 8 {
				since[id] = time.Unix(int64(binary.BigEndian.Uint64(v)), 0)
			}
			s.b.store.del(offlineKeyPrefix + id) // valid for this start only
		}
		if _, clean = s.b.store.withPrefix(cleanShutdownKey)[""]; clean {
			s.b.store.del(cleanShutdownKey)
		}
	}
	if !clean {
		since = map[string]time.Time{} // after a crash: offline since now
	}
	now := s.now()
	s.mu.Lock()
	for id, cl := range s.b.server.Clients.GetAll() {
		if cl.Net.Inline || !cl.Closed() {
			continue
		}
		if cl.Properties.ProtocolVersion == 5 && cl.Properties.Props.SessionExpiryInterval > 0 {
			// mochi's store drops the flag: without it the session would
			// live for the server maximum instead of what the client asked.
			cl.Properties.Props.SessionExpiryIntervalFlag = true
		}
		t, ok := since[id]
		if !ok || t.After(now) {
			t = now
		}
		s.offline[id] = t
		delete(since, id)
	}
	s.mu.Unlock()
	s.expire(now)
	s.evict()
	s.quit, s.done = make(chan struct{}), make(chan struct{})
	go s.loop()
}

func (s *sessionLimits) loop() {
	defer close(s.done)
	exp := time.NewTicker(expiryCheck)
	defer exp.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-exp.C:
			s.expire(s.now())
		}
	}
}

// sessionExpiry is how long cl's session outlives its connection.
func (s *sessionLimits) sessionExpiry(cl *mqtt.Client) time.Duration {
	d := s.expiry
	if cl.Properties.ProtocolVersion == 5 && cl.Properties.Props.SessionExpiryIntervalFlag {
		d = min(d, time.Duration(cl.Properties.Props.SessionExpiryInterval)*time.Second)
	}
	return d
}

// expire drops the offline sessions whose expiry passed.
func (s *sessionLimits) expire(now time.Time) {
	var due []*mqtt.Client
	s.mu.Lock()
	for id, t := range s.offline {
		cl, ok := s.b.server.Clients.Get(id)
		if !ok || !cl.Closed() {
			delete(s.offline, id)
			continue
		}
		if now.Sub(t) > s.sessionExpiry(cl) {
			due = append(due, cl)
		}
	}
	s.mu.Unlock()
	for _, cl := range due {
		s.drop(cl)
	}
}

// evict drops the longest-offline sessions while more than max are held.
func (s *sessionLimits) evict() {
	for s.b.server.Clients.Len()-1 > s.max { // -1: the inline client
		var oldest *mqtt.Client
		var at time.Time
		s.mu.Lock()
		for id, t := range s.offline {
			if oldest == nil || t.Before(at) {
				if cl, ok := s.b.server.Clients.Get(id); ok && cl.Closed() {
					oldest, at = cl, t
				}
			}
		}
		s.mu.Unlock()
		if oldest == nil {
			return // every session held is connected
		}
		s.drop(oldest)
		s.b.sessionsEvicted.Inc()
		s.b.logs.Warn(s.log, "session-evicted", "mqtt.max_sessions reached: the longest-offline sessions are dropped (logged once; see gateway_mqtt_sessions_evicted_total)", "max_sessions", s.max)
	}
}

// drop ends an offline session as mochi ends an expired one, and also
// forgets its subscriptions and in-flight messages (mochi v2.7.9 keeps those
// in its topic tree and store after expiry).
func (s *sessionLimits) drop(cl *mqtt.Client) {
	if cur, ok := s.b.server.Clients.Get(cl.ID); !ok || cur != cl || !cl.Closed() {
		return // reconnected meanwhile
	}
	s.b.server.Clients.Delete(cl.ID)
	s.forget(cl)
	if s.b.store != nil {
		s.b.store.OnClientExpired(cl)
	}
}

// forget clears what an ended session held, in memory and in the store.
func (s *sessionLimits) forget(cl *mqtt.Client) {
	s.b.server.UnsubscribeClient(cl)
	cl.ClearInflights()
	s.mu.Lock()
	delete(s.offline, cl.ID)
	s.mu.Unlock()
}

func (s *sessionLimits) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	s.mu.Lock()
	delete(s.offline, cl.ID)
	s.mu.Unlock()
	if s.b.server.Clients.Len()-1 > s.max {
		s.evict()
	}
}

func (s *sessionLimits) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if cl.Net.Inline || expire || cl.IsTakenOver() || errors.Is(cl.StopCause(), packets.ErrSessionTakenOver) {
		return
	}
	if cur, ok := s.b.server.Clients.Get(cl.ID); !ok || cur != cl {
		return
	}
	now := s.now()
	s.mu.Lock()
	s.offline[cl.ID] = now
	s.mu.Unlock()
}

// OnClientExpired: mochi expired a session by itself.
func (s *sessionLimits) OnClientExpired(cl *mqtt.Client) {
	s.forget(cl)
}

// close stops the expiry loop and hands the offline times to the session
// store, which writes them when it closes (after this, once every client
// has gone). Safe to call twice and before restore.
func (s *sessionLimits) close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	if s.quit != nil {
		close(s.quit)
		<-s.done
		s.save()
	}
	return nil
}
