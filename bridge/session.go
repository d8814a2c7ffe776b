package bridge

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"

	"github.com/edgegw/gateway/buffer"
)

// A session is one producer's lifetime: created after a backoff, drained
// until the first error, then shut down; the next session starts again from
// the buffer's head, so whatever was not acknowledged is sent again.
//
// Ordering across failures. sarama keeps one partition's batches in order
// while it retries them, but when it finally gives up on a message (retries
// exhausted, no leader, a non-retriable error) it moves on to the next
// messages of the same partition, which may then be written to Kafka before
// the failed one is ever delivered: the first occurrences would be out of
// order. The fence prevents that. All broker connections go through it, and
// before any bytes are written it takes every error sarama has returned so
// far; after the first error nothing more is written. sarama's error channel
// is unbuffered and it returns a message's error before it lets a later
// message of that partition go out, so the later request always finds the
// fence closed.
type session struct {
	b    *Bridge
	f    *fence
	prod sarama.AsyncProducer
	cl   sarama.Client

	mu          sync.Mutex // guards the fields below
	outstanding int        // records handed to sarama without a result yet
	batches     int        // batches not yet completed and deleted
	lastAckAt   time.Time  // last acknowledgement, or when outstanding became non-zero
	stalled     bool

	// marks: exactly-once, every route's highest committed gw.seq in this
	// buffer's epoch; each transaction writes all of them (exactlyonce.go).
	marks map[string]uint64

	acked atomic.Uint64
	// setAside counts records set aside and routes made to wait in this
	// session: a session that ends on those did not end on the link.
	setAside atomic.Int64
	// topicOK: topics Kafka confirmed in this session (screen).
	topicOK map[string]bool
	// topicCheck: topic checks still waiting for Kafka's answer (screen).
	topicCheck map[string]chan error
	// careful: suspect routes and their highest suspect seq; while non-empty
	// the session sends one record at a time (poison.go). Guarded by mu.
	careful map[string]uint64
	// lastContact is the last answer from Kafka (guarded by mu).
	lastContact time.Time
	completed   chan *batch   // full batches go to the deleter
	space       chan struct{} // a batch was deleted: room for another
	readers     sync.WaitGroup
	deleterWG   sync.WaitGroup
}

// batch is one Read from the buffer, deleted when all its results are in.
type batch struct {
	recs    []buffer.Record
	acked   []bool
	pending int // results still to come, plus one while submitting
	failed  int
	sentAt  time.Time // when the last record was handed to sarama
	// aborted: exactly-once, the batch's transaction did not commit, so
	// nothing of it is deleted whatever Kafka acknowledged.
	aborted bool
	// errs holds each failed record's error (nil until one fails).
	errs map[int]error
	// alone: sent while nothing else was in flight (careful mode), so a
	// refusal names exactly this record.
	alone bool
}

// messageBytes is what the bandwidth cap counts for a record: key, value
// and header keys and values, before compression and protocol framing.
func messageBytes(m *sarama.ProducerMessage) int {
	n := m.Key.Length() + m.Value.Length()
	for _, h := range m.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return n
}

// msgRef ties a sarama message back to its batch slot.
type msgRef struct {
	b   *batch
	idx int
}

func (b *Bridge) connect() (*session, error) {
	s := &session{
		b:           b,
		completed:   make(chan *batch, b.opts.MaxInflightBatches+1),
		space:       make(chan struct{}, 1),
		topicOK:     map[string]bool{},
		topicCheck:  map[string]chan error{},
		careful:     b.suspectRoutes(),
		lastContact: time.Now(),
	}
	s.f = newFence(s)
	b.setSession(s)
	cfg := *b.base
	cfg.Net.Proxy.Enable = true
	cfg.Net.Proxy.Dialer = s.f
	// Once fenced every retry is doomed: fail fast so the session ends.
	cfg.Producer.Retry.BackoffFunc = func(retries, _ int) time.Duration {
		if s.f.closed.Load() {
			return 0
		}
		return backoff(retries, retryBackoffMin, retryBackoffMax)
	}
	cfg.Metadata.Retry.BackoffFunc = func(retries, _ int) time.Duration {
		if s.f.closed.Load() {
			return 0
		}
		return backoff(retries, metadataBackoff, 4*metadataBackoff)
	}
	cl, err := sarama.NewClient(b.opts.Kafka.Brokers, &cfg)
	if err != nil {
		s.f.kill(err)
		return nil, err
	}
	// An idempotent producer asks a broker for a producer id here: this is
	// where an unreachable Kafka shows.
	prod, err := sarama.NewAsyncProducerFromClient(cl)
	if err != nil {
		s.f.kill(err)
		cl.Close()
		return nil, err
	}
	s.cl, s.prod = cl, prod
	s.f.setErrors(prod.Errors())
	s.readers.Add(2)
	go s.readSuccesses()
	go s.pollErrors()
	s.deleterWG.Add(1)
	go s.deleter()
	if b.opts.Kafka.ExactlyOnce {
		// The producer has registered the transactional id, so any
		// transaction a crashed run left open is aborted by now.
		if err := s.skipCommitted(); err != nil {
			s.shutdown()
			return nil, err
		}
	}
	return s, nil
}

