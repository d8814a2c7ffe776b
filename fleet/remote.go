package fleet

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/IBM/sarama"

	"github.com/edgegw/gateway/kafkaclient"
)

// How a box reads only what is meant for it: the records of one key are in
// one partition (the producer's murmur2 of the key, see Partition), so the
// box consumes just the partition of its id and the partition of "*", from
// their start, with a plain partition consumer (no group: nothing is
// committed, nothing written on the cluster side). On a compacted topic
// that is the newest record of every key that shares those partitions;
// with P partitions and N boxes about 2N/P records at a start, instead of
// N (docs/fleet.md has the figures).

// maxFetchWait bounds the long poll: a fetch waits this long for a record
// before Kafka answers empty, so an idle box costs one round trip per wait
// and a new overlay is read as soon as it is written.
const maxFetchWait = 60 * time.Second

// partitionCheck is how often the topic's partition count is looked at
// again (a change moves keys to other partitions).
const partitionCheck = 10 * time.Minute

func (a *Agent) configConsumerConfig() (*sarama.Config, error) {
	c, err := kafkaclient.Config(a.opts.Config.Kafka)
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	wait := min(max(a.interval, time.Second), maxFetchWait)
	c.Consumer.MaxWaitTime = wait
	// A long poll is answered after wait: the read deadline must allow it.
	c.Net.ReadTimeout = wait + kafkaclient.NetTimeout
	c.Consumer.Return.Errors = true
	c.Consumer.Fetch.Default = 256 << 10
	c.MetricRegistry = a.m.configReg
	if a.opts.SaramaConfig != nil {
		a.opts.SaramaConfig(c)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("fleet: config reader settings: %w", err)
	}
	return c, nil
}

func (a *Agent) configLoop() {
	defer a.wg.Done()
	cc, err := a.configConsumerConfig()
	if err != nil {
		a.log.Error("fleet: remote config disabled", "error", err)
		return
	}
	failures := 0
	for !a.stopping() {
		if !a.linkUp() {
			// No connection attempts of our own while the drain finds the
			// link down: it tries, and says when it is back.
			if !a.sleep(time.Second) {
				return
			}
			continue
		}
		read, err := a.readConfig(cc)
		if a.stopping() {
			return
		}
		if read {
			failures = 0
		}
		failures++
		if errors.Is(err, errRepartitioned) {
			a.log.Info("fleet: the config topic's partition count changed; reading again")
			continue
		}
		if failures == 1 || failures%20 == 0 {
			a.log.Warn("fleet: reading the config topic failed; trying again", "topic", a.fleet.ConfigTopic, "error", err, "failures", failures)
		}
		if !a.sleep(backoff(failures, time.Second, min(a.interval, time.Minute))) {
			return
		}
	}
}

var errRepartitioned = errors.New("fleet: config topic repartitioned")

type partMsg struct {
	m   *sarama.ConsumerMessage
	err error
}

