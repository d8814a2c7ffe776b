package bridge

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/IBM/sarama"
)

// Exactly-once drain (kafka.exactly_once: true; DESIGN "Exactly-once").
//
// Each batch is one Kafka transaction. Besides the batch's records it writes,
// per route in the batch, the highest gw.seq sent to OffsetsTopic (key
// "<gateway id>/<route>", value the seq in decimal). A record is deleted from
// the buffer only after the transaction committed. A crash between Kafka's
// commit and the local delete would send the batch again; so every session,
// before it drains, reads the committed marks (read_committed) and deletes
// what is at or below them. A transaction left open by a crash is aborted by
// Kafka when the next session's producer registers the same transactional.id
// (which also fences a second process running with the same gateway id).

// OffsetsTopic holds the exactly-once drain marks. Create it compacted
// (cleanup.policy=compact) on a shared cluster; the gateway creates it with
// one partition if it is missing and it may.
const OffsetsTopic = "__gateway_offsets"

// markReadIdle ends reading a partition's marks when nothing arrives for this
// long: the tail of a partition may hold only transaction markers or aborted
// records, which a read_committed consumer never sees.
const markReadIdle = 2 * time.Second

// markReadTimeout bounds reading the marks; the session fails and is retried
// after a backoff when Kafka does not answer in time.
const markReadTimeout = 60 * time.Second

func transactionalID(gatewayID string) string { return "gateway-" + gatewayID + "-uplink" }

func markKey(gatewayID, route string) string { return gatewayID + "/" + route }

// markMessage records that route's records through seq are in this transaction.
func (b *Bridge) markMessage(route string, seq uint64) *sarama.ProducerMessage {
	return &sarama.ProducerMessage{
		Topic: OffsetsTopic,
		Key:   sarama.StringEncoder(markKey(b.opts.GatewayID, route)),
		Value: sarama.StringEncoder(strconv.FormatUint(seq, 10)),
	}
}

// skipCommitted deletes from the buffer what earlier transactions already
// committed to Kafka, so it is not sent twice.
func (s *session) skipCommitted() error {
	b := s.b
	// Before the first batch: its mark must have a topic to go to.
	if err := s.ensureOffsetsTopic(); err != nil {
		return fmt.Errorf("bridge: exactly-once marks topic: %w", err)
	}
	var routes []string
	for route, st := range b.buf.Stats() {
		if st.Messages > 0 {
			routes = append(routes, route)
		}
	}
	if len(routes) == 0 {
		return nil
	}
	marks, err := s.readMarks(routes)
	if err != nil {
		return fmt.Errorf("bridge: reading exactly-once marks from %s: %w", OffsetsTopic, err)
	}
	for route, seq := range marks {
		n, err := b.buf.DeleteThrough(route, seq)
		if err != nil {
			return fmt.Errorf("bridge: %w", err)
		}
		if n > 0 {
			b.log.Info("removed records an earlier run already committed to Kafka (exactly-once)",
				"route", route, "records", n, "through_seq", seq)
			b.acked(n, time.Now())
		}
	}
	return nil
}

// readMarks returns the committed mark of each of routes that has one.
func (s *session) readMarks(routes []string) (map[string]uint64, error) {
	b := s.b
	parts, err := s.cl.Partitions(OffsetsTopic)
	if err != nil {
		return nil, err
	}
	// The partition each route's key lives in, as the producer chose it.
	want := map[int32]map[string]string{} // partition -> key -> route
	pr := s.b.base.Producer.Partitioner(OffsetsTopic)
	for _, route := range routes {
		key := markKey(b.opts.GatewayID, route)
		p, err := pr.Partition(&sarama.ProducerMessage{Topic: OffsetsTopic, Key: sarama.StringEncoder(key)}, int32(len(parts)))
		if err != nil {
			return nil, err
		}
		if want[p] == nil {
			want[p] = map[string]string{}
		}
		want[p][key] = route
	}
	cons, err := sarama.NewConsumerFromClient(s.cl)
	if err != nil {
		return nil, err
	}
	defer cons.Close()
	marks := map[string]uint64{}
	deadline := time.Now().Add(markReadTimeout)
	for p, keys := range want {
		if err := readPartitionMarks(s.cl, cons, p, keys, marks, deadline); err != nil {
			return nil, err
		}
	}
	return marks, nil
}

// readPartitionMarks reads partition p from its start to the end it had when
// the read began, keeping the last committed value of each key in keys.
func readPartitionMarks(cl sarama.Client, cons sarama.Consumer, p int32, keys map[string]string, marks map[string]uint64, deadline time.Time) error {
	end, err := cl.GetOffset(OffsetsTopic, p, sarama.OffsetNewest)
	if err != nil {
		return err
	}
	start, err := cl.GetOffset(OffsetsTopic, p, sarama.OffsetOldest)
	if err != nil {
		return err
	}
	if start >= end {
		return nil
	}
	pc, err := cons.ConsumePartition(OffsetsTopic, p, start)
	if err != nil {
		return err
	}
	defer pc.Close()
	idle := time.NewTimer(markReadIdle)
	defer idle.Stop()
	overall := time.NewTimer(time.Until(deadline))
	defer overall.Stop()
	for {
		select {
		case m, ok := <-pc.Messages():
			if !ok {
				return errors.New("mark reader closed")
			}
			if route, mine := keys[string(m.Key)]; mine {
				seq, err := strconv.ParseUint(string(m.Value), 10, 64)
				if err != nil {
					return fmt.Errorf("partition %d offset %d: mark %q: %w", p, m.Offset, m.Value, err)
				}
				marks[route] = max(marks[route], seq)
			}
			if m.Offset+1 >= end {
				return nil
			}
			idle.Reset(markReadIdle)
		case e := <-pc.Errors():
			return e
		case <-idle.C:
			// Only aborted records or transaction markers are left.
			return nil
		case <-overall.C:
			return fmt.Errorf("timed out reading partition %d", p)
		}
	}
}

// ensureOffsetsTopic creates OffsetsTopic, compacted, if it does not exist.
func (s *session) ensureOffsetsTopic() error {
	if _, err := s.cl.Partitions(OffsetsTopic); err == nil {
		return nil
	}
	admin, err := sarama.NewClusterAdmin(s.b.opts.Kafka.Brokers, s.adminConfig())
	if err != nil {
		return err
	}
	defer admin.Close()
	compact := "compact"
	err = admin.CreateTopic(OffsetsTopic, &sarama.TopicDetail{
		NumPartitions:     1,
		ReplicationFactor: -1, // the cluster's default
		ConfigEntries:     map[string]*string{"cleanup.policy": &compact},
	}, false)
	switch {
	case errors.Is(err, sarama.ErrTopicAlreadyExists): // another gateway was first
	case err != nil:
		return fmt.Errorf("creating %s: %w", OffsetsTopic, err)
	default:
		s.b.log.Info("created the exactly-once marks topic", "topic", OffsetsTopic)
	}
	return s.cl.RefreshMetadata(OffsetsTopic)
}

// adminConfig is the session's config without the producer's transactional
// id (an admin client must not register it); sarama's admin finds the
// controller through a metadata request for all topics.
func (s *session) adminConfig() *sarama.Config {
	cfg := *s.b.base
	cfg.Producer.Transaction.ID = ""
	cfg.Producer.Idempotent = false
	cfg.Metadata.Full = true
	return &cfg
}
