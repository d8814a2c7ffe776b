package broker

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
	bbolt "go.etcd.io/bbolt"

	"github.com/edgegw/gateway/internal/boltfile"
)

// sessionStore persists broker sessions (persistent clients, their
// subscriptions and outbound in-flight deliveries, retained messages) in
// sessions.db, in the key and value format of mochi's bbolt storage hook (a
// file written by it opens unchanged), but written for flash:
//
//   - nothing for a clean session (it ends with its connection anyway);
//   - nothing for what did not change: a terminal reconnecting with the same
//     properties and subscriptions writes no byte (the remote address, which
//     changes on every connect, is not stored);
//   - a new persistent session or a changed subscription is committed before
//     its CONNACK's session goes live / before its SUBACK (a terminal that
//     subscribed for its receipts gets them after any crash);
//   - outbound in-flight deliveries are written behind, coalesced into one
//     commit per sessionFlushEvery, so one stored and completed within it
//     costs nothing; nothing is written on the path of a publish's PUBACK;
//   - no $SYS snapshot every second.
//
// Uplink publishes are not session state: they are durable in the buffer
// before their PUBACK, and receipts in their own outbox. What a power cut can
// take from here is the last second of in-flight local deliveries.
type sessionStore struct {
	mqtt.HookBase
	ingest   *ingestHook
	downlink *downlinkHook // its deliveries are the receipts outbox's, not the session's
	log      *slog.Logger

	path  string
	every time.Duration

	db      *bbolt.DB
	flushMu sync.Mutex // batches commit in the order they were taken
	mu      sync.Mutex
	cur     map[string][]byte // what the file holds
	pending map[string][]byte // changes not yet written; nil value = delete
	quit    chan struct{}
	done    chan struct{}
	closed  bool
}

// sessionBucket is mochi's bbolt hook's default bucket.
var sessionBucket = []byte("mochi")

// sessionFlushEvery is how long session changes may wait to be written.
const sessionFlushEvery = time.Second

func newSessionStore(path string, ingest *ingestHook, downlink *downlinkHook, log *slog.Logger) *sessionStore {
	return &sessionStore{path: path, every: sessionFlushEvery, ingest: ingest, downlink: downlink, log: log,
		cur: map[string][]byte{}, pending: map[string][]byte{}, quit: make(chan struct{}), done: make(chan struct{})}
}

func (s *sessionStore) ID() string { return "gateway-sessions" }

func (s *sessionStore) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnSubscribed, mqtt.OnUnsubscribed,
		mqtt.OnRetainMessage, mqtt.OnWillSent, mqtt.OnQosPublish, mqtt.OnQosComplete, mqtt.OnQosDropped,
		mqtt.OnClientExpired, mqtt.OnRetainedExpired,
		mqtt.StoredClients, mqtt.StoredInflightMessages, mqtt.StoredRetainedMessages,
		mqtt.StoredSubscriptions, mqtt.StoredSysInfo,
	}, []byte{b})
}

// Init opens the file and reads it whole: it holds sessions, not messages,
// so it is small.
func (s *sessionStore) Init(any) error {
	db, cur, err := s.open()
	if err != nil {
		return err
	}
	s.db, s.cur = db, cur
	go s.flusher()
	return nil
}

