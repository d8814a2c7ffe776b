// Package buffer is the durable uplink log: every message a terminal publishes
// is appended here, in a committed and fsync'd bbolt transaction, before it is
// acknowledged; it is deleted only after Kafka acknowledged it (or an
// operator's rule dropped it, which is counted).
//
// One writer goroutine gathers the appends of all clients into one transaction
// per fsync (group commit), so durability costs one fsync per batch.
package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgegw/gateway/internal/failpoint"
	berrors "go.etcd.io/bbolt/errors"
)

// Errors callers branch on.
var (
	ErrClosed = errors.New("buffer: closed")
)

var (
	metaBucket  = []byte("meta")
	dedupBucket = []byte("dedup2") // one value per commit; see dedup.go
	seqKeyName  = []byte("next_seq")
)

const routePrefix = "r:"

// maxGatherWait bounds how long the writer waits for more appends before a
// commit, so group commit never adds more than this to a PUBACK's latency.
const maxGatherWait = 300 * time.Microsecond

// Options configure Open. Zero values take the defaults named per field.
type Options struct {
	// Path of the bbolt file; its directory is created if missing. Required.
	Path string
	// MaxBatch is the most appends committed in one transaction (default 2048).
	MaxBatch int
	// QueueSize bounds appends waiting for the writer (default 8192); Append
	// blocks when it is full, which slows ingest rather than growing memory.
	QueueSize int
	// Logger for state changes; nil discards.
	Logger *slog.Logger
	// BeforeCommit, if set, is called by the writer with the batch's sequence
	// numbers just before the transaction commits; an error aborts the
	// transaction. Tests use it to hold or fail a commit and check that
	// nothing is acknowledged before (or without) it.
	BeforeCommit func(seqs []uint64) error
	// AfterCommit, if set, is called after a successful commit, before any
	// Done callback of that batch runs.
	AfterCommit func(seqs []uint64)
	// Limits are the initial operator rules (see SetLimits); zero = none.
	Limits Limits
	// JanitorInterval is how often expiry and the compaction check run
	// (default 1s).
	JanitorInterval time.Duration
	// CompactMinFile: the file is compacted once it is at least this large
	// (default 64 MiB), less than a quarter of it holds undelivered data, and
	// that is at most 8 MiB (the copy pauses ingest: keep it short).
	CompactMinFile int64
	// Now is the clock for receive-time checks (default time.Now).
	Now func() time.Time
}

func boltOptions() *bolt.Options {
	// NoFreelistSync with the map freelist keeps appends fast after a large
	// backlog has been written and deleted (the array freelist degrades ~6x).
	return &bolt.Options{Timeout: 2 * time.Second, NoFreelistSync: true, FreelistType: bolt.FreelistMapType}
}

// Append is one message to store. Done is called exactly once, from the
// writer goroutine, after the transaction holding it committed (or failed);
// it must not block.
type Append struct {
	Record Record
	// Dedup identifies a QoS>0 publish so a retransmission (DUP flag set) of a
	// message already stored is not stored twice. Zero value: no tracking.
	Dedup DedupKey
	Done  func(Result)
}

// DedupKey is the MQTT session identity of a QoS>0 publish.
type DedupKey struct {
	ClientID string
	PacketID uint16
	Dup      bool // the publish carried the DUP flag
}

// Result tells the outcome of an Append.
type Result struct {
	Seq       uint64 // the gw.seq stored, or of the earlier copy for a duplicate
	Duplicate bool   // a retransmission of a message already stored: nothing new written
	Err       error  // not stored; must not be acknowledged as success
}

// RouteStats is the undelivered backlog of one route.
type RouteStats struct {
	Messages int64
	Bytes    int64
	Oldest   time.Time // receive time of the oldest undelivered message; zero if empty
}

// Ref names one stored record for Delete.
type Ref struct {
	Route string
	Seq   uint64
}

// Buffer is the durable uplink log. Open one per data directory.
type Buffer struct {
	db   *bolt.DB
	opts Options
	log  *slog.Logger

	queue chan *Append
	quit  chan struct{}
	done  chan struct{}

	closeMu sync.RWMutex // held for reading while enqueueing; Close takes it for writing
	closed  bool

	// dbMu is held for reading by every use of db and for writing while
	// compaction swaps the file.
	dbMu        sync.RWMutex
	limits      atomic.Pointer[Limits]
	now         func() time.Time
	drops       map[string]map[string]uint64 // route -> reason -> count, guarded by mu
	logged      sync.Map                     // route/reason already logged
	quarantined string                       // path of a corrupt file moved aside at open, if any
	janitorDone chan struct{}

	mu      sync.Mutex // guards the fields below
	nextSeq uint64
	routes  map[string]*RouteStats
	dedup   *dedupIndex

	notify chan struct{}
}

