package buffer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgegw/gateway/internal/failpoint"
)

// Operator rules: retention (max_age), budgets (per route and overall) and
// what a full route does (reject or drop_oldest). Every drop is counted per
// route and reason.

// Errors for a record that does not fit; callers refuse the publish (MQTT 5
// reason 0x97 quota exceeded) so the terminal keeps it.
var (
	ErrRouteFull = errors.New("buffer: route budget full")
	ErrDiskFull  = errors.New("buffer: disk budget full")
)

// Drop reasons, as counted and reported.
const (
	DropMaxAge     = "max_age"
	DropDropOldest = "drop_oldest"
)

// Policy is one route's rules.
type Policy struct {
	Priority int           // lower drains first; evictions take the largest numbers first
	MaxAge   time.Duration // 0 = no limit
	MaxBytes int64         // 0 = only the global budget applies
	OnFull   string        // "reject" (never evicted) or "drop_oldest"
	// UseReserve lets the route use Limits.Reserve beyond the global budget
	// (receipt confirmations and other system records).
	UseReserve bool
}

// Limits are all routes' rules plus the global budget. A route the Routes
// function does not know (its backlog outlived a reload) gets the zero
// Policy with OnFull "reject": nothing of it is evicted or expired.
type Limits struct {
	MaxDiskBytes int64 // 0 = no global budget
	Routes       func(route string) (Policy, bool)
	// Reserve is room in bytes beyond MaxDiskBytes that only routes with
	// Policy.UseReserve may take, so system records are not refused when
	// terminals have filled the budget. 0 = none.
	Reserve int64
}

func (l *Limits) policy(route string) Policy {
	if l != nil && l.Routes != nil {
		if p, ok := l.Routes(route); ok {
			return p
		}
	}
	return Policy{Priority: 1 << 30, OnFull: "reject"}
}

// SetLimits swaps the rules; buffered records follow the new rules by route
// name from the next commit and expiry pass.
func (b *Buffer) SetLimits(l Limits) { b.limits.Store(&l) }

// changes tracks one commit's (or pass's) effect on the per-route backlog.
type changes struct {
	bytes   map[string]int64 // route bytes as the commit sees them
	drops   map[string]map[string]uint64
	evict   []evictRef // records of earlier commits evicted, applied after commit
	through map[string]uint64
	pending map[string][]pendingRec // this commit's own records, oldest first
	batchEv []batchEvict            // this commit's records evicted by later ones
}

type batchEvict struct {
	route string
	seq   uint64
	size  int64
}

type evictRef struct {
	key   uint64
	pos   int
	route string
	size  int64
}

type pendingRec struct {
	seq  uint64
	size int64
}

func newChanges(snapshot map[string]int64) *changes {
	bytes := make(map[string]int64, len(snapshot))
	for k, v := range snapshot {
		bytes[k] = v
	}
	return &changes{bytes: bytes, drops: map[string]map[string]uint64{},
		through: map[string]uint64{}, pending: map[string][]pendingRec{}}
}

func (c *changes) add(route string, size int64) {
	c.bytes[route] += size
}

func (c *changes) addPending(route string, seq uint64, size int64) {
	c.pending[route] = append(c.pending[route], pendingRec{seq, size})
}

func (c *changes) remove(route, reason string, n, size int64) {
	c.bytes[route] -= size
	if reason != "" {
		if c.drops[route] == nil {
			c.drops[route] = map[string]uint64{}
		}
		c.drops[route][reason] += uint64(n)
	}
}

func (c *changes) total() int64 {
	var t int64
	for _, v := range c.bytes {
		t += v
	}
	return t
}

// applyEvictions folds a committed transaction's evictions into the index
// and the drop counters; b.mu held.
func (b *Buffer) applyEvictions(c *changes) {
	for _, e := range c.evict {
		if i := b.idx.find(e.key); i >= 0 {
			b.idx.remove(i, e.pos, b.idx.route(e.route), e.size)
		}
	}
	if len(c.batchEv) > 0 {
		// the commit's own block is the newest; its seqs have no gaps
		i := len(b.idx.blocks) - 1
		key := b.idx.blocks[i].key
		for _, e := range c.batchEv {
			b.idx.remove(i, int(e.seq-key), b.idx.route(e.route), e.size)
		}
	}
	b.countDrops(c)
}