// open opens the file and reads what it holds.
func (s *sessionStore) open() (*bbolt.DB, map[string][]byte, error) {
	if err := boltfile.Check(s.path); err != nil {
		return nil, nil, fmt.Errorf("sessions: %w", err)
	}
	db, err := bbolt.Open(s.path, 0o600, &bbolt.Options{Timeout: 2 * time.Second, NoFreelistSync: true,
		FreelistType: bbolt.FreelistMapType, PageSize: 1024})
	if err != nil {
		return nil, nil, fmt.Errorf("sessions: open %s: %w", s.path, err)
	}
	cur := map[string][]byte{}
	err = db.Update(func(tx *bbolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists(sessionBucket)
		if err != nil {
			return err
		}
		// mochi's hook stored a $SYS snapshot every second; it is not session
		// state, and restoring it would only restore stale counters
		if bk.Get([]byte(storage.SysInfoKey)) != nil {
			if err := bk.Delete([]byte(storage.SysInfoKey)); err != nil {
				return err
			}
		}
		return bk.ForEach(func(k, v []byte) error {
			cur[string(k)] = append([]byte(nil), v...)
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, nil, fmt.Errorf("sessions: read %s: %w", s.path, err)
	}
	return db, cur, nil
}

// Stop is deferred: mochi stops its hooks while client goroutines (and our
// ackers, which deliver to offline sessions) are still finishing, so the
// broker closes the store itself once they are done (see Broker.Close).
func (s *sessionStore) Stop() error { return nil }

// Close writes what is pending and closes the file; safe to call twice.
func (s *sessionStore) Close() error {
	s.mu.Lock()
	if s.closed || s.db == nil {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.quit)
	<-s.done
	err := s.flush()
	return errors.Join(err, s.db.Close())
}

func (s *sessionStore) flusher() {
	defer close(s.done)
	t := time.NewTicker(s.every)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
			if err := s.flush(); err != nil {
				s.log.Error("sessions: writing session changes failed; will retry", "error", err)
			}
		}
	}
}

// flush writes the pending changes in one transaction.
func (s *sessionStore) flush() error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.mu.Lock()
	if len(s.pending) == 0 {
		s.mu.Unlock()
		return nil
	}
	batch := s.pending
	s.pending = map[string][]byte{}
	s.mu.Unlock()
	keys := make([]string, 0, len(batch))
	for k := range batch {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	err := s.db.Update(func(tx *bbolt.Tx) error {
		bk := tx.Bucket(sessionBucket)
		for _, k := range keys {
			var err error
			if v := batch[k]; v == nil {
				err = bk.Delete([]byte(k))
			} else {
				err = bk.Put([]byte(k), v)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		// bbolt's handle is not trusted after a failed write (its freelist,
		// or pages a failed fsync dropped): reopen from what is on disk
		_ = s.db.Close() // before opening again: the file lock is per open file
		if db, cur, oerr := s.open(); oerr == nil {
			s.mu.Lock()
			s.db, s.cur = db, cur
			s.mu.Unlock()
		} else {
			err = fmt.Errorf("%w (reopening: %v)", err, oerr)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		// put them back unless something newer replaced them meanwhile
		for k, v := range batch {
			if _, newer := s.pending[k]; !newer {
				s.pending[k] = v
			}
		}
		return err
	}
	for k, v := range batch {
		if v == nil {
			delete(s.cur, k)
		} else {
			s.cur[k] = v
		}
	}
	return nil
}

// set records a change of key to v, or nothing when the file already
// holds exactly that.
func (s *sessionStore) set(key string, v []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.cur[key]; ok && bytes.Equal(old, v) {
		delete(s.pending, key)
		return
	}
	s.pending[key] = v
}

func (s *sessionStore) del(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.cur[key]; !ok {
		delete(s.pending, key)
		return
	}
	s.pending[key] = nil
}

// put is set for a key bbolt can hold. mqtt.max_topic_length and
// max_client_id_length keep every key under bbolt's limit (config checks
// their sum); a longer one is left out and logged, never handed to a
// commit, where it would fail that commit and every later one, for every
// client's sessions.
func (s *sessionStore) put(key string, v []byte) {
	if len(key) > bbolt.MaxKeySize || len(v) > bbolt.MaxValueSize {
		s.log.Error("sessions: a key or value too large for the session file was not stored", "key_bytes", len(key), "value_bytes", len(v))
		return
	}
	s.set(key, v)
}

// delClient removes a client's record, subscriptions and in-flight messages.
func (s *sessionStore) delClient(id string) {
	s.mu.Lock()
	var keys []string
	for _, prefix := range []string{storage.SubscriptionKey + "_" + id + ":", storage.InflightKey + "_" + id + ":"} {
		for k := range s.cur {
			if strings.HasPrefix(k, prefix) {
				keys = append(keys, k)
			}
		}
		for k := range s.pending {
			if strings.HasPrefix(k, prefix) {
				keys = append(keys, k)
			}
		}
	}
	s.mu.Unlock()
	s.del(storage.ClientKey + "_" + id)
	s.del(offlineKeyPrefix + id)
	for _, k := range keys {
		s.del(k)
	}
}

// offlineKeyPrefix starts the keys of the times clients went offline (see
// sessionLimits); mochi's loaders read other prefixes only.
const offlineKeyPrefix = "GWOFF_"

// withPrefix returns the stored values whose keys start with prefix, by the
// rest of the key (pending changes included).
func (s *sessionStore) withPrefix(prefix string) map[string][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]byte{}
	for k, v := range s.cur {
		if strings.HasPrefix(k, prefix) {
			out[k[len(prefix):]] = v
		}
	}
	for k, v := range s.pending {
		if strings.HasPrefix(k, prefix) {
			if v == nil {
				delete(out, k[len(prefix):])
			} else {
				out[k[len(prefix):]] = v
			}
		}
	}
	return out
}

// persistent: the session outlives the connection, so it is worth storing.
func persistent(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion >= 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

func marshal(v storage.Serializable) []byte {
	data, _ := v.MarshalBinary()
	return data
}

func (s *sessionStore) putClient(cl *mqtt.Client) {
	props := cl.Properties.Props.Copy(false)
	s.put(storage.ClientKey+"_"+cl.ID, marshal(&storage.Client{
		ID:              cl.ID,
		T:               storage.ClientKey,
		Listener:        cl.Net.Listener,
		Username:        cl.Properties.Username,
		Clean:           cl.Properties.Clean,
		ProtocolVersion: cl.Properties.ProtocolVersion,
		Properties: storage.ClientProperties{
			SessionExpiryInterval: props.SessionExpiryInterval,
			AuthenticationMethod:  props.AuthenticationMethod,
			AuthenticationData:    props.AuthenticationData,
			RequestProblemInfo:    props.RequestProblemInfo,
			RequestResponseInfo:   props.RequestResponseInfo,
			ReceiveMaximum:        props.ReceiveMaximum,
			TopicAliasMaximum:     props.TopicAliasMaximum,
			User:                  props.User,
			MaximumPacketSize:     props.MaximumPacketSize,
		},
		Will: storage.ClientWill(cl.Properties.Will),
	}))
}

// OnSessionEstablished stores a persistent client; a client that connects
// with a clean session drops what an earlier persistent session left.
func (s *sessionStore) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if !persistent(cl) {
		s.delClient(cl.ID)
		return
	}
	s.putClient(cl)
	s.flushNow()
}

// flushNow commits pending changes at once (a session or subscription
// change must survive a crash right after it was acknowledged).
func (s *sessionStore) flushNow() {
	if err := s.flush(); err != nil {
		s.log.Error("sessions: writing a session change failed; it is retried within a second", "error", err)
	}
}

func (s *sessionStore) OnWillSent(cl *mqtt.Client, _ packets.Packet) {
	if persistent(cl) {
		s.putClient(cl)
	}
}

// OnDisconnect forgets a session that ends with its connection.
func (s *sessionStore) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if !expire || cl.StopCause() == packets.ErrSessionTakenOver {
		return
	}
	s.delClient(cl.ID)
}

func (s *sessionStore) OnClientExpired(cl *mqtt.Client) { s.delClient(cl.ID) }

func (s *sessionStore) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	if !persistent(cl) {
		return
	}
	for i, f := range pk.Filters {
		if i >= len(reasonCodes) || reasonCodes[i] >= 0x80 {
			continue // refused: nothing to restore
		}
		key := storage.SubscriptionKey + "_" + cl.ID + ":" + f.Filter
		s.put(key, marshal(&storage.Subscription{
			ID: key, T: storage.SubscriptionKey, Client: cl.ID, Qos: reasonCodes[i], Filter: f.Filter,
			Identifier: f.Identifier, NoLocal: f.NoLocal, RetainHandling: f.RetainHandling, RetainAsPublished: f.RetainAsPublished,
		}))
	}
	s.flushNow() // mochi writes the SUBACK after this hook
}

func (s *sessionStore) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	for _, f := range pk.Filters {
		s.del(storage.SubscriptionKey + "_" + cl.ID + ":" + f.Filter)
	}
	s.flushNow()
}

func messageProps(pk packets.Packet) storage.MessageProperties {
	props := pk.Properties.Copy(false)
	return storage.MessageProperties{
		PayloadFormat:          props.PayloadFormat,
		MessageExpiryInterval:  props.MessageExpiryInterval,
		ContentType:            props.ContentType,
		ResponseTopic:          props.ResponseTopic,
		CorrelationData:        props.CorrelationData,
		SubscriptionIdentifier: props.SubscriptionIdentifier,
		TopicAlias:             props.TopicAlias,
		User:                   props.User,
	}
}

func (s *sessionStore) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	key := storage.RetainedKey + "_" + pk.TopicName
	if r == -1 {
		s.del(key)
		return
	}
	s.put(key, marshal(&storage.Message{
		ID: key, T: storage.RetainedKey, FixedHeader: pk.FixedHeader, TopicName: pk.TopicName,
		Payload: pk.Payload, Created: pk.Created, Client: cl.ID, Origin: pk.Origin, Properties: messageProps(pk),
	}))
}

