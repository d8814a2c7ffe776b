package broker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	bbolt "go.etcd.io/bbolt"
)

// sessionLimits bounds the sessions of offline clients (DESIGN invariant
// 12): each ends max_session_expiry after its client left (or sooner, as the
// client asked), also across restarts, and beyond max_sessions the
// longest-offline go first.
//
// mochi v2.7.9 keeps neither bound across a restart: its session store
// does not record when a client left, so every restored session starts its
// expiry again at the restart, and it restores no session's own expiry
// (all get the server maximum). So the time each client went offline is
// kept here, in a small file of its own (sessions-meta.db), written in
// batches every metaFlush and on Close, never on the connect path: a crash
// loses at most that much, and a session whose time is lost counts as
// offline since the restart (kept longer, never dropped early).
type sessionLimits struct {
	mqtt.HookBase
	b      *Broker
	log    *slog.Logger
	expiry time.Duration // mqtt.max_session_expiry
	max    int           // mqtt.max_sessions
	now    func() time.Time

	db *bbolt.DB // nil: nothing persisted (no session store)

	mu      sync.Mutex
	offline map[string]time.Time // client id -> when it left; only sessions still held
	pending map[string]time.Time // to write: zero time = delete
	quit    chan struct{}
	done    chan struct{}
	closed  bool
}

const (
	metaFlush    = 5 * time.Second
	expiryCheck  = time.Second
	metaFileName = "sessions-meta.db"
)

var metaBucket = []byte("offline-since")

func (s *sessionLimits) ID() string { return "gateway-session-limits" }

func (s *sessionLimits) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnClientExpired:
		return true
	}
	return false
}

// openMeta opens (or creates) the file of offline times.
func (s *sessionLimits) openMeta(path string) error {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 2 * time.Second, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType})
	if err != nil {
		return fmt.Errorf("broker: %s: %w", path, err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(metaBucket)
		return err
	}); err != nil {
		db.Close()
		return fmt.Errorf("broker: %s: %w", path, err)
	}
	s.db = db
	return nil
}

// restore runs once mochi has loaded the stored sessions: each gets back the
// time its client left and its own expiry; sessions already expired, and
// the longest-offline beyond max_sessions, are dropped. Then the expiry and
// flush loop starts.
func (s *sessionLimits) restore() {
	since := map[string]time.Time{}
	if s.db != nil {
		_ = s.db.View(func(tx *bbolt.Tx) error {
			return tx.Bucket(metaBucket).ForEach(func(k, v []byte) error {
				if len(v) == 8 {
					since[string(k)] = time.Unix(int64(binary.BigEndian.Uint64(v)), 0)
				}
				return nil
			})
		})
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
	for id := range since {
		s.pending[id] = time.Time{} // no such session any more
	}
	s.mu.Unlock()
	s.expire(now)
	s.evict()
	s.flush()
	s.quit, s.done = make(chan struct{}), make(chan struct{})
	go s.loop()
}

func (s *sessionLimits) loop() {
	defer close(s.done)
	exp := time.NewTicker(expiryCheck)
	defer exp.Stop()
	fl := time.NewTicker(metaFlush)
	defer fl.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-exp.C:
			s.expire(s.now())
		case <-fl.C:
			s.flush()
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
	s.pending[cl.ID] = time.Time{}
	s.mu.Unlock()
}

func (s *sessionLimits) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	s.mu.Lock()
	if _, ok := s.offline[cl.ID]; ok {
		delete(s.offline, cl.ID)
		s.pending[cl.ID] = time.Time{}
	}
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
	s.pending[cl.ID] = now
	s.mu.Unlock()
}

// OnClientExpired: mochi expired a session by itself.
func (s *sessionLimits) OnClientExpired(cl *mqtt.Client) {
	s.forget(cl)
}

// flush writes the pending offline times in one transaction.
func (s *sessionLimits) flush() {
	s.mu.Lock()
	if len(s.pending) == 0 || s.db == nil {
		s.pending = map[string]time.Time{}
		s.mu.Unlock()
		return
	}
	batch := s.pending
	s.pending = map[string]time.Time{}
	s.mu.Unlock()
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(metaBucket)
		for id, t := range batch {
			var err error
			if t.IsZero() {
				err = b.Delete([]byte(id))
			} else {
				err = b.Put([]byte(id), binary.BigEndian.AppendUint64(nil, uint64(t.Unix())))
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.log.Warn("broker: writing session offline times failed; affected sessions count as offline since the next start", "error", err)
	}
}

// close stops the loop, writes what is pending and closes the file. Safe
// to call twice and before restore.
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
	}
	s.flush()
	if s.db != nil {
		return s.db.Close()
	}
	return nil
}