// countDrops adds a pass's drops to the counters; b.mu held.
func (b *Buffer) countDrops(c *changes) {
	for route, reasons := range c.drops {
		if b.drops[route] == nil {
			b.drops[route] = map[string]uint64{}
		}
		for reason, n := range reasons {
			b.drops[route][reason] += n
		}
	}
}

// logDrops logs the first drop of each route and reason; the counters carry
// the rest.
func (b *Buffer) logDrops(c *changes) {
	for route, reasons := range c.drops {
		for reason, n := range reasons {
			if _, seen := b.logged.LoadOrStore(route+"/"+reason, true); !seen {
				b.log.Warn("buffer: dropping undelivered messages by the operator's rule (logged once; see gateway_drops_total)",
					"route", route, "reason", reason, "messages", n)
			}
		}
	}
}

// Drops returns the drop counts per route and reason since open.
func (b *Buffer) Drops() map[string]map[string]uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]map[string]uint64, len(b.drops))
	for route, reasons := range b.drops {
		out[route] = map[string]uint64{}
		for reason, n := range reasons {
			out[route][reason] = n
		}
	}
	return out
}

// makeRoom checks the route and global budgets for a record of size bytes,
// evicting drop_oldest data where the rules allow. A reject route's data is
// never evicted.
func (b *Buffer) makeRoom(c *changes, l *Limits, route string, size int64) error {
	if l == nil {
		return nil
	}
	p := l.policy(route)
	if p.MaxBytes > 0 && c.bytes[route]+size > p.MaxBytes {
		if p.OnFull != "drop_oldest" || size > p.MaxBytes {
			return ErrRouteFull
		}
		if err := b.evictOldest(c, route, c.bytes[route]+size-p.MaxBytes); err != nil {
			return err
		}
	}
	limit := l.MaxDiskBytes
	if p.UseReserve && limit > 0 {
		limit += l.Reserve
	}
	if limit > 0 && c.total()+size > limit {
		need := c.total() + size - limit
		// take from drop_oldest routes, lowest priority (largest number) first
		var victims []string
		for name, bytes := range c.bytes {
			if bytes > 0 && l.policy(name).OnFull == "drop_oldest" {
				victims = append(victims, name)
			}
		}
		sort.Slice(victims, func(i, j int) bool {
			pi, pj := l.policy(victims[i]).Priority, l.policy(victims[j]).Priority
			if pi != pj {
				return pi > pj
			}
			return victims[i] < victims[j]
		})
		var freeable int64
		for _, v := range victims {
			freeable += c.bytes[v]
		}
		if freeable < need {
			return ErrDiskFull
		}
		for _, v := range victims {
			if need <= 0 {
				break
			}
			before := c.bytes[v]
			if err := b.evictOldest(c, v, min(need, before)); err != nil {
				return err
			}
			need -= before - c.bytes[v]
		}
	}
	return nil
}

// evictOldest plans the removal of a route's oldest records until at least
// need bytes are free, counting them as drop_oldest: first those of earlier
// commits, then this commit's own.
func (b *Buffer) evictOldest(c *changes, route string, need int64) error {
	var freed, n int64
	err := b.scanRoute(route, c.through[route], func(h *blockHeader, _ []byte, i int) (bool, error) {
		if freed >= need {
			return false, nil
		}
		br := h.recs[i]
		c.evict = append(c.evict, evictRef{key: h.key, pos: i, route: route, size: br.budgetSize()})
		c.through[route] = br.seq
		freed += br.budgetSize()
		n++
		return true, nil
	})
	if err != nil {
		return err
	}
	for _, r := range c.pending[route] {
		if freed >= need {
			break
		}
		if r.seq <= c.through[route] {
			continue
		}
		c.batchEv = append(c.batchEv, batchEvict{route, r.seq, r.size})
		c.through[route] = r.seq
		freed += r.size
		n++
	}
	if n > 0 {
		c.remove(route, DropDropOldest, n, freed)
	}
	return nil
}