func (s *sessionStore) OnRetainedExpired(filter string) { s.del(storage.RetainedKey + "_" + filter) }

func inflightKey(cl *mqtt.Client, pk packets.Packet) string {
	return storage.InflightKey + "_" + cl.ID + ":" + pk.FormatID()
}

// OnQosPublish keeps outbound deliveries to persistent sessions only: an
// inbound publish's PUBACK or PUBREC needs no session record, and receipts
// live in their own outbox.
func (s *sessionStore) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, _ int) {
	if t := pk.FixedHeader.Type; t == packets.Puback || t == packets.Pubrec {
		return
	}
	if s.downlink.owns(cl, pk) || !persistent(cl) {
		return
	}
	key := inflightKey(cl, pk)
	s.put(key, marshal(&storage.Message{
		ID: key, T: storage.InflightKey, Client: cl.ID, Origin: pk.Origin, FixedHeader: pk.FixedHeader,
		TopicName: pk.TopicName, Payload: pk.Payload, Sent: sent, Created: pk.Created,
		PacketID: pk.PacketID, Properties: messageProps(pk),
	}))
}

// OnQosComplete skips the completion of an inbound publish, which mochi
// reports while the ingest acker re-injects it.
func (s *sessionStore) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if s.ingest.isInjecting(cl) || s.downlink.owns(cl, pk) {
		return
	}
	s.del(inflightKey(cl, pk))
}

