package bridge

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/IBM/sarama"

	"github.com/edgegw/gateway/buffer"
)

// Records Kafka refuses for good, and routes whose topic is missing
// (DESIGN invariant 11: no route blocks another).
//
// A poison record (too large, invalid, corrupt) is moved to the buffer's
// dead-letter store and the drain goes on behind it. Records larger than
// kafka.max_message_bytes are caught before they are sent. A refusal from the
// broker names a whole per-partition batch, not one record, so its records
// are only suspects: the next session sends the suspect routes one record at
// a time ("careful" mode) and sets aside exactly the record Kafka refuses
// alone.
//
// A route whose topic is missing (no auto-creation) or not authorized waits
// on its own: its records are not read until a retry time that backs off
// (waitMin doubling to waitMax), and every other route drains meanwhile.

// Dead-letter reasons, as counted per route.
const (
	ReasonTooLarge         = "too_large"
	ReasonInvalidRecord    = "invalid_record"
	ReasonCorrupt          = "corrupt"
	ReasonInvalidTimestamp = "invalid_timestamp"
	ReasonInvalidTopic     = "invalid_topic"
)

// Reasons a route waits.
const (
	WaitTopicMissing  = "topic_missing"
	WaitNotAuthorized = "not_authorized"
)

const (
	waitMin = 2 * time.Second
	waitMax = 5 * time.Minute
	// probeIdle: with nothing sent or answered for this long, the idle drain
	// asks Kafka something small, so "up" means Kafka answers. About 200
	// bytes each way per probe: ~2 MB a day on an idle, metered link.
	probeIdle = 10 * time.Second
)

// poisonReason is the dead-letter reason for an error that condemns the
// record(s) it came with, or "".
func poisonReason(err error) string {
	switch {
	case errors.Is(err, sarama.ErrMessageSizeTooLarge), errors.Is(err, sarama.ErrInvalidMessageSize):
		return ReasonTooLarge
	case errors.Is(err, sarama.ErrInvalidRecord):
		return ReasonInvalidRecord
	case errors.Is(err, sarama.ErrInvalidMessage):
		return ReasonCorrupt
	case errors.Is(err, sarama.ErrInvalidTimestamp):
		return ReasonInvalidTimestamp
	case errors.Is(err, sarama.ErrInvalidTopic):
		return ReasonInvalidTopic
	}
	var ce sarama.ConfigurationError
	if errors.As(err, &ce) && strings.Contains(string(ce), "MaxMessageBytes") {
		return ReasonTooLarge
	}
	return ""
}

// waitReason is why a route must wait for an error about its topic, or "".
func waitReason(err error) string {
	switch {
	case errors.Is(err, sarama.ErrUnknownTopicOrPartition):
		return WaitTopicMissing
	case errors.Is(err, sarama.ErrTopicAuthorizationFailed):
		return WaitNotAuthorized
	}
	return ""
}

// RouteWait says why and until when a route waits on its Kafka topic.
type RouteWait struct {
	Topic    string
	Reason   string // WaitTopicMissing or WaitNotAuthorized
	Error    string
	Since    time.Time
	Retry    time.Time // next attempt
	Failures int
}

// Waiting returns the routes waiting on their topic.
func (b *Bridge) Waiting() map[string]RouteWait {
	b.waitMu.Lock()
	defer b.waitMu.Unlock()
	out := make(map[string]RouteWait, len(b.waits))
	for r, w := range b.waits {
		out[r] = *w
	}
	return out
}

func (b *Bridge) setWaiting(route, topic, reason string, err error) {
	b.waitMu.Lock()
	defer b.waitMu.Unlock()
	now := time.Now()
	w := b.waits[route]
	if w == nil {
		w = &RouteWait{Since: now}
		b.waits[route] = w
		b.log.Warn("route waits on its Kafka topic; other routes go on", "route", route, "topic", topic, "reason", reason, "error", err)
		b.m.waiting.WithLabelValues(route, reason).Set(1)
	} else if now.Before(w.Retry) {
		return // already counted for this attempt
	}
	w.Topic, w.Reason, w.Error = topic, reason, err.Error()
	w.Failures++
	w.Retry = now.Add(backoff(w.Failures, waitMin, waitMax))
}