// expire drops records older than their route's max_age, counting them. It
// writes nothing: like deliveries, the removals reach the file with the next
// purge. Ages are measured with the buffer clock (clock.go), not the wall
// clock; the scan of a route stops at its first block younger than the
// cutoff, and one pass removes at most expireMaxPerPass records.
func (b *Buffer) expire() error {
	l := b.limits.Load()
	if l == nil {
		return nil
	}
	now := b.clockMillis()
	type job struct {
		route  string
		cutoff uint64 // buffer clock (ms): committed at or before it = expired
	}
	var jobs []job
	for _, route := range b.routeNames() {
		if p := l.policy(route); p.MaxAge > 0 && uint64(p.MaxAge.Milliseconds()) < now {
			jobs = append(jobs, job{route, now - uint64(p.MaxAge.Milliseconds())})
		}
	}
	for _, j := range jobs {
		var refs []Ref
		b.dbMu.RLock()
		err := b.scanRoute(j.route, 0, func(h *blockHeader, _ []byte, i int) (bool, error) {
			if h.clock > j.cutoff {
				return false, nil // blocks are committed in clock order
			}
			refs = append(refs, Ref{Route: j.route, Seq: h.recs[i].seq})
			return len(refs) < expireMaxPerPass, nil
		})
		b.dbMu.RUnlock()
		if err != nil {
			return fmt.Errorf("buffer: expire: %w", err)
		}
		if _, err := b.removeRefs(refs, DropMaxAge); err != nil {
			return fmt.Errorf("buffer: expire: %w", err)
		}
	}
	return nil
}

// expireMaxPerPass bounds the memory one expiry pass holds; the next pass
// (a second later) continues.
const expireMaxPerPass = 100_000

// expired reports whether a record committed at buffer clock at is past its
// route's max_age; the drain skips such records (the next expiry pass
// removes and counts them).
func (b *Buffer) expired(l *Limits, route string, at, now uint64) bool {
	if l == nil {
		return false
	}
	p := l.policy(route)
	if p.MaxAge <= 0 {
		return false
	}
	return now > at && time.Duration(now-at)*time.Millisecond > p.MaxAge
}

// janitor expires records and compacts the file when a large backlog has
// drained.
func (b *Buffer) janitor() {
	defer close(b.janitorDone)
	// often enough that a purge is never late by more than half its interval
	every := min(b.opts.JanitorInterval, max(time.Duration(b.purgeEvery.Load())/2, 50*time.Millisecond))
	// Right after a start, every 50 ms for a while: the first purge comes as
	// soon as the drain delivered something, so what a crash made it send
	// again is not sent yet again by the next crash (a box whose power
	// fails every few hundred milliseconds re-sent its whole history each
	// time). Only with a janitor of a second or less (not in tests that
	// switch it off).
	tick, fastUntil := every, time.Time{}
	if every <= time.Second && every > startupJanitorTick {
		tick, fastUntil = startupJanitorTick, time.Now().Add(startupJanitorFor)
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-b.quit:
			return
		case <-t.C:
		}
		if !fastUntil.IsZero() && time.Now().After(fastUntil) {
			t.Reset(every)
			fastUntil = time.Time{}
		}
		if err := b.expire(); err != nil {
			b.log.Error("buffer: expiry pass failed", "error", err)
		}
		if err := b.purge(false); err != nil {
			b.log.Error("buffer: purging delivered blocks failed; will retry", "error", err)
		}
		if b.repackDue() {
			b.lastRepack.Store(time.Now().UnixNano()) // repack sets 0 when more waits
			if _, err := b.repack(); err != nil {
				b.log.Error("buffer: repacking small blocks failed; will retry", "error", err)
			}
		}
		if b.shouldCompact() {
			if err := b.purge(true); err != nil {
				b.log.Error("buffer: purging delivered blocks failed; will retry", "error", err)
			}
			if _, err := b.Compact(); err != nil && b.Err() == nil {
				b.log.Error("buffer: compaction failed; the old file stays in use", "error", err)
			}
		}
	}
}

