package bridge

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/IBM/sarama"
)

// Duplicate gateway ids (two boxes flashed from one image share the default
// id, the host name). Their records would carry the same gw.id; gw.epoch still
// tells them apart (two buffers never share an epoch), but the operator must
// know. Detection, in both delivery modes:
//
//   - presence claims: every PresenceInterval (and once the link is first up)
//     the bridge reads the newest claim under key "presence/<id>" in
//     OffsetsTopic, then writes its own: {epoch, host, time}. A newest claim
//     of another epoch, found after this process has claimed before, means
//     another live buffer life uses the id since then: a second box (a
//     predecessor life, e.g. a wiped data_dir, can only have claimed before
//     this process's first claim, so it is never reported).
//   - exactly-once: Kafka fences one of the two transactional producers, and
//     the marks show another epoch's transactions after this process's own.
//
// Evidence is logged as an error, counted (gateway_duplicate_id_detected_total)
// and shown in /status as a problem. Nothing is refused: the records stay
// distinguishable by gw.epoch.

// DefaultPresenceInterval is how often a bridge claims its id.
const DefaultPresenceInterval = 15 * time.Minute

type presenceValue struct {
	Format int       `json:"v"`
	Epoch  string    `json:"epoch"`
	Host   string    `json:"host,omitempty"`
	At     time.Time `json:"at"`
}

func presenceKey(gatewayID string) string { return "presence/" + gatewayID }

// presenceLoop claims the id until Close.
func (b *Bridge) presenceLoop() {
	defer close(b.presenceDone)
	every := b.opts.PresenceInterval
	// The first claim once Kafka answered, then on the interval.
	t := time.NewTimer(time.Second)
	defer t.Stop()
	for {
		select {
		case <-b.quit:
			return
		case <-t.C:
		}
		if b.Link().State != StateUp {
			t.Reset(time.Second)
			continue
		}
		if err := b.claim(); err != nil {
			b.logs.Warn(b.log, "presence", "claiming the gateway id failed; a duplicated id cannot be detected until it succeeds", "error", err)
			t.Reset(every)
			continue
		}
		t.Reset(every)
	}
}

// claims counts successful presence claims (tests wait on it).
func (b *Bridge) claimCount() int64 { return b.claims.Load() }

func (b *Bridge) claim() error {
	cfg := *b.base
	cfg.Producer.Transaction.ID = ""
	cfg.Producer.Idempotent = false
	cfg.Net.MaxOpenRequests = 5
	cfg.Producer.Retry.Max = 2
	cfg.Metadata.Full = false
	cl, err := sarama.NewClient(b.opts.Kafka.Brokers, &cfg)
	if err != nil {
		return err
	}
	defer cl.Close()
	if err := b.ensureOffsetsTopic(cl); err != nil {
		return err
	}
	parts, err := cl.Partitions(OffsetsTopic)
	if err != nil {
		return err
	}
	key := presenceKey(b.opts.GatewayID)
	p, err := b.base.Producer.Partitioner(OffsetsTopic).Partition(
		&sarama.ProducerMessage{Topic: OffsetsTopic, Key: sarama.StringEncoder(key)}, int32(len(parts)))
	if err != nil {
		return err
	}
	r := &markReader{cl: cl, version: cfg.Version, partition: p, deadline: time.Now().Add(markReadTimeout)}
	v, found, err := r.last([]byte(key))
	if err != nil {
		return fmt.Errorf("reading presence claims: %w", err)
	}
	epoch := b.buf.Epoch()
	if found {
		var pv presenceValue
		if err := json.Unmarshal(v, &pv); err == nil && pv.Epoch != epoch && b.claims.Load() > 0 {
			b.duplicateID(fmt.Sprintf("a gateway with buffer epoch %s (host %q) claimed the id at %s, after this one (epoch %s) did",
				pv.Epoch, pv.Host, pv.At.UTC().Format(time.RFC3339), epoch))
		}
	}
	host, _ := os.Hostname()
	val, _ := json.Marshal(presenceValue{Format: 1, Epoch: epoch, Host: host, At: time.Now()})
	prod, err := sarama.NewSyncProducerFromClient(cl)
	if err != nil {
		return err
	}
	defer prod.Close()
	if _, _, err := prod.SendMessage(&sarama.ProducerMessage{Topic: OffsetsTopic, Key: sarama.StringEncoder(key), Value: sarama.ByteEncoder(val)}); err != nil {
		return fmt.Errorf("writing the presence claim: %w", err)
	}
	b.claims.Add(1)
	return nil
}
