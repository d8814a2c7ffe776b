package fleet

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/IBM/sarama"

	"github.com/edgegw/gateway/admin"
	"github.com/edgegw/gateway/kafkaclient"
)

// Why a status record has its own producer: it must not go through the
// uplink buffer (that would write the flash every interval, and a week
// offline would fill the buffer with stale statuses), and it must not wait
// in, or hold up, the drain's ordered, idempotent pipeline. So the newest
// record is kept in memory only, built when it is sent, and produced on a
// connection of its own with acks=all and a few retries: a lost record is
// replaced by the next one anyway. It rides below the most urgent route: a
// record waits while that route has a backlog (at most one interval, so a
// box whose payments never drain still reports).

// flashWindow is the span bytes_written_per_day is measured over.
const flashWindow = time.Hour

func (a *Agent) statusConfig() (*sarama.Config, error) {
	c, err := kafkaclient.Config(a.opts.Config.Kafka)
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Return.Successes = true
	c.Producer.Return.Errors = true
	c.Producer.Retry.Max = 2
	c.Producer.Retry.Backoff = 250 * time.Millisecond
	c.Producer.Partitioner = sarama.NewMurmur2Partitioner
	if mb := a.opts.Config.Kafka.MaxMessageBytes; mb > 0 {
		c.Producer.MaxMessageBytes = int(mb)
	}
	c.MetricRegistry = a.m.statusReg
	if a.opts.SaramaConfig != nil {
		a.opts.SaramaConfig(c)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("fleet: status producer settings: %w", err)
	}
	return c, nil
}

// outageWatch follows the link to summarise each outage: it starts when
// the drain reports the link down (or at the process start, for a box that
// has not reached Kafka since) and ends when the link is up again.
type outageWatch struct {
	down   bool
	everUp bool
	since  time.Time
	stored uint64
	counts Counts
	// samples of Stored, one per poll, so the count at the moment the
	// drain found the link down can be looked up afterwards.
	samples []storedSample
	// backlog while down, at the last poll: the drain may have sent it all
	// by the poll that sees the link up.
	backlog int64
}

type storedSample struct {
	at time.Time
	n  uint64
}

// storedAt is the newest sample at or before t (the oldest one if none is).
func (ow *outageWatch) storedAt(t time.Time) uint64 {
	if len(ow.samples) == 0 {
		return 0
	}
	n := ow.samples[0].n
	for _, s := range ow.samples {
		if s.at.After(t) {
			break
		}
		n = s.n
	}
	return n
}

func (a *Agent) statusLoop() {
	defer a.wg.Done()
	sc, err := a.statusConfig()
	if err != nil {
		a.log.Error("fleet: status records disabled", "error", err)
		return
	}
	var prod sarama.SyncProducer
	defer func() {
		if prod != nil {
			prod.Close()
		}
	}()
	poll := time.NewTicker(time.Second)
	defer poll.Stop()
	tick := time.NewTicker(a.interval)
	defer tick.Stop()

	var ow outageWatch
	owed := false           // a record is due
	var due time.Time       // when it became due: after one interval it goes whatever the urgent route holds
	var notBefore time.Time // a record owed to an overlay event waits half an interval after the last one
	var retryAt time.Time   // after a failed send
	var lastSent time.Time
	failures := 0
	a.sampleFlash()
	// The first record goes as soon as the link is up: a box that just
	// started shows at the center at once.
	owed, due, notBefore = true, time.Now(), time.Now()
	for {
		byTick, byEvent := false, false
		select {
		case <-a.quit:
			return
		case <-poll.C:
		case <-tick.C:
			a.sampleFlash()
			byTick = true
		case <-a.soon:
			byEvent = true
		}
		now := time.Now()
		switch {
		case byTick:
			if !owed {
				owed, due = true, now
			}
			notBefore = now
		case byEvent && !owed:
			// Applied or refused overlays go up soon, but a flood of forged
			// records must not become a flood of status records.
			owed, due = true, now
			notBefore = lastSent.Add(a.interval / 2)
		}
		l := a.opts.Link()
		up := l.State == admin.LinkUp
		if returned := a.watchOutage(&ow, l, now); returned && a.lastOutageSeconds() >= a.interval.Seconds() {
			// The first record after an outage goes as soon as the urgent
			// route allows. A blip shorter than an interval waits for the
			// next tick (it carries the blip): on a link that drops every
			// few seconds, a record per return would multiply the cost.
			owed, due, notBefore, retryAt = true, now, now, time.Time{}
		}
		if !owed || !up || now.Before(retryAt) || now.Before(notBefore) {
			continue
		}
		if a.opts.UrgentBacklog != nil && a.opts.UrgentBacklog() > 0 && now.Sub(due) < a.interval {
			continue
		}
		if now.Sub(lastSent) < time.Second {
			continue
		}
		if prod == nil {
			if prod, err = sarama.NewSyncProducer(a.opts.Config.Kafka.Brokers, sc); err != nil {
				prod = nil
				failures++
				retryAt = now.Add(backoff(failures, time.Second, min(a.interval, 30*time.Second)))
				a.m.sendErrors.Inc()
				a.log.Debug("fleet: status producer not connected", "error", err)
				continue
			}
		}
		if err := a.sendStatus(prod); err != nil {
			failures++
			retryAt = now.Add(backoff(failures, time.Second, min(a.interval, 30*time.Second)))
			a.m.sendErrors.Inc()
			if failures == 1 || failures%20 == 0 {
				a.log.Warn("fleet: status record not sent; the newest is sent at the next chance", "topic", a.fleet.StatusTopic, "error", err, "failures", failures)
			}
			prod.Close()
			prod = nil
			continue
		}
		failures, owed, lastSent = 0, false, time.Now()
	}
}