// Open opens (or creates) the buffer file and starts its writer.
func Open(opts Options) (*Buffer, error) {
	if opts.Path == "" {
		return nil, errors.New("buffer: Options.Path is required")
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 2048
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 8192
	}
	lg := opts.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	if opts.JanitorInterval <= 0 {
		opts.JanitorInterval = time.Second
	}
	if opts.CompactMinFile <= 0 {
		opts.CompactMinFile = 64 << 20
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if err := os.MkdirAll(filepath.Dir(opts.Path), 0o750); err != nil {
		return nil, fmt.Errorf("buffer: %w", err)
	}
	b := &Buffer{
		opts:        opts,
		log:         lg,
		now:         opts.Now,
		queue:       make(chan *Append, opts.QueueSize),
		quit:        make(chan struct{}),
		done:        make(chan struct{}),
		janitorDone: make(chan struct{}),
		notify:      make(chan struct{}, 1),
	}
	b.SetLimits(opts.Limits)
	err := b.openAndLoad()
	if isCorrupt(err) {
		// A file we cannot read as a buffer must not become a crash loop:
		// keep it for inspection and start a fresh one.
		moved, qerr := quarantine(opts.Path, opts.Now())
		if qerr != nil {
			return nil, fmt.Errorf("%w (and moving it aside failed: %v)", err, qerr)
		}
		lg.Error("buffer: the buffer file could not be opened; moved it aside and started a fresh one",
			"error", err, "kept_as", moved)
		b.quarantined = moved
		err = b.openAndLoad()
	}
	if err != nil {
		return nil, err
	}
	go b.writer()
	go b.janitor()
	return b, nil
}

// errCorruptFile marks a file bbolt panicked on while reading it.
var errCorruptFile = errors.New("corrupt buffer file")

// isCorrupt reports whether an open failure means the file's content is bad
// (so it is moved aside), as opposed to a lock held by another process, a
// permission, a full disk or an I/O error, where the file must stay put.
func isCorrupt(err error) bool {
	return errors.Is(err, errCorruptFile) || errors.Is(err, ErrCorruptRecord) ||
		errors.Is(err, berrors.ErrInvalid) || errors.Is(err, berrors.ErrChecksum) ||
		errors.Is(err, berrors.ErrVersionMismatch) || errors.Is(err, berrors.ErrInvalidMapping)
}

// openAndLoad opens the file and reads its state; bbolt panics on some
// corruptions, which become errors here.
func (b *Buffer) openAndLoad() (err error) {
	defer func() {
		if r := recover(); r != nil {
			if b.db != nil {
				b.db.Close()
				b.db = nil
			}
			err = fmt.Errorf("buffer: %w: %s: %v", errCorruptFile, b.opts.Path, r)
		}
	}()
	db, err := bolt.Open(b.opts.Path, 0o600, boltOptions())
	if err != nil {
		return fmt.Errorf("buffer: open %s: %w", b.opts.Path, err)
	}
	b.db = db
	b.routes = map[string]*RouteStats{}
	b.drops = map[string]map[string]uint64{}
	b.dedup = newDedupIndex()
	if err := b.load(); err != nil {
		db.Close()
		b.db = nil
		return err
	}
	return nil
}

// load reads the sequence counter, the per-route backlog and the recent
// dedup entries.
func (b *Buffer) load() error {
	return b.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return fmt.Errorf("buffer: %w", err)
		}
		if v := meta.Get(seqKeyName); len(v) == 8 {
			b.nextSeq = binary.BigEndian.Uint64(v)
		}
		if b.nextSeq == 0 {
			b.nextSeq = 1
		}
		dd, err := tx.CreateBucketIfNotExists(dedupBucket)
		if err != nil {
			return fmt.Errorf("buffer: %w", err)
		}
		if err := b.dedup.load(dd); err != nil {
			return err
		}
		return tx.ForEach(func(name []byte, bk *bolt.Bucket) error {
			if !strings.HasPrefix(string(name), routePrefix) {
				return nil
			}
			st := &RouteStats{}
			err := bk.ForEach(func(k, v []byte) error {
				st.Messages++
				st.Bytes += int64(len(k) + len(v))
				return nil
			})
			b.routes[string(name[len(routePrefix):])] = st
			return err
		})
	})
}