// readResult is one batch read and screened for sending.
type readResult struct {
	recs    []buffer.Record
	msgs    []*sarama.ProducerMessage
	changed bool // something was set aside or made to wait
	err     error
}

// readBatch reads the next batch after cursors by the current link rules,
// and screens it. Only one runs at a time (the drain's, or the one it
// started ahead).
func (s *session) readBatch(cursors map[string]uint64, careful bool) readResult {
	b := s.b
	rules := b.rules.Load()
	ws := windowAt(rules.link, b.opts.Now())
	b.checkWindow(ws)
	after := b.skipWaiting(b.readCursors(cursors, ws, rules.priority))
	size := b.sizer.size()
	if careful {
		size = 1
	}
	recs, err := b.buf.Read(after, rules.priority, size, b.batchBytes(rules.link))
	if err != nil {
		return readResult{err: err}
	}
	if careful {
		s.settleCareful(recs)
	}
	var r readResult
	r.recs, r.msgs, r.changed, r.err = s.screen(recs)
	return r
}

// drain reads batches and hands them to sarama until Close (returns nil) or
// the first error (returns it).
func (s *session) drain() error {
	b := s.b
	cursors := map[string]uint64{} // per route: the last seq handed to sarama
	tick := time.NewTicker(idleTick)
	defer tick.Stop()
	// Exactly-once: a batch's transaction commits (a round trip to Kafka,
	// after its last produce is acknowledged) while the next batch is read
	// and screened; the next transaction begins only once it has committed.
	var committing chan error
	waitCommit := func() error {
		if committing == nil {
			return nil
		}
		err := <-committing
		committing = nil
		return err
	}
	defer func() { _ = waitCommit() }() // never leave a commit running behind the session
	// The next batch is read and screened while this one is handed to
	// sarama (reading 10,000 records takes as long as a quarter of sending
	// them). It is used only if nothing changed the plan meanwhile: the
	// session is not careful, and every record of this batch was sent.
	var ahead chan readResult
	takeAhead := func() (readResult, bool) {
		if ahead == nil {
			return readResult{}, false
		}
		r := <-ahead
		ahead = nil
		return r, true
	}
	defer takeAhead() // never leave a read running behind the session
	for {
		select {
		case <-b.quit:
			return nil
		case <-s.f.fenced:
			return s.f.error()
		default:
		}
		careful := s.isCareful()
		if s.inflightBatches() >= b.opts.MaxInflightBatches || (careful && s.inflightBatches() > 0) {
			select {
			case <-b.quit:
				return nil
			case <-s.f.fenced:
				return s.f.error()
			case <-s.space:
			case <-tick.C:
				s.checkStall()
			}
			continue
		}
		r, ok := takeAhead()
		if !ok || careful {
			r = s.readBatch(cursors, careful)
		}
		recs, msgs, changed, err := r.recs, r.msgs, r.changed, r.err
		if err != nil {
			s.f.kill(err)
			return fmt.Errorf("bridge: %w", err)
		}
		if changed {
			s.setAside.Add(1)
		}
		if len(recs) == 0 {
			if changed {
				continue // something was set aside or made to wait: read again
			}
			if err := waitCommit(); err != nil {
				return err
			}
			select {
			case <-b.quit:
				return nil
			case <-s.f.fenced:
				return s.f.error()
			case <-b.buf.Notify():
			case <-b.wake:
			case <-s.space:
			case <-tick.C:
				s.checkStall()
				if err := s.probe(); err != nil {
					s.f.kill(err)
					return err
				}
			}
			continue
		}
		if err := waitCommit(); err != nil {
			return err
		}
		bt := &batch{recs: recs, acked: make([]bool, len(recs)), pending: len(recs) + 1, alone: careful}
		s.mu.Lock()
		if s.outstanding == 0 {
			s.lastAckAt = time.Now()
		}
		s.outstanding += len(recs)
		s.batches++
		s.mu.Unlock()
		b.m.inflight.Add(float64(len(recs)))
		txn := b.opts.Kafka.ExactlyOnce
		if txn {
			if err := s.prod.BeginTxn(); err != nil {
				err = fmt.Errorf("bridge: begin transaction: %w", err)
				s.f.kill(err)
				s.abort(bt, len(recs))
				return err
			}
		}
		if !careful {
			next := maps.Clone(cursors)
			for i := range recs {
				next[recs[i].Route] = recs[i].Seq
			}
			ahead = make(chan readResult, 1)
			go func() { ahead <- s.readBatch(next, false) }()
		}
		sent := 0
	submit:
		for i := range recs {
			msg := msgs[i]
			msg.Metadata = msgRef{b: bt, idx: i}
			n := messageBytes(msg)
			if !s.throttle(n) {
				break submit
			}
			b.m.bytes.Add(float64(n))
			select {
			case s.prod.Input() <- msg:
				sent++
				cursors[recs[i].Route] = recs[i].Seq
			case <-b.quit:
				break submit
			case <-s.f.fenced:
				break submit
			}
		}
		if sent < len(recs) {
			takeAhead() // read past records that were not sent: drop it
		}
		if txn {
			ch, err := s.commitTxn(bt, sent)
			if err != nil {
				return err
			}
			committing = ch
		} else {
			s.submitted(bt, len(recs)-sent)
		}
		b.m.batches.Inc()
	}
}