// watchOutage updates ow from the link state; it reports true when an
// outage just ended (its summary is then in a.outage).
func (a *Agent) watchOutage(ow *outageWatch, l admin.LinkStatus, now time.Time) bool {
	if a.opts.Stored != nil {
		ow.samples = append(ow.samples, storedSample{now, a.opts.Stored()})
		if len(ow.samples) > 16 {
			ow.samples = ow.samples[1:]
		}
	}
	if ow.down && l.State != admin.LinkUp && a.opts.Backlog != nil {
		ow.backlog = a.opts.Backlog()
	}
	if l.State == admin.LinkUp {
		ow.everUp = true
		if !ow.down {
			return false
		}
		ow.down = false
		ended := now.UTC().Truncate(time.Millisecond)
		o := Outage{Ended: &ended, Seconds: now.Sub(ow.since).Seconds()}
		if a.opts.Stored != nil {
			o.Buffered = a.opts.Stored() - ow.stored
		}
		st := a.opts.Snapshot()
		o.Dropped, o.Thinned = CountsOf(st).Since(ow.counts)
		for _, r := range st.Routes {
			o.BacklogAtReturn += r.BacklogMessages
		}
		o.BacklogAtReturn = max(o.BacklogAtReturn, ow.backlog)
		a.mu.Lock()
		a.outage = o
		a.mu.Unlock()
		a.log.Info("fleet: link back; the outage goes up in the next status record", "seconds", int64(o.Seconds), "buffered", o.Buffered)
		return true
	}
	if ow.down || l.State != admin.LinkDown {
		return false
	}
	ow.down = true
	if !ow.everUp {
		// Not up since the start: the outage is as old as this process
		// knows, and everything counted since the start belongs to it.
		ow.since, ow.stored, ow.counts = a.opts.Started, 0, Counts{}
		return false
	}
	ow.since = l.DownSince
	if ow.since.IsZero() {
		ow.since = now
	}
	ow.stored = ow.storedAt(ow.since)
	ow.counts = CountsOf(a.opts.Snapshot())
	return false
}

// Status builds the record the box would send now.
func (a *Agent) Status() *Record {
	st := a.opts.Snapshot()
	x := Extra{Started: a.opts.Started, Interval: a.interval, Config: a.configState(), Flash: a.flashState()}
	if a.opts.Clients != nil {
		x.Clients.Connected, x.Clients.Sessions = a.opts.Clients()
	}
	a.mu.Lock()
	x.Outage = a.outage
	a.mu.Unlock()
	return BuildRecord(st, x)
}

func (a *Agent) sendStatus(prod sarama.SyncProducer) error {
	rec := a.Status()
	value, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("fleet: encode status: %w", err)
	}
	msg := &sarama.ProducerMessage{
		Topic: a.fleet.StatusTopic,
		Key:   sarama.StringEncoder(a.id),
		Value: sarama.ByteEncoder(value),
		Headers: []sarama.RecordHeader{
			{Key: []byte(HeaderType), Value: []byte("status")},
			{Key: []byte(HeaderGatewayID), Value: []byte(a.id)},
		},
		Timestamp: rec.At,
	}
	if _, _, err := prod.SendMessage(msg); err != nil {
		return err
	}
	a.m.sent.Inc()
	a.m.sentBytes.Add(float64(len(value) + len(a.id)))
	return nil
}

func (a *Agent) sampleFlash() {
	if a.opts.WrittenBytes == nil {
		return
	}
	n, ok := a.opts.WrittenBytes()
	if !ok {
		return
	}
	now := time.Now()
	a.flashMu.Lock()
	defer a.flashMu.Unlock()
	a.flash = append(a.flash, flashSample{now, n})
	// Keep one sample older than the window, to measure across all of it.
	for len(a.flash) > 2 && now.Sub(a.flash[1].at) > flashWindow {
		a.flash = a.flash[1:]
	}
}

func (a *Agent) flashState() FlashState {
	a.flashMu.Lock()
	defer a.flashMu.Unlock()
	if len(a.flash) < 2 {
		return FlashState{}
	}
	first, last := a.flash[0], a.flash[len(a.flash)-1]
	span := last.at.Sub(first.at).Seconds()
	if span <= 0 || last.bytes < first.bytes {
		return FlashState{}
	}
	return FlashState{BytesWrittenPerDay: float64(last.bytes-first.bytes) / span * 86400, WindowS: span}
}

func (a *Agent) lastOutageSeconds() float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.outage.Seconds
}