// Append queues a message for the next group commit. It blocks while the
// queue is full and returns ErrClosed after Close; otherwise a.Done will be
// called exactly once.
func (b *Buffer) Append(a *Append) error {
	b.closeMu.RLock()
	defer b.closeMu.RUnlock()
	if b.closed {
		return ErrClosed
	}
	b.queue <- a
	return nil
}

// AppendWait stores one record and waits for its commit.
func (b *Buffer) AppendWait(rec Record) (Result, error) {
	ch := make(chan Result, 1)
	if err := b.Append(&Append{Record: rec, Done: func(r Result) { ch <- r }}); err != nil {
		return Result{}, err
	}
	r := <-ch
	return r, r.Err
}

// Queued is how many appends wait for the writer.
func (b *Buffer) Queued() int { return len(b.queue) }

// Notify returns a channel that receives a value after commits that added data.
func (b *Buffer) Notify() <-chan struct{} { return b.notify }

func (b *Buffer) writer() {
	defer close(b.done)
	batch := make([]*Append, 0, b.opts.MaxBatch)
	wait := time.NewTimer(time.Hour)
	wait.Stop()
	last := 0                  // records in the previous commit
	var lastTook time.Duration // how long it took
	for {
		select {
		case a := <-b.queue:
			batch = append(batch[:0], a)
			batch = b.gather(batch)
			// Many writers, each with one message in flight, are still
			// re-sending after the previous commit's acknowledgements: wait a
			// fraction of a commit for them, so one fsync carries them all.
			if len(batch) < last/2 && lastTook > 0 {
				// bounded: a commit that queued behind a drain delete is slow
				// for reasons that say nothing about the writers
				wait.Reset(min(lastTook/4, maxGatherWait))
				batch = b.gatherUntil(batch, last, wait.C)
				if !wait.Stop() {
					select {
					case <-wait.C:
					default:
					}
				}
			}
			start := time.Now()
			b.commit(batch)
			last, lastTook = len(batch), time.Since(start)
		case <-b.quit:
			// Close stopped new appends: commit what is still queued.
			for {
				batch = b.gather(batch[:0])
				if len(batch) == 0 {
					return
				}
				b.commit(batch)
			}
		}
	}
}

// gatherUntil adds appends as they arrive until the batch holds want, the
// timer fires, or MaxBatch is reached.
func (b *Buffer) gatherUntil(batch []*Append, want int, timeout <-chan time.Time) []*Append {
	for len(batch) < want && len(batch) < b.opts.MaxBatch {
		select {
		case a := <-b.queue:
			batch = append(batch, a)
		case <-timeout:
			return b.gather(batch)
		}
	}
	return batch
}

// gather adds whatever is already queued, without waiting, up to MaxBatch.
func (b *Buffer) gather(batch []*Append) []*Append {
	for len(batch) < b.opts.MaxBatch {
		select {
		case a := <-b.queue:
			batch = append(batch, a)
		default:
			return batch
		}
	}
	return batch
}

