package bridge

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strconv"
	"time"

	"github.com/IBM/sarama"
)

// Exactly-once drain (kafka.exactly_once: true; DESIGN "Exactly-once").
//
// Each batch is one Kafka transaction. Besides the batch's records it writes
// one mark record to OffsetsTopic: key "<gateway id>", value (JSON) the
// buffer's epoch and, for every route this buffer life has drained, the
// highest gw.seq committed. A record is deleted from the buffer only after
// the transaction committed. A crash between Kafka's commit and the local
// delete would send the batch again; so every session, before it drains,
// reads the last committed mark and deletes what is at or below it, but only
// when the mark's epoch is this buffer's: a wiped, replaced or quarantined
// buffer starts a new epoch with gw.seq from 1 again, and an old life's marks
// must not delete its new records.
//
// Because every transaction carries all of the epoch's marks, the newest
// committed mark record is all a reader needs: the read goes backwards from
// the last stable offset in growing windows (a few records normally; more
// only when other gateways share the partition), so it costs O(routes), not
// O(history). It reads to a definite end (the last stable offset, taken with
// read_committed isolation) and fails explicitly when it cannot get there.
//
// A transaction left open by a crash is aborted by Kafka when the next
// session's producer registers the same transactional.id (which also fences
// a second process running with the same gateway id: reported, see
// reportFenced).

// OffsetsTopic holds the exactly-once drain marks. Create it compacted
// (cleanup.policy=compact) on a shared cluster; the gateway creates it with
// one partition if it is missing and it may.
const OffsetsTopic = "__gateway_offsets"

// markFormat is the version of the mark record's value.
const markFormat = 2

// markWindow is the first backwards window read from the last stable offset;
// each further window is four times larger.
const markWindow = 64

// markFetchBytes bounds one fetch of the marks partition.
const markFetchBytes = 1 << 20

// markReadTimeout bounds reading the marks; the session fails and is retried
// after a backoff when Kafka does not answer in time.
const markReadTimeout = 30 * time.Second

func transactionalID(gatewayID string) string { return "gateway-" + gatewayID + "-uplink" }

// markKey is the key of this gateway's mark records. The format-1 marks
// (key "<id>/<route>", value a bare decimal) carry no epoch and use other
// keys, so they are never obeyed.
func markKey(gatewayID string) string { return gatewayID }

// markValue is the value of a mark record.
type markValue struct {
	Format int               `json:"v"`
	Epoch  string            `json:"epoch"`
	Marks  map[string]uint64 `json:"marks"` // route -> highest committed gw.seq
}

// markMessage records the epoch's marks, updated with this transaction's.
func (b *Bridge) markMessage(marks map[string]uint64) *sarama.ProducerMessage {
	v, _ := json.Marshal(markValue{Format: markFormat, Epoch: b.buf.Epoch(), Marks: marks})
	return &sarama.ProducerMessage{
		Topic: OffsetsTopic,
		Key:   sarama.StringEncoder(markKey(b.opts.GatewayID)),
		Value: sarama.ByteEncoder(v),
	}
}

// skipCommitted reads the last committed marks, deletes from the buffer what
// earlier transactions of this buffer's life already committed to Kafka, so
// it is not sent twice, and keeps the marks to carry into the next
// transaction.
func (s *session) skipCommitted() error {
	b := s.b
	// Before the first batch: its mark must have a topic to go to.
	if err := s.ensureOffsetsTopic(); err != nil {
		return fmt.Errorf("bridge: exactly-once marks topic: %w", err)
	}
	start := time.Now()
	mv, found, err := s.readMarks()
	if err != nil {
		return fmt.Errorf("bridge: reading exactly-once marks from %s: %w", OffsetsTopic, err)
	}
	b.m.markRead.Observe(time.Since(start).Seconds())
	epoch := b.buf.Epoch()
	switch {
	case !found:
		s.marks = map[string]uint64{}
	case mv.Epoch != epoch:
		if b.wroteMarks.Load() {
			// This process committed marks of its own epoch before; someone
			// else's are newer: another live box uses the same id.
			b.duplicateID(fmt.Sprintf("the marks topic holds marks of buffer epoch %s written after this gateway's own (epoch %s)", mv.Epoch, epoch))
		} else {
			b.log.Info("exactly-once marks belong to another buffer life; ignored (a new or replaced buffer never obeys them)",
				"their_epoch", mv.Epoch, "epoch", epoch)
		}
		s.marks = map[string]uint64{}
	default:
		s.marks = maps.Clone(mv.Marks)
		if s.marks == nil {
			s.marks = map[string]uint64{}
		}
	}
	for route, seq := range s.marks {
		n, err := b.buf.DeleteThrough(route, seq)
		if err != nil {
			return fmt.Errorf("bridge: %w", err)
		}
		if n > 0 {
			b.log.Info("removed records an earlier run already committed to Kafka (exactly-once)",
				"route", route, "records", n, "through_seq", seq, "epoch", epoch)
			b.acked(n, time.Now())
		}
	}
	return nil
}