// The janitor's pace for a while after a start (see janitor).
const (
	startupJanitorTick = 50 * time.Millisecond
	startupJanitorFor  = 3 * time.Second
)

// compactMaxLive bounds the live data a compaction copies: the copy holds
// ingest and the drain, so it runs once a large backlog has (nearly) drained,
// not while one is still draining.
const compactMaxLive = 8 << 20

// shouldCompact: the file is large, mostly free space, and little is left to
// copy.
func (b *Buffer) shouldCompact() bool {
	size := b.FileSize()
	_, live := b.Total()
	return size >= b.opts.CompactMinFile && live*4 < size && live <= compactMaxLive
}

// CompactStats describes one compaction.
type CompactStats struct {
	Before, After int64         // file sizes
	Paused        time.Duration // how long appends, reads and deletes waited
}

// Compact copies the live data into a fresh file and swaps it in, so space
// freed by a drained backlog goes back to the filesystem (bbolt files never
// shrink by themselves). Appends queue meanwhile; nothing is lost: the old
// file stays in place until the new one is complete and synced.
func (b *Buffer) Compact() (CompactStats, error) {
	// blocks already delivered need not be copied
	if err := b.purge(true); err != nil {
		return CompactStats{}, fmt.Errorf("buffer: compact: %w", err)
	}
	st := CompactStats{Before: b.FileSize()}
	start := time.Now()
	b.dbMu.Lock()
	defer b.dbMu.Unlock()
	path := b.db.Path()
	tmp := path + ".compact"
	_ = os.Remove(tmp)
	dst, err := bolt.Open(tmp, 0o600, boltOptions())
	if err != nil {
		return st, fmt.Errorf("buffer: compact: %w", err)
	}
	if err := bolt.Compact(dst, b.db, 32<<20); err != nil {
		dst.Close()
		os.Remove(tmp)
		return st, fmt.Errorf("buffer: compact: %w", err)
	}
	if err := dst.Sync(); err != nil {
		dst.Close()
		os.Remove(tmp)
		return st, fmt.Errorf("buffer: compact: %w", err)
	}
	dst.Close()
	old := b.db.Stats()
	b.pagesBefore.Add(uint64(old.TxStats.GetWrite()))
	if err := b.db.Close(); err != nil {
		os.Remove(tmp)
		err = fmt.Errorf("buffer: compact: closing the old file: %w", err)
		b.fail(err)
		return st, err
	}
	failpoint.Hit(failpoint.BufferCompactSwap)
	if err := os.Rename(tmp, path); err != nil {
		// keep using the old file
		db, oerr := bolt.Open(path, 0o600, boltOptions())
		if oerr != nil {
			err = fmt.Errorf("buffer: compact: rename failed (%v) and reopening failed: %w", err, oerr)
			b.fail(err)
			return st, err
		}
		b.db = db
		return st, fmt.Errorf("buffer: compact: %w", err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		// The swap may not survive a power cut: appends made to the new file
		// could vanish with it. Acknowledge nothing more.
		err = fmt.Errorf("buffer: compact: after the swap: %w", err)
		b.fail(err)
		return st, err
	}
	db, err := bolt.Open(path, 0o600, boltOptions())
	if err != nil {
		err = fmt.Errorf("buffer: compact: reopen: %w", err)
		b.fail(err)
		return st, err
	}
	b.db = db
	st.Paused = time.Since(start)
	if fi, err := os.Stat(path); err == nil {
		st.After = fi.Size()
	}
	b.log.Info("buffer: compacted", "before_bytes", st.Before, "after_bytes", st.After, "paused", st.Paused)
	return st, nil
}

// quarantine moves a file that cannot be opened as a buffer aside, keeping it
// for inspection, and returns the new name.
func quarantine(path string, now time.Time) (string, error) {
	dst := fmt.Sprintf("%s.corrupt-%s", path, now.UTC().Format("20060102T150405Z"))
	if err := os.Rename(path, dst); err != nil {
		return "", err
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return dst, err
	}
	return dst, nil
}

// Quarantined returns the path a corrupt buffer file was moved to when this
// buffer opened, or "".
func (b *Buffer) Quarantined() string { return b.quarantined }