// commitTxn ends an exactly-once batch: the marks of its routes go into the
// same transaction, which commits only if every record was sent; otherwise
// it is aborted and nothing of the batch is deleted. The commit itself runs
// in the background; the returned channel (nil if there is nothing to wait
// for) gives its outcome, once the batch is released or aborted and, on
// failure, the session killed.
func (s *session) commitTxn(bt *batch, sent int) (chan error, error) {
	b := s.b
	if sent < len(bt.recs) {
		err := s.f.error()
		if err == nil {
			err = errClosing
		}
		_ = s.prod.AbortTxn()
		s.abort(bt, len(bt.recs)-sent)
		return nil, err
	}
	// Every route's mark of this epoch, with the batch's routes moved to
	// their highest seq in it (FIFO: their last).
	marks := maps.Clone(s.marks)
	if marks == nil {
		marks = map[string]uint64{}
	}
	for i := range bt.recs {
		marks[bt.recs[i].Route] = max(marks[bt.recs[i].Route], bt.recs[i].Seq)
	}
	select {
	case s.prod.Input() <- b.markMessage(marks):
	case <-b.quit:
		_ = s.prod.AbortTxn()
		s.abort(bt, 0)
		return nil, nil
	case <-s.f.fenced:
		s.abort(bt, 0)
		return nil, s.f.error()
	}
	done := make(chan error, 1)
	go func() {
		if err := s.commitWatched(); err != nil {
			err = fmt.Errorf("bridge: commit transaction: %w", err)
			if errors.Is(err, sarama.ErrProducerFenced) {
				b.duplicateID("Kafka fenced this gateway's transactional producer: another process registered the same transactional.id")
			}
			_ = s.prod.AbortTxn()
			s.f.kill(err)
			s.abort(bt, 0)
			done <- err
			return
		}
		s.marks = marks // read by the drain only after it received from done
		b.wroteMarks.Store(true)
		s.submitted(bt, 0)
		done <- nil
	}()
	return done, nil
}

// commitWatched commits the transaction. sarama's CommitTxn waits for every
// record of it, retrying while Kafka does not answer; meanwhile the link is
// reported down as the pipelined drain reports it (checkStall), and also
// when only the commit itself goes unanswered.
func (s *session) commitWatched() error {
	done := make(chan error, 1)
	go func() { done <- s.prod.CommitTxn() }()
	tick := time.NewTicker(idleTick)
	defer tick.Stop()
	start, reported := time.Now(), false
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
			s.checkStall()
			if !reported && time.Since(start) > stallAfter {
				reported = true
				s.b.sizer.shrink()
				s.b.setDown(fmt.Errorf("kafka has not completed a transaction commit for %v", stallAfter))
			}
		}
	}
}