// routeDelivered ends a route's wait: Kafka took one of its records.
func (b *Bridge) routeDelivered(route string) {
	b.waitMu.Lock()
	defer b.waitMu.Unlock()
	if w := b.waits[route]; w != nil {
		b.log.Info("route no longer waits on its Kafka topic", "route", route, "topic", w.Topic, "waited", time.Since(w.Since).Round(time.Millisecond))
		b.m.waiting.WithLabelValues(route, w.Reason).Set(0)
		delete(b.waits, route)
	}
}

// skipWaiting moves the read cursors of routes waiting until a later retry
// past their end, so Read skips them (as readCursors does outside windows).
func (b *Bridge) skipWaiting(after map[string]uint64) map[string]uint64 {
	b.waitMu.Lock()
	defer b.waitMu.Unlock()
	now := time.Now()
	var out map[string]uint64
	for route, w := range b.waits {
		if !now.Before(w.Retry) {
			continue
		}
		if out == nil {
			out = make(map[string]uint64, len(after)+len(b.waits))
			for r, s := range after {
				out[r] = s
			}
		}
		out[route] = math.MaxUint64 - 1
	}
	if out == nil {
		return after
	}
	return out
}

// nextRetry is when the earliest waiting route may be tried again (zero if
// none waits).
func (b *Bridge) nextRetry() time.Time {
	b.waitMu.Lock()
	defer b.waitMu.Unlock()
	var t time.Time
	for _, w := range b.waits {
		if t.IsZero() || w.Retry.Before(t) {
			t = w.Retry
		}
	}
	return t
}

// deadLetter moves records to the dead-letter store, counts them and logs
// the first of each route and reason.
func (b *Bridge) deadLetter(recs []buffer.Record, reason string, cause error) error {
	if len(recs) == 0 {
		return nil
	}
	detail := ""
	if cause != nil {
		detail = cause.Error()
	}
	if err := b.buf.DeadLetter(recs, reason, detail); err != nil {
		return err
	}
	byRoute := map[string]int{}
	for i := range recs {
		byRoute[recs[i].Route]++
	}
	routes := make([]string, 0, len(byRoute))
	for r := range byRoute {
		routes = append(routes, r)
	}
	sort.Strings(routes)
	for _, r := range routes {
		b.m.deadLetters.WithLabelValues(r, reason).Add(float64(byRoute[r]))
		b.log.Warn("records Kafka refuses for good moved to the dead-letter store (gateway deadletter ls)",
			"route", r, "reason", reason, "records", byRoute[r], "error", detail)
	}
	b.produceDeadLetters(recs, reason)
	return nil
}

// suspect notes records a broker refused within a batch: the next session
// sends their routes one record at a time up to the highest of them.
func (b *Bridge) suspect(recs []buffer.Record) {
	b.waitMu.Lock()
	defer b.waitMu.Unlock()
	for i := range recs {
		b.suspects[recs[i].Route] = max(b.suspects[recs[i].Route], recs[i].Seq)
	}
}

// takeSuspects returns (and keeps) the suspect routes and their highest seq.
func (b *Bridge) suspectRoutes() map[string]uint64 {
	b.waitMu.Lock()
	defer b.waitMu.Unlock()
	if len(b.suspects) == 0 {
		return nil
	}
	out := make(map[string]uint64, len(b.suspects))
	for r, s := range b.suspects {
		out[r] = s
	}
	return out
}

// clearSuspect forgets a route's suspects once records through seq are
// decided (sent alone or set aside).
func (b *Bridge) clearSuspect(route string, seq uint64) {
	b.waitMu.Lock()
	defer b.waitMu.Unlock()
	if s, ok := b.suspects[route]; ok && seq >= s {
		delete(b.suspects, route)
	}
}

