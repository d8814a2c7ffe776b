package bridge

import (
	"math"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/edgegw/gateway/config"
)

// The link rules (CONTRACT §2 `link`) and the drain priority can be swapped
// while the drain runs, for a config reload. They live behind one atomic
// pointer so the drain always sees a consistent pair.
type linkRules struct {
	link     config.Link
	priority func(route string) int
}

// Adaptive batch sizing: batches start small and grow while Kafka
// acknowledges them promptly; an error, a stall or a slow acknowledgement
// halves them. A small batch on a flapping link means little is sent again
// after each failure and a new high-priority message waits behind little.
const (
	DefaultMinBatchRecords = 64
	slowAck                = 5 * time.Second // an acknowledgement slower than this shrinks batches
	// With a bandwidth cap a batch holds about this much sending time, so
	// the priority order and drain windows are re-checked that often.
	capBatchTime = time.Second
	capBatchMin  = 16 << 10
)

// SetLink replaces the link rules (bandwidth cap, drain windows, urgent
// priority) while the drain runs; the next record sent follows them.
func (b *Bridge) SetLink(l config.Link) {
	old := b.rules.Load()
	b.rules.Store(&linkRules{link: cloneLink(l), priority: old.priority})
	b.setLimit(l.MaxBytesPerSecond)
	b.wakeUp()
}

// SetPriority replaces the route ranking (lower drains first); nil ranks all
// routes equal. Buffered records follow it by route name from the next batch.
func (b *Bridge) SetPriority(p func(route string) int) {
	if p == nil {
		p = func(string) int { return 0 }
	}
	old := b.rules.Load()
	b.rules.Store(&linkRules{link: old.link, priority: p})
	b.wakeUp()
}

func cloneLink(l config.Link) config.Link {
	l.Windows = append([]config.Window(nil), l.Windows...)
	return l
}

// wakeUp makes an idle drain look at the buffer and its rules again.
func (b *Bridge) wakeUp() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// setLimit sets the token bucket. The burst is a tenth of a second of
// traffic so the cap holds over short spans too; bigger records are paid
// for in burst-sized pieces.
func (b *Bridge) setLimit(bytesPerSecond int64) {
	if bytesPerSecond <= 0 {
		b.lim.SetLimit(rate.Inf)
		b.m.capBytes.Set(0)
		return
	}
	burst := max(int(bytesPerSecond/10), 1)
	b.lim.SetBurst(burst)
	b.lim.SetLimit(rate.Limit(bytesPerSecond))
	b.m.capBytes.Set(float64(bytesPerSecond))
}

// windowState says whether the drain may send everything now (open), and,
// if not, which priorities may still go (urgent and lower) and when the next
// window opens.
type windowState struct {
	open   bool
	urgent int
	next   time.Time // zero when open or no windows
}

func windowAt(l config.Link, now time.Time) windowState {
	if len(l.Windows) == 0 {
		return windowState{open: true}
	}
	ws := windowState{urgent: l.UrgentPriority}
	for _, w := range l.Windows {
		if w.Contains(now) {
			return windowState{open: true}
		}
		start := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, now.Location()).Add(w.Start)
		if !start.After(now) {
			start = start.AddDate(0, 0, 1)
		}
		if ws.next.IsZero() || start.Before(ws.next) {
			ws.next = start
		}
	}
	return ws
}

// readCursors returns the cursors to read the buffer with: outside a window
// the routes above the urgent priority are moved past their end, so Read
// skips them and the drain waits instead of reading what it may not send.
func (b *Bridge) readCursors(cursors map[string]uint64, ws windowState, prio func(string) int) map[string]uint64 {
	if ws.open {
		return cursors
	}
	after := make(map[string]uint64, len(cursors)+4)
	for r, s := range cursors {
		after[r] = s
	}
	for route := range b.buf.Stats() {
		if prio(route) > ws.urgent {
			// Read seeks to after[route]+1: MaxUint64 would wrap to 0.
			after[route] = math.MaxUint64 - 1
		}
	}
	return after
}

// checkWindow logs a window opening or closing once, and keeps the gauge.
func (b *Bridge) checkWindow(ws windowState) {
	closed := !ws.open
	if b.outside.Swap(closed) == closed {
		return
	}
	if closed {
		b.m.windowOpen.Set(0)
		b.log.Info("drain window closed: only urgent routes drain", "urgent_priority", ws.urgent, "next_window", ws.next.Format(time.RFC3339))
	} else {
		b.m.windowOpen.Set(1)
		b.log.Info("drain window open")
	}
}

// batchSizer is the adaptive batch size in records; the deleter and the
// drain goroutine use it concurrently.
type batchSizer struct {
	min, max int
	cur      atomic.Int64
}

func newBatchSizer(min, max int) *batchSizer {
	if min > max {
		min = max
	}
	s := &batchSizer{min: min, max: max}
	// Start in the middle (geometrically): a fast link reaches the largest
	// batches in a few acks, a slow one shrinks to the smallest as quickly.
	start := min
	for start*8 <= max && start < 1024 {
		start *= 2
	}
	s.cur.Store(int64(start))
	return s
}

func (s *batchSizer) size() int { return int(s.cur.Load()) }

// grow adds half again, up to max.
func (s *batchSizer) grow() {
	for {
		c := s.cur.Load()
		n := min(c+max(c/2, 1), int64(s.max))
		if n == c || s.cur.CompareAndSwap(c, n) {
			return
		}
	}
}

// shrink halves, down to min.
func (s *batchSizer) shrink() {
	for {
		c := s.cur.Load()
		n := max(c/2, int64(s.min))
		if n == c || s.cur.CompareAndSwap(c, n) {
			return
		}
	}
}

// batchDone adapts the size to how a completed batch went: full and quick
// grows it, any failure or a slow acknowledgement shrinks it.
func (s *batchSizer) batchDone(records, failed int, ackLatency time.Duration) {
	switch {
	case failed > 0 || ackLatency > slowAck:
		s.shrink()
	case records >= s.size():
		s.grow()
	}
}

// batchBytes bounds a batch's bytes: with a cap, about capBatchTime of
// sending, so a batch never holds the link for long.
func (b *Bridge) batchBytes(l config.Link) int {
	if l.MaxBytesPerSecond <= 0 {
		return b.opts.MaxBatchBytes
	}
	n := max(int64(float64(l.MaxBytesPerSecond)*capBatchTime.Seconds()), capBatchMin)
	return int(min(n, int64(b.opts.MaxBatchBytes)))
}

// throttle takes n bytes from the token bucket, waiting as needed; it
// reports false if the drain must stop instead (Close or a produce error).
func (s *session) throttle(n int) bool {
	lim := s.b.lim
	for n > 0 {
		if lim.Limit() == rate.Inf {
			return true
		}
		now := time.Now()
		c := min(n, lim.Burst())
		r := lim.ReserveN(now, c)
		if !r.OK() {
			continue // the burst changed under us: read it again
		}
		if d := r.DelayFrom(now); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-s.b.quit:
				t.Stop()
				r.Cancel()
				return false
			case <-s.f.fenced:
				t.Stop()
				r.Cancel()
				return false
			case <-s.b.wake:
				// The cap may have been lifted or changed: give the tokens
				// back and ask again.
				t.Stop()
				r.Cancel()
				if s.b.lim.Limit() == rate.Inf {
					return true
				}
				continue
			}
		}
		n -= c
	}
	return true
}
