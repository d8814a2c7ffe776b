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
}

// Limits are all routes' rules plus the global budget. A route the Routes
// function does not know (its backlog outlived a reload) gets the zero
// Policy with OnFull "reject": nothing of it is evicted or expired.
type Limits struct {
	MaxDiskBytes int64 // 0 = no global budget
	Routes       func(route string) (Policy, bool)
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

// changes tracks one transaction's effect on the per-route backlog.
type changes struct {
	bytes   map[string]int64 // route bytes as the transaction sees them
	added   map[string]*RouteStats
	removed map[string]*RouteStats
	drops   map[string]map[string]uint64
	buckets map[string]*bolt.Bucket
}

func newChanges(snapshot map[string]int64) *changes {
	bytes := make(map[string]int64, len(snapshot))
	for k, v := range snapshot {
		bytes[k] = v
	}
	return &changes{bytes: bytes, added: map[string]*RouteStats{}, removed: map[string]*RouteStats{},
		drops: map[string]map[string]uint64{}, buckets: map[string]*bolt.Bucket{}}
}

func (c *changes) bucket(tx *bolt.Tx, route string) (*bolt.Bucket, error) {
	if bk := c.buckets[route]; bk != nil {
		return bk, nil
	}
	bk, err := tx.CreateBucketIfNotExists([]byte(routePrefix + route))
	if err != nil {
		return nil, fmt.Errorf("route %q: %w", route, err)
	}
	c.buckets[route] = bk
	return bk, nil
}

func (c *changes) add(route string, size int64) {
	st := c.added[route]
	if st == nil {
		st = &RouteStats{}
		c.added[route] = st
	}
	st.Messages++
	st.Bytes += size
	c.bytes[route] += size
}

func (c *changes) remove(route, reason string, n, size int64) {
	st := c.removed[route]
	if st == nil {
		st = &RouteStats{}
		c.removed[route] = st
	}
	st.Messages += n
	st.Bytes += size
	c.bytes[route] -= size
	if reason != "" {
		if c.drops[route] == nil {
			c.drops[route] = map[string]uint64{}
		}
		c.drops[route][reason] += uint64(n)
	}
}

func (c *changes) evicted() bool { return len(c.removed) > 0 }

func (c *changes) total() int64 {
	var t int64
	for _, v := range c.bytes {
		t += v
	}
	return t
}

// apply folds a committed transaction into the in-memory counters; b.mu held.
func (b *Buffer) apply(c *changes) {
	for route, add := range c.added {
		st := b.routes[route]
		if st == nil {
			st = &RouteStats{}
			b.routes[route] = st
		}
		st.Messages += add.Messages
		st.Bytes += add.Bytes
	}
	for route, rm := range c.removed {
		if st := b.routes[route]; st != nil {
			st.Messages -= rm.Messages
			st.Bytes -= rm.Bytes
		}
	}
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
func (b *Buffer) makeRoom(tx *bolt.Tx, c *changes, l *Limits, route string, size int64, now time.Time) error {
	if l == nil {
		return nil
	}
	p := l.policy(route)
	if p.MaxBytes > 0 && c.bytes[route]+size > p.MaxBytes {
		if p.OnFull != "drop_oldest" || size > p.MaxBytes {
			return ErrRouteFull
		}
		if err := b.evictOldest(tx, c, route, c.bytes[route]+size-p.MaxBytes); err != nil {
			return err
		}
	}
	if l.MaxDiskBytes > 0 && c.total()+size > l.MaxDiskBytes {
		need := c.total() + size - l.MaxDiskBytes
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
			if err := b.evictOldest(tx, c, v, min(need, before)); err != nil {
				return err
			}
			need -= before - c.bytes[v]
		}
	}
	return nil
}

// evictOldest deletes a route's oldest records until at least need bytes are
// free, counting them as drop_oldest.
func (b *Buffer) evictOldest(tx *bolt.Tx, c *changes, route string, need int64) error {
	bk, err := c.bucket(tx, route)
	if err != nil {
		return err
	}
	var keys [][]byte
	var freed int64
	cur := bk.Cursor()
	for k, v := cur.First(); k != nil && freed < need; k, v = cur.Next() {
		keys = append(keys, append([]byte(nil), k...))
		freed += int64(len(k) + len(v))
	}
	for _, k := range keys {
		if err := bk.Delete(k); err != nil {
			return err
		}
	}
	c.remove(route, DropDropOldest, int64(len(keys)), freed)
	return nil
}

// expire drops records older than their route's max_age, counting them. The
// scan of a route stops at the first record a minute younger than the
// cutoff: receive times are in arrival order up to scheduling jitter.
func (b *Buffer) expire() error {
	l := b.limits.Load()
	if l == nil {
		return nil
	}
	now := b.now()
	type job struct {
		route  string
		cutoff time.Time
	}
	var jobs []job
	for _, route := range b.routeNames() {
		if p := l.policy(route); p.MaxAge > 0 {
			jobs = append(jobs, job{route, now.Add(-p.MaxAge)})
		}
	}
	if len(jobs) == 0 {
		return nil
	}
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	var ch *changes
	err := b.db.Update(func(tx *bolt.Tx) error {
		ch = newChanges(nil)
		for _, j := range jobs {
			bk := tx.Bucket([]byte(routePrefix + j.route))
			if bk == nil {
				continue
			}
			var keys [][]byte
			var freed int64
			cur := bk.Cursor()
			for k, v := cur.First(); k != nil; k, v = cur.Next() {
				at, ok := receivedOf(v)
				if ok && !at.Before(j.cutoff) {
					if at.After(j.cutoff.Add(time.Minute)) {
						break
					}
					continue
				}
				keys = append(keys, append([]byte(nil), k...))
				freed += int64(len(k) + len(v))
			}
			for _, k := range keys {
				if err := bk.Delete(k); err != nil {
					return err
				}
			}
			if len(keys) > 0 {
				ch.remove(j.route, DropMaxAge, int64(len(keys)), freed)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("buffer: expire: %w", err)
	}
	b.mu.Lock()
	b.apply(ch)
	b.mu.Unlock()
	b.logDrops(ch)
	return nil
}

// expired reports whether a stored record is past its route's max_age; the
// drain skips such records (the next expiry pass deletes and counts them).
func (b *Buffer) expired(l *Limits, route string, v []byte, now time.Time) bool {
	if l == nil {
		return false
	}
	p := l.policy(route)
	if p.MaxAge <= 0 {
		return false
	}
	at, ok := receivedOf(v)
	return ok && now.Sub(at) > p.MaxAge
}

// janitor expires records and compacts the file when a large backlog has
// drained.
func (b *Buffer) janitor() {
	defer close(b.janitorDone)
	t := time.NewTicker(b.opts.JanitorInterval)
	defer t.Stop()
	for {
		select {
		case <-b.quit:
			return
		case <-t.C:
		}
		if err := b.expire(); err != nil {
			b.log.Error("buffer: expiry pass failed", "error", err)
		}
		if b.shouldCompact() {
			if _, err := b.Compact(); err != nil {
				b.log.Error("buffer: compaction failed; the old file stays in use", "error", err)
			}
		}
	}
}

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
	if err := b.db.Close(); err != nil {
		os.Remove(tmp)
		return st, fmt.Errorf("buffer: compact: closing the old file: %w", err)
	}
	failpoint.Hit(failpoint.BufferCompactSwap)
	if err := os.Rename(tmp, path); err != nil {
		// keep using the old file
		db, oerr := bolt.Open(path, 0o600, boltOptions())
		if oerr != nil {
			return st, fmt.Errorf("buffer: compact: rename failed (%v) and reopening failed: %w", err, oerr)
		}
		b.db = db
		return st, fmt.Errorf("buffer: compact: %w", err)
	}
	syncDir(filepath.Dir(path))
	db, err := bolt.Open(path, 0o600, boltOptions())
	if err != nil {
		return st, fmt.Errorf("buffer: compact: reopen: %w", err)
	}
	b.db = db
	st.Paused = time.Since(start)
	if fi, err := os.Stat(path); err == nil {
		st.After = fi.Size()
	}
	b.log.Info("buffer: compacted", "before_bytes", st.Before, "after_bytes", st.After, "paused", st.Paused)
	return st, nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// quarantine moves a file that cannot be opened as a buffer aside, keeping it
// for inspection, and returns the new name.
func quarantine(path string, now time.Time) (string, error) {
	dst := fmt.Sprintf("%s.corrupt-%s", path, now.UTC().Format("20060102T150405Z"))
	if err := os.Rename(path, dst); err != nil {
		return "", err
	}
	syncDir(filepath.Dir(path))
	return dst, nil
}

// Quarantined returns the path a corrupt buffer file was moved to when this
// buffer opened, or "".
func (b *Buffer) Quarantined() string { return b.quarantined }