// screen takes out of a batch, before anything is sent: records too large
// for kafka.max_message_bytes (set aside at once), and the records of routes
// whose topic Kafka lacks or denies (the route waits). It returns what may
// be sent with their Kafka messages, and whether it set anything aside or
// made a route wait. When nothing is taken out, recs itself is returned.
func (s *session) screen(recs []buffer.Record) ([]buffer.Record, []*sarama.ProducerMessage, bool, error) {
	b := s.b
	limit := int(b.maxMessageBytes())
	msgs := make([]*sarama.ProducerMessage, 0, len(recs))
	sl := newSlab(len(recs))
	var out []buffer.Record // nil while every record so far is kept
	keep := func(i int, m *sarama.ProducerMessage) {
		if out != nil {
			out = append(out, recs[i])
		}
		msgs = append(msgs, m)
	}
	drop := func(i int) {
		if out == nil {
			out = append(make([]buffer.Record, 0, len(recs)), recs[:i]...)
		}
	}
	var large []buffer.Record
	changed := false
	blocked := map[string]bool{}
	for i := range recs {
		r := &recs[i]
		if blocked[r.Route] {
			drop(i)
			continue
		}
		if reason, err := s.checkTopic(r.KafkaTopic); reason != "" {
			b.setWaiting(r.Route, r.KafkaTopic, reason, err)
			blocked[r.Route] = true
			changed = true
			drop(i)
			continue
		}
		m := b.messageIn(sl, r)
		if n := m.ByteSize(2); n > limit {
			large = append(large, *r)
			drop(i)
			continue
		}
		keep(i, m)
	}
	if out == nil {
		out = recs
	}
	if len(large) > 0 {
		changed = true
		if err := b.deadLetter(large, ReasonTooLarge, fmt.Errorf("record of %d bytes is over kafka.max_message_bytes %d", b.message(&large[0]).ByteSize(2), limit)); err != nil {
			return nil, nil, changed, err
		}
	}
	return out, msgs, changed, nil
}

// topicCheckWait bounds how long the drain waits for Kafka to say whether a
// topic exists: a Kafka that does not answer is the stall check's business
// (the records are sent and the link is reported down if nothing comes back).
const topicCheckWait = 3 * time.Second

// checkTopic asks Kafka once per session whether a topic can be produced to;
// it returns a wait reason when it cannot. When Kafka is slow to answer it
// returns "" (send): the producer's own errors make the route wait then.
func (s *session) checkTopic(topic string) (string, error) {
	if s.topicOK[topic] {
		return "", nil
	}
	ch, running := s.topicCheck[topic]
	if !running {
		ch = make(chan error, 1)
		s.topicCheck[topic] = ch
		go func() { _, err := s.cl.Partitions(topic); ch <- err }()
	}
	var err error
	if running {
		select {
		case err = <-ch:
		default:
			return "", nil // still asking: do not wait twice
		}
	} else {
		t := time.NewTimer(topicCheckWait)
		defer t.Stop()
		select {
		case err = <-ch:
		case <-t.C:
			return "", nil
		case <-s.f.fenced:
			return "", nil
		case <-s.b.quit:
			return "", nil
		}
	}
	delete(s.topicCheck, topic)
	if err == nil {
		s.topicOK[topic] = true
		return "", nil
	}
	return waitReason(err), err
}

func (b *Bridge) maxMessageBytes() int64 {
	if n := b.opts.Kafka.MaxMessageBytes; n > 0 {
		return n
	}
	return maxMessageBytes
}