func (s *sessionStore) OnQosDropped(cl *mqtt.Client, pk packets.Packet) { s.OnQosComplete(cl, pk) }

// OnSysInfoTick stores nothing: $SYS counters are not session state.
func (s *sessionStore) OnSysInfoTick(*system.Info) {}

// stored decodes the values under a key prefix as read at Init.
func stored[T any, P interface {
	*T
	UnmarshalBinary([]byte) error
}](s *sessionStore, prefix string) []T {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0)
	for k := range s.cur {
		if strings.HasPrefix(k, prefix+"_") || k == prefix {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	out := make([]T, 0, len(keys))
	for _, k := range keys {
		var v T
		if err := P(&v).UnmarshalBinary(s.cur[k]); err != nil {
			s.log.Warn("sessions: skipping an unreadable stored value", "key", k, "error", err)
			continue
		}
		out = append(out, v)
	}
	return out
}

func (s *sessionStore) StoredClients() ([]storage.Client, error) {
	return stored[storage.Client](s, storage.ClientKey), nil
}

func (s *sessionStore) StoredSubscriptions() ([]storage.Subscription, error) {
	return stored[storage.Subscription](s, storage.SubscriptionKey), nil
}

func (s *sessionStore) StoredRetainedMessages() ([]storage.Message, error) {
	return stored[storage.Message](s, storage.RetainedKey), nil
}

// StoredInflightMessages also fixes files written by mochi v2.7.9's hook,
// which stored an in-flight message without its packet id: after a restart
// it came back with id 0 and the client was disconnected ("missing packet
// id"). The id is the last part of the key ("IFM_<client>:<id>").
func (s *sessionStore) StoredInflightMessages() ([]storage.Message, error) {
	msgs := stored[storage.Message](s, storage.InflightKey)
	for i := range msgs {
		if msgs[i].PacketID != 0 {
			continue
		}
		j := strings.LastIndexByte(msgs[i].ID, ':')
		var id uint16
		if _, err := fmt.Sscan(msgs[i].ID[j+1:], &id); j >= 0 && err == nil {
			msgs[i].PacketID = id
		}
	}
	return msgs, nil
}

// StoredSysInfo restores nothing (see OnSysInfoTick).
func (s *sessionStore) StoredSysInfo() (storage.SystemInfo, error) { return storage.SystemInfo{}, nil }