// abort releases a batch whose transaction did not commit: it is not
// deleted, and is read again by the next session.
func (s *session) abort(bt *batch, unsent int) {
	s.mu.Lock()
	bt.aborted = true
	s.mu.Unlock()
	s.submitted(bt, unsent)
}

// submitted releases the batch's submitting hold and the records never
// handed to sarama.
func (s *session) submitted(bt *batch, unsent int) {
	s.mu.Lock()
	bt.sentAt = time.Now()
	bt.pending -= unsent + 1
	s.outstanding -= unsent
	done := bt.pending == 0
	s.mu.Unlock()
	s.b.m.inflight.Sub(float64(unsent))
	if done {
		s.completed <- bt
	}
}

// result books one message's outcome. It never blocks: completed has room
// for every batch that can be in flight.
func (s *session) result(msg *sarama.ProducerMessage, err error) {
	ref, ok := msg.Metadata.(msgRef)
	if !ok {
		return
	}
	now := time.Now()
	s.mu.Lock()
	if err == nil {
		ref.b.acked[ref.idx] = true
		s.lastAckAt = now
		s.lastContact = now
		s.stalled = false
	} else {
		ref.b.failed++
		if ref.b.errs == nil {
			ref.b.errs = map[int]error{}
		}
		ref.b.errs[ref.idx] = err
	}
	ref.b.pending--
	s.outstanding--
	done := ref.b.pending == 0
	s.mu.Unlock()
	s.b.m.inflight.Dec()
	if err == nil {
		s.acked.Add(1)
	} else if reason := waitReason(err); reason != "" {
		rec := &ref.b.recs[ref.idx]
		s.b.setWaiting(rec.Route, rec.KafkaTopic, reason, err)
		s.setAside.Add(1)
	}
	if done {
		s.completed <- ref.b
	}
}

func (s *session) inflightBatches() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.batches
}

// checkStall reports the link down when records wait for an
// acknowledgement longer than a healthy Kafka ever takes; sarama keeps
// retrying meanwhile.
func (s *session) checkStall() {
	s.mu.Lock()
	stalled := s.outstanding > 0 && time.Since(s.lastAckAt) > stallAfter
	n := s.outstanding
	report := stalled && !s.stalled
	s.stalled = stalled
	s.mu.Unlock()
	if report {
		s.b.sizer.shrink()
		s.b.setDown(fmt.Errorf("no acknowledgement from Kafka for %v with %d records in flight", stallAfter, n))
	}
}

func (s *session) readSuccesses() {
	defer s.readers.Done()
	for msg := range s.prod.Successes() {
		s.result(msg, nil)
	}
}

// pollErrors takes sarama's errors under the fence's lock. It polls rather
// than blocks until the fence closes, because a receive outside the lock
// would let a connection write slip between the receive and the fence.
func (s *session) pollErrors() {
	defer s.readers.Done()
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		if s.f.drain() {
			return
		}
		if s.f.closed.Load() {
			break
		}
		<-t.C
	}
	// Fenced: nothing is written any more, so the order of taking errors no
	// longer matters; take them as fast as they come.
	for e := range s.prod.Errors() {
		s.f.take(e)
	}
}

// deleter removes acknowledged records batch by batch, off the path that
// receives acknowledgements so sarama is never held up by an fsync.
func (s *session) deleter() {
	defer s.deleterWG.Done()
	for bt := range s.completed {
		s.b.sizer.batchDone(len(bt.recs), bt.failed, time.Since(bt.sentAt))
		refs := make([]buffer.Ref, 0, len(bt.recs))
		s.mu.Lock()
		aborted := bt.aborted
		s.mu.Unlock()
		for i, ok := range bt.acked {
			if ok && !aborted {
				refs = append(refs, buffer.Ref{Route: bt.recs[i].Route, Seq: bt.recs[i].Seq})
			}
		}
		s.setAsidePoison(bt)
		if len(refs) > 0 {
			careful := s.isCareful()
			for i := range refs {
				if i == 0 || refs[i].Route != refs[i-1].Route {
					s.b.routeDelivered(refs[i].Route)
				}
				if careful {
					s.decided(refs[i].Route, refs[i].Seq)
				}
			}
			if err := s.b.deleteAcked(refs); err != nil {
				// They stay and are sent again after the restart this forces.
				if !errors.Is(err, errClosing) {
					s.b.log.Error("deleting acknowledged records failed; they will be sent again", "records", len(refs), "error", err)
				}
				s.f.kill(fmt.Errorf("bridge: %w", err))
			} else {
				s.b.acked(len(refs), time.Now())
				if !s.f.closed.Load() {
					s.b.setUp() // back after a stall
				}
			}
		}
		s.mu.Lock()
		s.batches--
		s.mu.Unlock()
		select {
		case s.space <- struct{}{}:
		default:
		}
	}
}