// readMarks returns the newest committed mark record of this gateway.
func (s *session) readMarks() (markValue, bool, error) {
	b := s.b
	parts, err := s.cl.Partitions(OffsetsTopic)
	if err != nil {
		return markValue{}, false, err
	}
	key := markKey(b.opts.GatewayID)
	p, err := b.base.Producer.Partitioner(OffsetsTopic).Partition(
		&sarama.ProducerMessage{Topic: OffsetsTopic, Key: sarama.StringEncoder(key)}, int32(len(parts)))
	if err != nil {
		return markValue{}, false, err
	}
	r := &markReader{cl: s.cl, version: b.base.Version, partition: p, deadline: time.Now().Add(markReadTimeout)}
	v, found, err := r.last([]byte(key))
	if err != nil || !found {
		return markValue{}, found, err
	}
	var mv markValue
	if err := json.Unmarshal(v, &mv); err != nil || mv.Format != markFormat {
		return markValue{}, false, fmt.Errorf("partition %d: mark %q is not a format-%d mark (err %v)", p, v, markFormat, err)
	}
	return mv, true, nil
}

// markReader reads one partition of OffsetsTopic with read_committed
// semantics, with raw fetches, so it knows exactly where the read stands
// (control records and aborted transactions included) and when it is done.
type markReader struct {
	cl        sarama.Client
	version   sarama.KafkaVersion
	partition int32
	deadline  time.Time
	fetches   int // fetch requests made, for tests and the benchmark
}

var errMarkDeadline = errors.New("timed out reading the marks")

// last returns the value of the newest committed record with key below the
// last stable offset: it reads backwards in growing windows until one holds
// such a record or the log's start is reached.
func (r *markReader) last(key []byte) ([]byte, bool, error) {
	start, lso, err := r.bounds()
	if err != nil {
		return nil, false, err
	}
	hi, window := lso, int64(markWindow)
	for hi > start {
		lo := max(start, hi-window)
		v, found, err := r.scan(lo, hi, key)
		if err != nil || found {
			return v, found, err
		}
		hi, window = lo, window*4
	}
	return nil, false, nil
}

// bounds returns the partition's log start offset and its last stable offset
// (the end a read_committed consumer may read to).
func (r *markReader) bounds() (start, lso int64, err error) {
	br, err := r.cl.Leader(OffsetsTopic, r.partition)
	if err != nil {
		return 0, 0, err
	}
	get := func(at int64) (int64, error) {
		req := sarama.NewOffsetRequest(r.version)
		if req.Version < 2 {
			req.Version = 2 // the first version with an isolation level
		}
		req.IsolationLevel = sarama.ReadCommitted
		req.AddBlock(OffsetsTopic, r.partition, at, 1)
		resp, err := br.GetAvailableOffsets(req)
		if err != nil {
			return 0, err
		}
		blk := resp.GetBlock(OffsetsTopic, r.partition)
		if blk == nil {
			return 0, errors.New("list offsets: no answer for the partition")
		}
		if blk.Err != sarama.ErrNoError {
			return 0, fmt.Errorf("list offsets: %w", blk.Err)
		}
		return blk.Offset, nil
	}
	if start, err = get(sarama.OffsetOldest); err != nil {
		return 0, 0, err
	}
	if lso, err = get(sarama.OffsetNewest); err != nil {
		return 0, 0, err
	}
	return start, lso, nil
}