// commit writes one batch in one transaction and reports each outcome in
// order, only after the commit returned. Budgets are enforced here: a record
// that does not fit is refused, or makes room by evicting, as its route's
// on_full says.
func (b *Buffer) commit(batch []*Append) {
	results := make([]Result, len(batch))
	b.mu.Lock()
	seq := b.nextSeq
	snapshot := make(map[string]int64, len(b.routes))
	for name, st := range b.routes {
		snapshot[name] = st.Bytes
	}
	b.mu.Unlock()
	limits := b.limits.Load()
	now := b.now()

	var seqs []uint64
	var ch *changes
	var newDedup []dedupEntry
	b.dbMu.RLock()
	err := b.db.Update(func(tx *bolt.Tx) error {
		seqs = seqs[:0]
		ch = newChanges(snapshot)
		newDedup = newDedup[:0]
		s := seq
		dd := tx.Bucket(dedupBucket)
		var buf []byte
		for i, a := range batch {
			rec := &a.Record
			results[i] = Result{}
			var h uint64
			if a.Dedup.ClientID != "" {
				h = dedupHash(rec.MQTTTopic, rec.Payload)
				if a.Dedup.Dup {
					if prev, ok := lookupBatch(newDedup, a.Dedup, h); ok {
						results[i] = Result{Seq: prev, Duplicate: true}
						continue
					}
					if prev, ok := b.dedup.lookup(a.Dedup.ClientID, a.Dedup.PacketID, h); ok {
						results[i] = Result{Seq: prev, Duplicate: true}
						continue
					}
				}
			}
			buf = rec.marshal(buf[:0])
			size := int64(8 + len(buf))
			if err := b.makeRoom(tx, ch, limits, rec.Route, size, now); err != nil {
				if errors.Is(err, ErrRouteFull) || errors.Is(err, ErrDiskFull) {
					results[i] = Result{Err: err}
					continue
				}
				return err
			}
			if a.Dedup.ClientID != "" {
				newDedup = append(newDedup, dedupEntry{client: a.Dedup.ClientID, pid: a.Dedup.PacketID, hash: h, seq: s})
			}
			bk, err := ch.bucket(tx, rec.Route)
			if err != nil {
				return err
			}
			// bbolt keeps a reference to the value until commit: copy it.
			if err := bk.Put(seqKey(s), append([]byte(nil), buf...)); err != nil {
				return fmt.Errorf("route %q: %w", rec.Route, err)
			}
			ch.add(rec.Route, size)
			results[i].Seq = s
			seqs = append(seqs, s)
			s++
		}
		if s == seq && !ch.evicted() {
			return nil // only duplicates or refusals: nothing to write
		}
		if len(newDedup) > 0 {
			// the batch's packet ids in one value, keyed by its first seq
			if err := dd.Put(seqKey(newDedup[0].seq), encodeDedupBatch(newDedup)); err != nil {
				return err
			}
		}
		if err := tx.Bucket(metaBucket).Put(seqKeyName, seqKey(s)); err != nil {
			return err
		}
		failpoint.Hit(failpoint.BufferCommitBeforeSync)
		if b.opts.BeforeCommit != nil {
			return b.opts.BeforeCommit(seqs)
		}
		return nil
	})
	b.dbMu.RUnlock()
	if err != nil {
		err = fmt.Errorf("buffer: commit: %w", err)
		b.log.Error("buffer commit failed; publishes in this batch are not acknowledged", "messages", len(batch), "error", err)
		for _, a := range batch {
			a.Done(Result{Err: err})
		}
		return
	}
	b.mu.Lock()
	b.nextSeq = seq + uint64(len(seqs))
	b.apply(ch)
	for _, e := range newDedup {
		b.dedup.add(e)
	}
	prune := b.dedup.needsPrune()
	b.mu.Unlock()
	b.logDrops(ch)
	if b.opts.AfterCommit != nil && len(seqs) > 0 {
		b.opts.AfterCommit(seqs)
	}
	for i, a := range batch {
		a.Done(results[i])
	}
	if len(seqs) > 0 {
		select {
		case b.notify <- struct{}{}:
		default:
		}
	}
	if prune {
		b.pruneDedup()
	}
}

// Read returns up to maxRecords records totalling about maxBytes, strictly by
// route priority (lower first, then name) and FIFO within a route, starting
// after after[route] for each route. Records hold their own copies of data.
func (b *Buffer) Read(after map[string]uint64, priority func(route string) int, maxRecords, maxBytes int) ([]Record, error) {
	routes := b.routeNames()
	sort.SliceStable(routes, func(i, j int) bool {
		pi, pj := priority(routes[i]), priority(routes[j])
		if pi != pj {
			return pi < pj
		}
		return routes[i] < routes[j]
	})
	var out []Record
	size := 0
	limits, now := b.limits.Load(), b.now()
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	err := b.db.View(func(tx *bolt.Tx) error {
		for _, route := range routes {
			bk := tx.Bucket([]byte(routePrefix + route))
			if bk == nil {
				continue
			}
			c := bk.Cursor()
			var k, v []byte
			if from := after[route]; from > 0 {
				k, v = c.Seek(seqKey(from + 1))
			} else {
				k, v = c.First()
			}
			for ; k != nil; k, v = c.Next() {
				if len(out) >= maxRecords || (size > 0 && size+len(v) > maxBytes) {
					return nil
				}
				if b.expired(limits, route, v, now) {
					continue
				}
				var r Record
				if err := r.unmarshal(append([]byte(nil), v...)); err != nil {
					return fmt.Errorf("route %q seq %d: %w", route, binary.BigEndian.Uint64(k), err)
				}
				r.Seq = binary.BigEndian.Uint64(k)
				r.Route = route
				out = append(out, r)
				size += len(v)
			}
		}
		return nil
	})
	if err != nil {
		return out, fmt.Errorf("buffer: read: %w", err)
	}
	return out, nil
}