// readConfig consumes the box's partitions until an error or Close; read
// says whether any fetch succeeded.
func (a *Agent) readConfig(cc *sarama.Config) (read bool, err error) {
	topic := a.fleet.ConfigTopic
	client, err := sarama.NewClient(a.opts.Config.Kafka.Brokers, cc)
	if err != nil {
		return false, err
	}
	defer client.Close()
	parts, err := client.Partitions(topic)
	if err != nil {
		return false, fmt.Errorf("topic %s: %w", topic, err)
	}
	n := int32(len(parts))
	mine := []int32{Partition(a.id, n)}
	if p := Partition(AllBoxes, n); p != mine[0] {
		mine = append(mine, p)
	}
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		return false, err
	}
	defer consumer.Close()
	ch := make(chan partMsg, 64)
	done := make(chan struct{})
	defer close(done)
	for _, p := range mine {
		pc, err := consumer.ConsumePartition(topic, p, sarama.OffsetOldest)
		if err != nil {
			return false, fmt.Errorf("topic %s partition %d: %w", topic, p, err)
		}
		defer pc.AsyncClose()
		go forward(pc, ch, done)
	}
	check := time.NewTicker(partitionCheck)
	defer check.Stop()
	for {
		select {
		case <-a.quit:
			return read, nil
		case <-check.C:
			if ps, err := client.Partitions(topic); err == nil && int32(len(ps)) != n {
				return read, errRepartitioned
			}
		case pm := <-ch:
			if pm.err != nil {
				// sarama retries the partition by itself; a persistent
				// error shows in the log and the metrics.
				a.log.Debug("fleet: config topic fetch", "error", pm.err)
				continue
			}
			read = true
			batch := []*sarama.ConsumerMessage{pm.m}
			// What one fetch brought is evaluated together: at a start
			// that is the partitions' history, applied once.
		more:
			for len(batch) < 4096 {
				select {
				case pm := <-ch:
					if pm.err == nil {
						batch = append(batch, pm.m)
					}
				default:
					break more
				}
			}
			a.evaluate(batch)
		}
	}
}

func forward(pc sarama.PartitionConsumer, ch chan<- partMsg, done <-chan struct{}) {
	msgs, errs := pc.Messages(), pc.Errors()
	for msgs != nil || errs != nil {
		select {
		case m, ok := <-msgs:
			if !ok {
				msgs = nil
				continue
			}
			select {
			case ch <- partMsg{m: m}:
			case <-done:
				return
			}
		case e, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			select {
			case ch <- partMsg{err: e}:
			case <-done:
				return
			}
		case <-done:
			return
		}
	}
}

func header(m *sarama.ConsumerMessage, name string) (string, bool) {
	for _, h := range m.Headers {
		if h != nil && string(h.Key) == name {
			return string(h.Value), true
		}
	}
	return "", false
}

// evaluate decides on the records of one fetch, in offset order: each is
// checked as if the ones accepted before it were applied, and the result is
// applied once. A record at or before the offset of the overlay applied for
// its key was decided in an earlier life (or is older history): skipped.
func (a *Agent) evaluate(batch []*sarama.ConsumerMessage) {
	started := time.Now().UTC().Truncate(time.Millisecond)
	sort.SliceStable(batch, func(i, j int) bool {
		if batch[i].Partition != batch[j].Partition {
			return batch[i].Partition < batch[j].Partition
		}
		return batch[i].Offset < batch[j].Offset
	})
	a.mu.Lock()
	cand := make(map[string]*Overlay, len(a.applied))
	for k, o := range a.applied {
		cand[k] = o
	}
	a.mu.Unlock()
	changed := map[string]bool{}
	for _, m := range batch {
		key := string(m.Key)
		if key != a.id && key != AllBoxes {
			continue // another box's, sharing the partition
		}
		if cur := cand[key]; cur != nil && cur.Partition == m.Partition && m.Offset <= cur.Offset {
			continue
		}
		if m.Value == nil {
			a.log.Info("fleet: a tombstone for this box's config key was read and ignored (push an empty overlay to withdraw one)", "key", key, "offset", m.Offset)
			continue
		}
		ov, ref := a.verify(m, cand[key])
		if ref != nil {
			if ref.Reason != "" {
				a.refuse(*ref)
			}
			continue
		}
		next := make(map[string]*Overlay, len(cand))
		for k, o := range cand {
			next[k] = o
		}
		next[key] = ov
		if err := a.opts.Check(Layers(next, a.id)); err != nil {
			a.refuse(Refusal{Key: key, Version: ov.Version, Offset: m.Offset, Reason: ReasonInvalid,
				Detail: "the local file with it does not validate: " + oneLine(err.Error())})
			continue
		}
		cand = next
		changed[key] = true
	}
	if len(changed) == 0 {
		a.kickIfRefused(batch)
		return
	}
	restart, err := a.opts.Apply(Layers(cand, a.id))
	if err != nil {
		for k := range changed {
			a.refuse(Refusal{Key: k, Version: cand[k].Version, Offset: cand[k].Offset, Reason: ReasonInvalid,
				Detail: "the local file with it does not validate: " + oneLine(err.Error())})
		}
		a.kick()
		return
	}
	if err := SaveStore(a.opts.Config.DataDir, cand); err != nil {
		// It runs now; after a restart the topic is read again.
		a.log.Error("fleet: the applied overlay could not be kept in data_dir", "error", err)
	}
	a.mu.Lock()
	a.applied = cand
	a.inForce = true
	a.pending = restart
	// The list says what was refused since the config in force: older
	// refusals go, this batch's stay (a forged record next to a good one).
	kept := a.refused[:0]
	for _, r := range a.refused {
		if !r.At.Before(started) {
			kept = append(kept, r)
		}
	}
	a.refused = kept
	a.mu.Unlock()
	var what []string
	for _, k := range sortedKeys(changed) {
		what = append(what, fmt.Sprintf("%s@%d", k, cand[k].Version))
		a.m.applied.Inc()
	}
	a.m.version.Set(float64(a.fleetVersionLocked()))
	a.log.Info("fleet: signed config overlay applied", "overlays", strings.Join(what, " "), "needs_restart", strings.Join(restart, ","))
	a.kick()
}

