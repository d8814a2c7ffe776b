package broker

import (
	"strconv"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"github.com/mochi-mqtt/server/v2/packets"
)

// sessionStore persists broker sessions (clients, subscriptions, retained
// messages, outbound in-flight deliveries) with mochi's bbolt storage hook,
// minus its tracking of inbound QoS acknowledgements: that hook writes (and
// fsyncs) twice per incoming QoS 1 publish, which would undo group commit.
// Inbound publishes are already durable in the uplink buffer, and a
// retransmission is recognised there.
type sessionStore struct {
	*bolt.Hook
	ingest   *ingestHook
	downlink *downlinkHook // its deliveries are the receipts outbox's, not the session's
}

func (s *sessionStore) ID() string { return "gateway-sessions" }

// Stop is deferred: mochi stops its hooks while client goroutines (and our
// ackers, which deliver to offline sessions) are still finishing, so the
// broker closes the store itself once they are done (see Broker.Close).
func (s *sessionStore) Stop() error { return nil }

// OnQosPublish keeps outbound deliveries only: an inbound publish's PUBACK or
// PUBREC needs no session record.
func (s *sessionStore) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if t := pk.FixedHeader.Type; t == packets.Puback || t == packets.Pubrec {
		return
	}
	if s.downlink.owns(cl, pk) {
		return
	}
	s.Hook.OnQosPublish(cl, pk, sent, resends)
}

// OnQosComplete skips the completion of an inbound publish, which mochi
// reports while the ingest acker re-injects it.
func (s *sessionStore) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if s.ingest.isInjecting(cl) || s.downlink.owns(cl, pk) {
		return
	}
	s.Hook.OnQosComplete(cl, pk)
}

func (s *sessionStore) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if s.ingest.isInjecting(cl) || s.downlink.owns(cl, pk) {
		return
	}
	s.Hook.OnQosDropped(cl, pk)
}

// StoredInflightMessages fixes a mochi v2.7.9 loss: its bbolt hook stores an
// in-flight message without its packet id, so after a restart the message is
// restored with id 0 and the client is disconnected ("missing packet id").
// The id is the last part of the storage key ("IFM_<client>:<id>").
func (s *sessionStore) StoredInflightMessages() ([]storage.Message, error) {
	msgs, err := s.Hook.StoredInflightMessages()
	for i := range msgs {
		if msgs[i].PacketID != 0 {
			continue
		}
		j := strings.LastIndexByte(msgs[i].ID, ':')
		if id, perr := strconv.ParseUint(msgs[i].ID[j+1:], 10, 16); j >= 0 && perr == nil {
			msgs[i].PacketID = uint16(id)
		}
	}
	return msgs, err
}