// shutdown closes the producer, waits for every result and deletion, and
// closes the client. Close bounds it by killing the connections.
func (s *session) shutdown() {
	s.prod.AsyncClose()
	s.readers.Wait()
	close(s.completed)
	s.deleterWG.Wait()
	s.cl.Close()
	s.f.kill(errClosing)
}

// fence is the dialer sarama connects through; see session.
type fence struct {
	s      *session
	dialer net.Dialer

	mu     sync.Mutex
	errs   <-chan *sarama.ProducerError
	err    error
	conns  map[net.Conn]struct{}
	fenced chan struct{} // closed by the first error
	closed atomic.Bool   // mirrors fenced for cheap reads
}

var errFenced = errors.New("bridge: connection fenced after a produce error")

func newFence(s *session) *fence {
	return &fence{
		s:      s,
		dialer: net.Dialer{Timeout: netTimeout, KeepAlive: 30 * time.Second},
		conns:  map[net.Conn]struct{}{},
		fenced: make(chan struct{}),
	}
}

func (f *fence) setErrors(errs <-chan *sarama.ProducerError) {
	f.mu.Lock()
	f.errs = errs
	f.mu.Unlock()
}

// Dial implements sarama's proxy.Dialer.
func (f *fence) Dial(network, addr string) (net.Conn, error) {
	if f.closed.Load() {
		return nil, errFenced
	}
	c, err := f.dialer.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed.Load() {
		c.Close()
		return nil, errFenced
	}
	fc := &fencedConn{Conn: c, f: f}
	f.conns[fc] = struct{}{}
	return fc, nil
}

// drain takes every error sarama is offering right now. It reports whether
// the error channel is closed (the producer has shut down).
func (f *fence) drain() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.drainLocked()
}

func (f *fence) drainLocked() bool {
	if f.errs == nil {
		return false
	}
	for {
		select {
		case e, ok := <-f.errs:
			if !ok {
				f.errs = nil
				return true
			}
			f.takeLocked(e)
		default:
			return false
		}
	}
}

func (f *fence) take(e *sarama.ProducerError) {
	f.mu.Lock()
	f.takeLocked(e)
	f.mu.Unlock()
}

func (f *fence) takeLocked(e *sarama.ProducerError) {
	if e.Msg == nil {
		f.closeLocked(fmt.Errorf("bridge: produce: %w", e.Err))
		return
	}
	f.closeLocked(fmt.Errorf("bridge: produce to %s: %w", e.Msg.Topic, e.Err))
	f.s.result(e.Msg, e.Err)
}

func (f *fence) closeLocked(err error) {
	if f.closed.Load() {
		return
	}
	f.err = err
	f.closed.Store(true)
	close(f.fenced)
}

// kill closes the fence and every connection: in-flight requests fail at
// once instead of waiting for a Kafka that does not answer.
func (f *fence) kill(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closeLocked(err)
	for c := range f.conns {
		c.(*fencedConn).Conn.Close()
		delete(f.conns, c)
	}
}

func (f *fence) error() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// writable reports whether a connection may still write: it first takes
// any error sarama has returned (see session).
func (f *fence) writable() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.drainLocked()
	return !f.closed.Load()
}

type fencedConn struct {
	net.Conn
	f *fence
}

func (c *fencedConn) Write(p []byte) (int, error) {
	if !c.f.writable() {
		return 0, errFenced
	}
	return c.Conn.Write(p)
}

func (c *fencedConn) Close() error {
	c.f.mu.Lock()
	delete(c.f.conns, c)
	c.f.mu.Unlock()
	return c.Conn.Close()
}