// scan reads [lo, hi) completely and returns the value of the last committed
// record with key in it.
func (r *markReader) scan(lo, hi int64, key []byte) ([]byte, bool, error) {
	br, err := r.cl.Leader(OffsetsTopic, r.partition)
	if err != nil {
		return nil, false, err
	}
	var (
		val   []byte
		found bool
	)
	// Producers whose current transaction is aborted: set where an aborted
	// transaction starts (from the fetch's aborted list), cleared at its abort
	// marker. As sarama's consumer does for read_committed.
	aborted := map[int64]bool{}
	next, stalls := lo, 0
	for next < hi {
		if time.Now().After(r.deadline) {
			return nil, false, fmt.Errorf("%w: at offset %d of %d", errMarkDeadline, next, hi)
		}
		req := &sarama.FetchRequest{Version: 4, MaxWaitTime: 200, MinBytes: 1, MaxBytes: markFetchBytes,
			Isolation: sarama.ReadCommitted}
		req.AddBlock(OffsetsTopic, r.partition, next, markFetchBytes, -1)
		r.fetches++
		resp, err := br.Fetch(req)
		if err != nil {
			return nil, false, err
		}
		blk := resp.GetBlock(OffsetsTopic, r.partition)
		if blk == nil {
			return nil, false, errors.New("fetch: no answer for the partition")
		}
		if blk.Err != sarama.ErrNoError {
			return nil, false, fmt.Errorf("fetch at offset %d: %w", next, blk.Err)
		}
		txns := append([]*sarama.AbortedTransaction(nil), blk.AbortedTransactions...)
		sort.Slice(txns, func(i, j int) bool { return txns[i].FirstOffset < txns[j].FirstOffset })
		before := next
		for _, rs := range blk.RecordsSet {
			rb := rs.RecordBatch
			if rb == nil {
				return nil, false, fmt.Errorf("offset %d: a pre-0.11 message set in the marks topic", next)
			}
			last := rb.FirstOffset + int64(rb.LastOffsetDelta)
			for len(txns) > 0 && txns[0].FirstOffset <= last {
				aborted[txns[0].ProducerID] = true
				txns = txns[1:]
			}
			switch {
			case last < next:
				// the fetch starts inside this batch's range: already seen
			case rb.Control:
				if len(rb.Records) > 0 && controlType(rb.Records[0].Key) == 0 {
					delete(aborted, rb.ProducerID)
				}
			case rb.IsTransactional && aborted[rb.ProducerID]:
			default:
				for _, rec := range rb.Records {
					off := rb.FirstOffset + rec.OffsetDelta
					if off >= next && off < hi && string(rec.Key) == string(key) {
						val, found = rec.Value, true
					}
				}
			}
			if last+1 > next {
				next = last + 1
			}
			if next >= hi {
				break
			}
		}
		if next == before {
			// Below the last stable offset there is always something to
			// read; a fetch without progress means the log moved (e.g.
			// compaction while reading): try again a few times, then fail.
			if stalls++; stalls > 20 {
				return nil, false, fmt.Errorf("no progress reading at offset %d below the last stable offset %d", next, hi)
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		stalls = 0
	}
	return val, found, nil
}

// controlType is a control record's type from its key: 0 abort, 1 commit.
func controlType(key []byte) int16 {
	if len(key) < 4 {
		return -1
	}
	return int16(binary.BigEndian.Uint16(key[2:4]))
}

// ensureOffsetsTopic creates OffsetsTopic, compacted, if it does not exist.
func (s *session) ensureOffsetsTopic() error { return s.b.ensureOffsetsTopic(s.cl) }

func (b *Bridge) ensureOffsetsTopic(cl sarama.Client) error {
	if b.topicExists(cl, OffsetsTopic) {
		return nil
	}
	admin, err := sarama.NewClusterAdmin(b.opts.Kafka.Brokers, b.adminConfig())
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
		b.log.Info("created the gateway's marks topic", "topic", OffsetsTopic)
	}
	return cl.RefreshMetadata(OffsetsTopic)
}

// topicExists asks one broker, once, whether topic exists. sarama's
// client would retry an unknown topic with backoff (~0.6 s on a cluster
// that never had the marks topic) before saying so; any doubt here only
// costs a CreateTopic that finds it exists.
func (b *Bridge) topicExists(cl sarama.Client, topic string) bool {
	br := cl.LeastLoadedBroker()
	if br == nil {
		return false
	}
	if ok, _ := br.Connected(); !ok {
		if err := br.Open(cl.Config()); err != nil && !errors.Is(err, sarama.ErrAlreadyConnected) {
			return false
		}
	}
	resp, err := br.GetMetadata(sarama.NewMetadataRequest(b.base.Version, []string{topic}))
	if err != nil {
		return false
	}
	for _, t := range resp.Topics {
		if t.Name == topic {
			return t.Err == sarama.ErrNoError && len(t.Partitions) > 0
		}
	}
	return false
}

// adminConfig is the drain's config without the producer's transactional
// id (an admin client must not register it); sarama's admin finds the
// controller through a metadata request for all topics.
func (b *Bridge) adminConfig() *sarama.Config {
	cfg := *b.base
	cfg.Producer.Transaction.ID = ""
	cfg.Producer.Idempotent = false
	cfg.Metadata.Full = true
	return &cfg
}

// formatSeq is a gw.seq as it appears in headers.
func formatSeq(seq uint64) []byte { return strconv.AppendUint(nil, seq, 10) }