// Delete removes records Kafka acknowledged. Missing records are ignored, so
// a repeated delete is harmless.
func (b *Buffer) Delete(refs []Ref) error {
	if len(refs) == 0 {
		return nil
	}
	removed := map[string]*RouteStats{}
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	err := b.db.Update(func(tx *bolt.Tx) error {
		clear(removed)
		for _, ref := range refs {
			bk := tx.Bucket([]byte(routePrefix + ref.Route))
			if bk == nil {
				continue
			}
			k := seqKey(ref.Seq)
			v := bk.Get(k)
			if v == nil {
				continue
			}
			st := removed[ref.Route]
			if st == nil {
				st = &RouteStats{}
				removed[ref.Route] = st
			}
			st.Messages++
			st.Bytes += int64(len(k) + len(v))
			if err := bk.Delete(k); err != nil {
				return err
			}
		}
		failpoint.Hit(failpoint.BufferLazyDelete)
		return nil
	})
	if err != nil {
		return fmt.Errorf("buffer: delete: %w", err)
	}
	b.mu.Lock()
	for route, rm := range removed {
		if st := b.routes[route]; st != nil {
			st.Messages -= rm.Messages
			st.Bytes -= rm.Bytes
		}
	}
	b.mu.Unlock()
	return nil
}

// DeleteThrough removes every record of route with a gw.seq at or below seq
// and reports how many there were. The exactly-once drain calls it with the
// marks Kafka committed, so a record that reached Kafka before a crash is not
// sent again.
func (b *Buffer) DeleteThrough(route string, seq uint64) (int, error) {
	var rm RouteStats
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	err := b.db.Update(func(tx *bolt.Tx) error {
		rm = RouteStats{}
		bk := tx.Bucket([]byte(routePrefix + route))
		if bk == nil {
			return nil
		}
		// collect first: deleting under a moving cursor skips keys
		var keys [][]byte
		c := bk.Cursor()
		for k, v := c.First(); k != nil && binary.BigEndian.Uint64(k) <= seq; k, v = c.Next() {
			keys = append(keys, append([]byte(nil), k...))
			rm.Messages++
			rm.Bytes += int64(len(k) + len(v))
		}
		for _, k := range keys {
			if err := bk.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("buffer: delete through %q/%d: %w", route, seq, err)
	}
	b.mu.Lock()
	if st := b.routes[route]; st != nil {
		st.Messages -= rm.Messages
		st.Bytes -= rm.Bytes
	}
	b.mu.Unlock()
	return int(rm.Messages), nil
}

func (b *Buffer) routeNames() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	names := make([]string, 0, len(b.routes))
	for name, st := range b.routes {
		if st.Messages > 0 {
			names = append(names, name)
		}
	}
	return names
}

// Stats returns the undelivered backlog per route (routes that ever held data
// since open, including empty ones).
func (b *Buffer) Stats() map[string]RouteStats {
	b.mu.Lock()
	out := make(map[string]RouteStats, len(b.routes))
	for name, st := range b.routes {
		out[name] = RouteStats{Messages: st.Messages, Bytes: st.Bytes}
	}
	b.mu.Unlock()
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	_ = b.db.View(func(tx *bolt.Tx) error {
		for name, st := range out {
			if st.Messages == 0 {
				continue
			}
			if bk := tx.Bucket([]byte(routePrefix + name)); bk != nil {
				if _, v := bk.Cursor().First(); v != nil {
					st.Oldest, _ = receivedOf(v)
					out[name] = st
				}
			}
		}
		return nil
	})
	return out
}

// Total is the backlog over all routes.
func (b *Buffer) Total() (messages, bytes int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, st := range b.routes {
		messages += st.Messages
		bytes += st.Bytes
	}
	return
}

// FileSize is the size of the bbolt file on disk.
func (b *Buffer) FileSize() int64 {
	if fi, err := os.Stat(b.opts.Path); err == nil {
		return fi.Size()
	}
	return 0
}

// NextSeq is the gw.seq the next stored message will get.
func (b *Buffer) NextSeq() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.nextSeq
}

// Close stops accepting appends, commits what is queued, and closes the file.
// It is safe to call more than once.
func (b *Buffer) Close() error {
	b.closeMu.Lock()
	if b.closed {
		b.closeMu.Unlock()
		<-b.done
		<-b.janitorDone
		return nil
	}
	b.closed = true
	b.closeMu.Unlock()
	close(b.quit)
	<-b.done
	<-b.janitorDone
	b.dbMu.Lock()
	defer b.dbMu.Unlock()
	return b.db.Close()
}