// probe asks Kafka something cheap (ApiVersions) when the drain has been
// idle for probeIdle: the link is "up" exactly while Kafka answers.
func (s *session) probe() error {
	s.mu.Lock()
	idle := s.outstanding == 0 && time.Since(s.lastContact) >= probeIdle
	s.mu.Unlock()
	if !idle {
		return nil
	}
	brokers := s.cl.Brokers()
	if len(brokers) == 0 {
		return errors.New("bridge: probe: no broker known")
	}
	br := brokers[0]
	if ok, _ := br.Connected(); !ok {
		if err := br.Open(s.cl.Config()); err != nil && !errors.Is(err, sarama.ErrAlreadyConnected) {
			return fmt.Errorf("bridge: probe: %w", err)
		}
	}
	// Metadata for one topic the session produced to is small; without
	// one, ApiVersions (which every broker answers).
	var topic string
	for t := range s.topicOK {
		topic = t
		break
	}
	var err error
	if topic != "" {
		_, err = br.GetMetadata(sarama.NewMetadataRequest(s.b.base.Version, []string{topic}))
	} else {
		_, err = br.ApiVersions(&sarama.ApiVersionsRequest{})
	}
	if err != nil {
		return fmt.Errorf("bridge: idle probe: kafka does not answer: %w", err)
	}
	s.mu.Lock()
	s.lastContact = time.Now()
	s.mu.Unlock()
	s.b.setUp()
	return nil
}

func (s *session) isCareful() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.careful) > 0
}

// decided ends careful mode for a route once a record at or past its
// highest suspect is acknowledged or set aside.
func (s *session) decided(route string, seq uint64) {
	s.mu.Lock()
	if top, ok := s.careful[route]; ok && seq >= top {
		delete(s.careful, route)
	}
	s.mu.Unlock()
	s.b.clearSuspect(route, seq)
}

// settleCareful ends careful mode for suspect routes whose suspects are gone
// (expired, dropped or set aside meanwhile): the read skipped past them.
func (s *session) settleCareful(recs []buffer.Record) {
	stats := s.b.buf.Stats()
	s.mu.Lock()
	var done []string
	for route, top := range s.careful {
		if stats[route].Messages == 0 {
			done = append(done, route)
			continue
		}
		for i := range recs {
			if recs[i].Route == route && recs[i].Seq > top {
				done = append(done, route)
				break
			}
		}
	}
	for _, r := range done {
		delete(s.careful, r)
	}
	s.mu.Unlock()
	for _, r := range done {
		s.b.clearSuspect(r, math.MaxUint64)
	}
}

// setAsidePoison moves a completed batch's refused records to the
// dead-letter store (when the refusal names them alone) or makes them
// suspects for the next session's careful mode.
func (s *session) setAsidePoison(bt *batch) {
	s.mu.Lock()
	errs := bt.errs
	s.mu.Unlock()
	if len(errs) == 0 {
		return
	}
	byReason := map[string][]buffer.Record{}
	causes := map[string]error{}
	var suspects []buffer.Record
	var suspectErr error
	for i, err := range errs {
		reason := poisonReason(err)
		if reason == "" {
			continue
		}
		var ce sarama.ConfigurationError
		if bt.alone || errors.As(err, &ce) {
			byReason[reason] = append(byReason[reason], bt.recs[i])
			causes[reason] = err
		} else {
			suspects = append(suspects, bt.recs[i])
			suspectErr = err
		}
	}
	if len(suspects) > 0 {
		sort.Slice(suspects, func(i, j int) bool { return suspects[i].Seq < suspects[j].Seq })
		s.b.suspect(suspects)
		s.setAside.Add(1)
		s.b.log.Info("Kafka refused a batch for good; its routes are sent one record at a time until the record it refuses is found",
			"records", len(suspects), "error", suspectErr)
	}
	for reason, recs := range byReason {
		if err := s.b.deadLetter(recs, reason, causes[reason]); err != nil {
			s.b.log.Error("setting records aside failed; they stay in the buffer and are sent again", "error", err)
			continue
		}
		s.setAside.Add(1)
		for i := range recs {
			s.decided(recs[i].Route, recs[i].Seq)
		}
	}
}