func (a *Agent) fleetVersionLocked() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.fleetVersion()
}

func (a *Agent) kickIfRefused(batch []*sarama.ConsumerMessage) {
	for _, m := range batch {
		if k := string(m.Key); k == a.id || k == AllBoxes {
			a.kick()
			return
		}
	}
}

// verify checks one record for key against the overlay in force for it.
// A nil refusal accepts it; a refusal with no reason skips it silently (the
// same record as the one applied, read again).
func (a *Agent) verify(m *sarama.ConsumerMessage, cur *Overlay) (*Overlay, *Refusal) {
	key := string(m.Key)
	ref := &Refusal{Key: key, Offset: m.Offset}
	vs, ok := header(m, HeaderConfigVersion)
	if !ok {
		ref.Reason, ref.Detail = ReasonMalformed, "no gw.config.version header"
		return nil, ref
	}
	v, err := ParseVersion(vs)
	if err != nil {
		ref.Reason, ref.Detail = ReasonMalformed, err.Error()
		return nil, ref
	}
	ref.Version = v
	sig, _ := header(m, HeaderConfigSignature)
	kid, err := Verify(a.opts.Keys, key, v, m.Value, sig)
	switch {
	case errors.Is(err, ErrUnsigned):
		ref.Reason, ref.Detail = ReasonUnsigned, err.Error()
		return nil, ref
	case err != nil:
		ref.Reason, ref.Detail = ReasonBadSig, err.Error()
		return nil, ref
	}
	if cur != nil && v <= cur.Version {
		if v == cur.Version && cur.Signature == sig && bytes.Equal([]byte(cur.Value), m.Value) {
			return nil, &Refusal{} // the applied one again (a retried push)
		}
		ref.Reason = ReasonOlder
		ref.Detail = fmt.Sprintf("version %d is not newer than the applied version %d (a replay, or pushed out of order)", v, cur.Version)
		return nil, ref
	}
	if err := CheckSections(m.Value); err != nil {
		ref.Reason, ref.Detail = ReasonSection, err.Error()
		if strings.HasPrefix(err.Error(), "not ") || strings.Contains(err.Error(), "bytes, more than") {
			ref.Reason = ReasonMalformed
		}
		return nil, ref
	}
	return &Overlay{Key: key, Version: v, Value: string(m.Value), Signature: sig, KeyID: kid,
		Partition: m.Partition, Offset: m.Offset, Accepted: time.Now().UTC().Truncate(time.Millisecond)}, nil
}
