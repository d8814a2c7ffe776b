// Package buffer is the durable uplink log: every message a terminal publishes
// is appended here, in an fdatasync'd journal entry that a checkpoint later
// moves into a bbolt file, before it is acknowledged; it leaves only after
// Kafka acknowledged it (or an operator's rule dropped it, which is counted).
//
// One writer goroutine gathers the appends of all clients into one journal
// entry per fsync (group commit, journal.go), and each commit stores its
// records as one value, a block (block.go). Which records are still undelivered is kept
// in memory (index.go): an acknowledgement writes nothing, and delivered
// blocks are deleted in rare purge commits (purge.go). Flash wear per message
// is a commit's few page writes shared by every record in it.
package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	berrors "go.etcd.io/bbolt/errors"

	"github.com/edgegw/gateway/internal/boltfile"
)

// Errors callers branch on.
var (
	ErrClosed = errors.New("buffer: closed")
)

var (
	metaBucket   = []byte("meta")
	blocksBucket = []byte("blocks")
	dedupBucket  = []byte("dedup2") // the dedup entries of purged blocks; see dedup.go
	seqKeyName   = []byte("next_seq")
	epochKey     = []byte("epoch")
	marksKey     = []byte("marks") // per route removed-through seqs, written by purges
	clockKey     = []byte("clock") // the buffer clock (ms), written by purges
)

// routePrefix names the per-route buckets of the first file format (one key
// per record); a file that has them is converted at open (migrate.go).
const routePrefix = "r:"

// maxGatherWait bounds the extra wait the writer adds when many clients are
// re-sending right after the previous commit (see writer).
const maxGatherWait = 300 * time.Microsecond

// pageSize of new files. Smaller pages make a commit's few dirty pages
// smaller and often neighbours in one 4 KiB page of the page cache: measured
// ~15 KB written per single-message commit against ~33 KB with 4 KiB pages.
// Existing files keep the page size they were created with.
const pageSize = 1024

// Options configure Open. Zero values take the defaults named per field.
type Options struct {
	// Path of the bbolt file; its directory is created if missing. Required.
	Path string
	// MaxBatch is the most appends committed in one transaction (default 2048).
	MaxBatch int
	// QueueSize bounds appends waiting for the writer (default 8192); Append
	// blocks when it is full, which slows ingest rather than growing memory.
	QueueSize int
	// CommitWait is the longest a commit waits for company after the first
	// append arrived: more records per fsync means less flash written per
	// message, at the cost of PUBACK latency. 0 = commit at once.
	CommitWait time.Duration
	// CommitMinRecords ends the wait early once this many appends are
	// together (0 = wait the whole CommitWait unless MaxBatch is reached).
	CommitMinRecords int
	// PurgeInterval is how often blocks whose records are all delivered are
	// deleted from the file, in one commit (default 30s; also sooner when
	// many are waiting). A crash re-sends what was delivered since the last
	// purge: at-least-once allows it and gw.epoch+gw.seq name the copies.
	PurgeInterval time.Duration
	// Logger for state changes; nil discards.
	Logger *slog.Logger
	// BeforeCommit, if set, is called by the writer with the batch's sequence
	// numbers just before the batch is written to the journal; an error
	// aborts the commit. Tests use it to hold or fail a commit and check that
	// nothing is acknowledged before (or without) it.
	BeforeCommit func(seqs []uint64) error
	// AfterCommit, if set, is called after a successful commit, before any
	// Done callback of that batch runs.
	AfterCommit func(seqs []uint64)
	// Limits are the initial operator rules (see SetLimits); zero = none.
	Limits Limits
	// JanitorInterval is how often expiry, the purge and the compaction check
	// run (default 1s).
	JanitorInterval time.Duration
	// CompactMinFile: the file is compacted once it is at least this large
	// (default 64 MiB), less than a quarter of it holds undelivered data, and
	// that is at most 8 MiB (the copy pauses ingest: keep it short).
	CompactMinFile int64
	// Now is the wall clock for receive times (default time.Now).
	Now func() time.Time
	// Elapsed is the monotonic time since Open (default time.Since of Open's
	// start); max_age is measured with it (see clock.go). Tests inject it.
	Elapsed func() time.Duration
}

func boltOptions() *bolt.Options {
	// NoFreelistSync with the map freelist keeps appends fast after a large
	// backlog has been written and deleted (the array freelist degrades ~6x),
	// and keeps the freelist out of every commit's writes.
	return &bolt.Options{Timeout: 2 * time.Second, NoFreelistSync: true, FreelistType: bolt.FreelistMapType, PageSize: pageSize}
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
	Dup      bool   // the publish carried the DUP flag
	Conn     uint64 // the network connection it came on (any id unique per connection; 0 = unknown)
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

	closeMu  sync.RWMutex // held for reading while enqueueing; Close takes it for writing
	closed   bool
	readOnly bool // OpenReadOnly: no writer; Close only closes the file

	// dbMu is held for reading by every use of db and for writing while
	// compaction swaps the file.
	dbMu        sync.RWMutex
	limits      atomic.Pointer[Limits]
	commitWait  atomic.Int64 // time.Duration; see SetCommitWait
	commitMin   atomic.Int64
	purgeEvery  atomic.Int64 // time.Duration; see SetPurgeInterval
	now         func() time.Time
	logged      sync.Map // route/reason already logged
	quarantined string   // path of a corrupt file moved aside at open, if any
	janitorDone chan struct{}
	purgeMu     sync.Mutex    // one purge at a time (janitor, Close, Compact)
	lastPurge   time.Time     // guarded by purgeMu
	lastRepack  atomic.Int64  // unix ns of the last repack pass
	repackAfter uint64        // blocks keyed up to it were considered by repacks; guarded by mu
	removedN    atomic.Uint64 // records removed (delivered, dropped) since open
	// the removal count and time at the last repack pass; guarded by purgeMu
	repackRateN  uint64
	repackRateAt time.Time

	epoch string // gw.epoch: names this buffer file's life; see Epoch

	health // Err and Failed: the buffer became unusable (health.go)

	mu      sync.Mutex // guards the fields below
	nextSeq uint64
	idx     *index
	drops   map[string]map[string]uint64 // route -> reason -> count
	dedup   *dedupIndex
	marks   map[string]uint64 // removed-through seqs as last written to the file

	notify chan struct{}

	// the journal (journal.go): the writer's files, the blocks not yet in
	// the bbolt file, and the highest key up to which every block is there
	jnl        *journal
	rewind     journalMark // where a journal write failed; the writer sets it, a reopen uses it (both under dbMu)
	pending    pendingBlocks
	appliedKey atomic.Uint64
	ckptReq    chan ckptRequest
	ckptForce  chan chan ckptState // Checkpoint asks the writer
	ckptDone   chan struct{}

	clockBase atomic.Uint64 // buffer clock (ms) at open; see clock.go

	fullUntil   atomic.Int64 // unix ns: refuse appends until then (the disk was full)
	ctr         counters
	pagesBefore atomic.Uint64 // pages written by files this buffer compacted away
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
	if opts.PurgeInterval <= 0 {
		opts.PurgeInterval = 30 * time.Second
	}
	if opts.CompactMinFile <= 0 {
		opts.CompactMinFile = 64 << 20
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	start := time.Now()
	if opts.Elapsed == nil {
		opts.Elapsed = func() time.Duration { return time.Since(start) }
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
		ckptReq:     make(chan ckptRequest, 1),
		ckptForce:   make(chan chan ckptState),
		ckptDone:    make(chan struct{}),
	}
	b.SetLimits(opts.Limits)
	b.SetCommitWait(opts.CommitWait, opts.CommitMinRecords)
	b.SetPurgeInterval(opts.PurgeInterval)
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
		b.epoch = "" // the fresh file's
		err = b.openAndLoad()
	}
	if err != nil {
		return nil, err
	}
	go b.writer()
	go b.janitor()
	go b.checkpointer()
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
	if err := boltfile.Check(b.opts.Path); err != nil {
		if errors.Is(err, boltfile.ErrTruncated) || errors.Is(err, boltfile.ErrNoMeta) {
			return fmt.Errorf("buffer: %w: %w", errCorruptFile, err)
		}
		return fmt.Errorf("buffer: open %s: %w", b.opts.Path, err)
	}
	db, err := bolt.Open(b.opts.Path, 0o600, boltOptions())
	if err != nil {
		return fmt.Errorf("buffer: open %s: %w", b.opts.Path, err)
	}
	b.db = db
	b.idx = newIndex()
	b.drops = map[string]map[string]uint64{}
	b.dedup = newDedupIndex()
	b.marks = map[string]uint64{}
	if err := b.db.View(func(tx *bolt.Tx) error { return checkFormat(tx, b.opts.Path) }); err != nil {
		db.Close()
		b.db = nil
		return err
	}
	if err := b.migrate(); err != nil {
		db.Close()
		b.db = nil
		return err
	}
	if err := b.load(); err != nil {
		db.Close()
		b.db = nil
		return err
	}
	return nil
}

// load creates the buckets of a new file and rebuilds the in-memory index
// from the blocks' headers, the sequence counter and the recent dedup
// entries.
func (b *Buffer) load() error {
	// A file that has its buckets and epoch is read without a write
	// transaction: reopening after a failed write on a full disk must not
	// need space.
	ready := false
	if err := b.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(metaBucket)
		ready = meta != nil && meta.Get(epochKey) != nil && tx.Bucket(blocksBucket) != nil && formatMarked(tx)
		return nil
	}); err != nil {
		return fmt.Errorf("buffer: %w", err)
	}
	if !ready {
		err := b.db.Update(func(tx *bolt.Tx) error {
			meta, err := tx.CreateBucketIfNotExists(metaBucket)
			if err != nil {
				return err
			}
			if _, err := loadEpoch(meta); err != nil {
				return err
			}
			for _, name := range [][]byte{dedupBucket, blocksBucket} {
				if _, err := tx.CreateBucketIfNotExists(name); err != nil {
					return err
				}
			}
			return markFormat(tx)
		})
		if err != nil {
			return fmt.Errorf("buffer: %w", err)
		}
	}
	var applied uint64
	var logged []dedupEntry
	err := b.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(metaBucket)
		if v := meta.Get(journalAppliedKey); len(v) == 8 {
			applied = binary.BigEndian.Uint64(v)
		}
		if v := meta.Get(seqKeyName); len(v) == 8 {
			b.nextSeq = binary.BigEndian.Uint64(v)
		}
		if b.epoch == "" { // a reopen keeps it (Epoch is read without a lock)
			b.epoch = string(meta.Get(epochKey))
		}
		var err error
		if v := meta.Get(marksKey); v != nil {
			if b.marks, err = decodeMarks(v); err != nil {
				return err
			}
		}
		if v := meta.Get(clockKey); len(v) == 8 {
			b.raiseClockBase(binary.BigEndian.Uint64(v))
		}
		logged, err = loadDedupLog(tx.Bucket(dedupBucket))
		if err != nil {
			return err
		}
		if err := b.indexBlocks(tx.Bucket(blocksBucket), true); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := b.loadJournal(applied, true); err != nil {
		return err
	}
	b.dedup.load(logged, b.dedup.pendingLoad)
	b.dedup.pendingLoad = nil
	return nil
}

// indexBlocks rebuilds the in-memory index from the blocks' headers,
// applying the routes' removed-through marks; with dedup it also gathers
// the blocks' dedup entries for loading.
func (b *Buffer) indexBlocks(bk *bolt.Bucket, dedup bool) error {
	c := bk.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if len(k) != 8 {
			return fmt.Errorf("%w: block key of %d bytes", ErrCorruptRecord, len(k))
		}
		if err := b.indexBlock(binary.BigEndian.Uint64(k), getBlock(bk, k), dedup); err != nil {
			return err
		}
	}
	if b.nextSeq == 0 {
		b.nextSeq = 1
	}
	return nil
}

// indexBlock adds one stored block to the index at open (from the bbolt file
// or the journal).
func (b *Buffer) indexBlock(key uint64, v []byte, dedup bool) error {
	h, err := decodeBlockHeader(key, v, dedup)
	if nb := (*newerBlockError)(nil); errors.As(err, &nb) {
		return newerFormat(b.opts.Path, nb.Error())
	}
	if err != nil {
		return err
	}
	b.idx.addBlock(key, h)
	b.raiseClockBase(h.clock)
	i := len(b.idx.blocks) - 1
	for pos, r := range h.recs {
		name := h.routes[r.route]
		if r.seq <= b.marks[name] {
			b.idx.remove(i, pos, b.idx.routes[name], r.budgetSize())
		}
		b.nextSeq = max(b.nextSeq, r.seq+1)
	}
	b.dedup.pendingLoad = append(b.dedup.pendingLoad, h.dedup...)
	return nil
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

// HeaderPossibleDuplicateOf is added to a publish that repeats, with the DUP
// flag and on a later connection, the packet id, topic and payload of one
// this gateway already stored and PUBACKed: the value is that one's gw.seq
// (same gw.epoch). It is stored (MQTT-4.3.2-5: after its PUBACK, a packet id
// names a new message) and a consumer that wants one copy drops it.
const HeaderPossibleDuplicateOf = "gw.possible_duplicate_of"

// Acknowledged tells the buffer that the PUBACK of the publish stored as seq
// (client, packet id) was sent on connection conn (see DedupKey.Conn). A DUP
// matching it that arrives on a later connection is stored again (see
// HeaderPossibleDuplicateOf) instead of being taken for the stored copy.
func (b *Buffer) Acknowledged(client string, pid uint16, seq, conn uint64) {
	b.mu.Lock()
	b.dedup.acknowledged(client, pid, seq, conn)
	b.mu.Unlock()
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
	tick := time.NewTicker(checkpointEvery / 4)
	defer tick.Stop()
	last := 0                  // records in the previous commit
	var lastTook time.Duration // how long it took
	for {
		select {
		case a := <-b.queue:
			batch = append(batch[:0], a)
			batch = b.gather(batch)
			if w := time.Duration(b.commitWait.Load()); w > 0 && !b.enough(len(batch)) {
				// Company for the fsync: the longest a PUBACK may wait to
				// share a commit (the operator's trade of latency for wear).
				wait.Reset(w)
				batch = b.gatherUntil(batch, b.opts.MaxBatch, wait.C)
				stopTimer(wait)
			} else if len(batch) < last/2 && lastTook > 0 {
				// Many writers, each with one message in flight, are still
				// re-sending after the previous commit's acknowledgements:
				// wait a fraction of a commit for them, so one fsync carries
				// them all.
				wait.Reset(min(lastTook/4, maxGatherWait))
				batch = b.gatherUntil(batch, last, wait.C)
				stopTimer(wait)
			}
			start := time.Now()
			b.commit(batch)
			last, lastTook = len(batch), time.Since(start)
		case <-tick.C:
			b.dbMu.RLock()
			b.maybeCheckpoint(false) // a generation that waited long enough
			b.dbMu.RUnlock()
		case reply := <-b.ckptForce:
			b.dbMu.RLock()
			b.maybeCheckpoint(true)
			j := b.jnl
			var st ckptState
			if j != nil {
				st = ckptState{j: j, gen: j.closing, empty: j.lastKey == 0}
			}
			b.dbMu.RUnlock()
			reply <- st
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

func stopTimer(t *time.Timer) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
}

// SetCommitWait changes how long a commit waits for company and how many
// records end the wait early (see Options); it applies from the next commit.
func (b *Buffer) SetCommitWait(wait time.Duration, minRecords int) {
	b.commitWait.Store(int64(max(wait, 0)))
	b.commitMin.Store(int64(max(minRecords, 0)))
}

// SetPurgeInterval changes how often delivered blocks are purged (see
// Options.PurgeInterval); 0 keeps the current one.
func (b *Buffer) SetPurgeInterval(d time.Duration) {
	if d > 0 {
		b.purgeEvery.Store(int64(d))
	}
}

// enough: the batch is as large as the operator asked a commit to wait for.
func (b *Buffer) enough(n int) bool {
	m := int(b.commitMin.Load())
	return n >= b.opts.MaxBatch || (m > 0 && n >= m)
}

// gatherUntil adds appends as they arrive until the batch holds want (or
// is enough), the timer fires, or MaxBatch is reached.
func (b *Buffer) gatherUntil(batch []*Append, want int, timeout <-chan time.Time) []*Append {
	for len(batch) < want && !b.enough(len(batch)) {
		select {
		case a := <-b.queue:
			batch = append(batch, a)
		case <-timeout:
			return b.gather(batch)
		}
	}
	return b.gather(batch)
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

// commit writes one batch as one block in one transaction and reports each
// outcome in order, only after the commit returned. Budgets are enforced
// here: a record that does not fit is refused, or makes room by evicting, as
// its route's on_full says (evictions are in memory, like deliveries, and
// reach the file with the next purge).
func (b *Buffer) commit(batch []*Append) {
	err := b.Err()
	if err == nil && time.Now().UnixNano() < b.fullUntil.Load() {
		err = ErrStorageFull
	}
	if err != nil {
		// unusable, or the disk was full a moment ago (see health.go)
		for _, a := range batch {
			a.Done(Result{Err: err})
		}
		return
	}
	results := make([]Result, len(batch))
	b.mu.Lock()
	seq := b.nextSeq
	snapshot := make(map[string]int64, len(b.idx.routes))
	for name, st := range b.idx.routes {
		snapshot[name] = st.Bytes
	}
	b.mu.Unlock()
	limits := b.limits.Load()

	var (
		seqs     []uint64
		ch       *changes
		newDedup []dedupEntry
		header   *blockHeader
	)
	b.dbMu.RLock()
	err = func() error {
		if b.jnl == nil {
			return ErrClosed // a reopen failed; the buffer is being marked unusable
		}
		ch = newChanges(snapshot)
		newDedup = make([]dedupEntry, 0, len(batch))
		seqs = make([]uint64, 0, len(batch))
		header = &blockHeader{key: seq, recs: make([]blockRec, 0, len(batch))}
		routeIdx := map[string]int{}
		s := seq
		// The block in one allocation: room for the journal entry's head
		// and the block header (a bound, written last, right before the
		// bodies), then the records' encodings back to back.
		space, hdrMax := 0, journalEntryHead+64
		for _, a := range batch {
			space += a.Record.size()
			hdrMax += 3*binary.MaxVarintLen64 + len(a.Record.Route) + 2*binary.MaxVarintLen64 + 10 + len(a.Dedup.ClientID)
		}
		bodies := make([]byte, hdrMax, hdrMax+space)
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
					b.mu.Lock()
					prev, ok, ackedOn := b.dedup.lookup(a.Dedup.ClientID, a.Dedup.PacketID, h)
					b.mu.Unlock()
					// Not PUBACKed yet (or not by this process): the
					// retransmission of the stored copy. PUBACKed on this
					// same connection: the client got that PUBACK, and a
					// DUP can only repeat the stored copy too.
					if ok && (ackedOn == 0 || ackedOn == a.Dedup.Conn) {
						results[i] = Result{Seq: prev, Duplicate: true}
						continue
					}
					if ok {
						// PUBACKed on an earlier connection: either that
						// PUBACK was lost with it (a copy), or the client got
						// it and this is a new, identical message whose first
						// copy was lost with that connection. MQTT-4.3.2-5
						// says new: it is stored, never dropped, and the
						// header names the possible original.
						rec.Headers = append(rec.Headers, Header{Key: HeaderPossibleDuplicateOf, Value: strconv.AppendUint(nil, prev, 10)})
					}
				}
			}
			start := len(bodies)
			bodies = rec.marshal(bodies)
			n := len(bodies) - start
			size := int64(8 + n)
			if err := b.makeRoom(ch, limits, rec.Route, size); err != nil {
				bodies = bodies[:start]
				if errors.Is(err, ErrRouteFull) || errors.Is(err, ErrDiskFull) {
					results[i] = Result{Err: err}
					continue
				}
				return err
			}
			if a.Dedup.ClientID != "" {
				newDedup = append(newDedup, dedupEntry{client: a.Dedup.ClientID, pid: a.Dedup.PacketID, hash: h, seq: s})
			}
			ri, ok := routeIdx[rec.Route]
			if !ok {
				ri = len(header.routes)
				routeIdx[rec.Route] = ri
				header.routes = append(header.routes, rec.Route)
			}
			header.recs = append(header.recs, blockRec{route: ri, seq: s, size: n})
			ch.add(rec.Route, size)
			ch.addPending(rec.Route, s, size)
			results[i].Seq = s
			seqs = append(seqs, s)
			s++
		}
		if s == seq {
			return nil // only duplicates or refusals: nothing to write
		}
		header.clock = b.clockMillis()
		hdr := encodeBlockHeader(nil, seq, header.clock, header.routes, header.recs, newDedup)
		// entry: the block with the journal entry's head in front of it
		var entry []byte
		if start := hdrMax - len(hdr); start >= journalEntryHead {
			copy(bodies[start:], hdr)
			entry = bodies[start-journalEntryHead:]
		} else { // the bound was wrong: build it again
			entry = append(append(make([]byte, journalEntryHead, journalEntryHead+len(hdr)+len(bodies)-hdrMax), hdr...), bodies[hdrMax:]...)
		}
		value := entry[journalEntryHead:]
		if b.opts.BeforeCommit != nil {
			if err := b.opts.BeforeCommit(seqs); err != nil {
				return err
			}
		}
		// one write and one fdatasync; the checkpoint puts it into the
		// bbolt file later (journal.go)
		if err := b.jnl.append(seq, entry); err != nil {
			// What a failed write or fdatasync left there is not to be
			// trusted, whatever the page cache shows: the replay of the
			// reopen stops before it and the next entry overwrites it.
			b.rewind = journalMark{gen: b.jnl.cur, off: b.jnl.off}
			return err
		}
		b.pending.put(seq, value)
		return nil
	}()
	if err == nil {
		b.maybeCheckpoint(false)
	}
	if err != nil {
		b.dbMu.RUnlock()
		err = fmt.Errorf("buffer: commit: %w", err)
		b.log.Error("buffer commit failed; publishes in this batch are not acknowledged", "messages", len(batch), "error", err)
		for _, a := range batch {
			a.Done(Result{Err: err})
		}
		b.afterWriteFailure(err)
		return
	}
	if len(seqs) > 0 {
		b.ctr.commits.Add(1)
		b.ctr.records.Add(uint64(len(seqs)))
	}
	b.mu.Lock()
	if len(seqs) > 0 {
		b.nextSeq = seq + uint64(len(seqs))
		b.idx.addBlock(seq, header)
	}
	// the evictions name blocks by key and position: applied before a
	// repack (which holds dbMu exclusively) can merge them
	b.applyEvictions(ch)
	for _, e := range newDedup {
		b.dedup.add(e)
	}
	b.mu.Unlock()
	b.dbMu.RUnlock()
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
}

var readScratch = sync.Pool{New: func() any { return new([]Record) }}

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
	// Gathered in a reused slice, returned as an exact copy: how many a
	// read finds is not known before (a drain that keeps up reads a few, a
	// backlog drain full batches), and growing or guessing the result
	// allocated about three times what it returned.
	scratch := readScratch.Get().(*[]Record)
	out := (*scratch)[:0]
	defer func() {
		clear(out) // the pool keeps no record alive
		if cap(out) <= 8192 {
			*scratch = out[:0]
			readScratch.Put(scratch)
		}
	}()
	var copies arena
	size := 0
	limits, now := b.limits.Load(), b.clockMillis()
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	for _, route := range routes {
		err := b.scanRoute(route, after[route], func(h *blockHeader, v []byte, i int) (bool, error) {
			br := h.recs[i]
			if len(out) >= maxRecords || (size > 0 && size+br.size > maxBytes) {
				return false, nil
			}
			if b.expired(limits, route, h.clock, now) {
				return true, nil
			}
			r, err := h.recordIn(&copies, v, i)
			if err != nil {
				return false, fmt.Errorf("route %q %w", route, err)
			}
			out = append(out, r)
			size += br.size
			return true, nil
		})
		if err != nil {
			return slices.Clone(out), fmt.Errorf("buffer: read: %w", err)
		}
		if len(out) >= maxRecords || size >= maxBytes {
			break
		}
	}
	return append(make([]Record, 0, len(out)), out...), nil
}

// view runs fn in a read transaction with a getter of block values, the
// journal's pending blocks included. dbMu must be held for reading.
func (b *Buffer) view(fn func(get func([]byte) []byte) error) error {
	b.pending.retire.RLock()
	defer b.pending.retire.RUnlock()
	return b.db.View(func(tx *bolt.Tx) error { return fn(b.getter(tx.Bucket(blocksBucket))) })
}

// getter reads a block from the pending ones first, then from bk. Only
// within view: a block leaves pending only once no view that began before
// its checkpoint committed is open (see pendingBlocks.retire).
func (b *Buffer) getter(bk *bolt.Bucket) func([]byte) []byte {
	return func(k []byte) []byte {
		if v := b.pending.get(binary.BigEndian.Uint64(k)); v != nil {
			return v
		}
		return getBlock(bk, k)
	}
}

// scanRoute calls fn for the live records of route with a seq above after,
// in order, until fn returns false or an error. v and h are valid only
// during the call. dbMu must be held for reading.
func (b *Buffer) scanRoute(route string, after uint64, fn func(h *blockHeader, v []byte, i int) (bool, error)) error {
	b.mu.Lock()
	st := b.idx.routes[route]
	if st == nil || st.Messages == 0 {
		b.mu.Unlock()
		return nil
	}
	pos := b.idx.from(max(after, st.head))
	b.mu.Unlock()
	first := true // still before the route's first live record
	for {
		b.mu.Lock()
		cands, next := b.idx.candidates(st, pos, 256)
		b.mu.Unlock()
		if len(cands) == 0 {
			return nil
		}
		pos = next
		more := true
		err := b.view(func(get func([]byte) []byte) error {
			for _, c := range cands {
				v := get(seqKey(c.key))
				if v == nil {
					continue // purged since the snapshot: nothing live was in it
				}
				h, err := decodeBlockHeader(c.key, v, false)
				if err != nil {
					return err
				}
				liveHere := false
				for i, r := range h.recs {
					if h.routes[r.route] != route || c.removed(i) {
						continue
					}
					liveHere = true
					if r.seq <= after {
						continue
					}
					ok, err := fn(h, v, i)
					if err != nil {
						return err
					}
					if !ok {
						more = false
						return nil
					}
				}
				if first {
					if liveHere {
						first = false
					} else {
						b.mu.Lock()
						b.idx.advanceHead(st, c.key)
						b.mu.Unlock()
					}
				}
			}
			return nil
		})
		if err != nil || !more {
			return err
		}
	}
}

// Delete marks records Kafka acknowledged as delivered. It writes nothing:
// their blocks are deleted by a later purge once all their records are gone.
// Missing or already removed records are ignored, so a repeated delete is
// harmless.
func (b *Buffer) Delete(refs []Ref) error {
	if len(refs) == 0 {
		return nil
	}
	_, err := b.removeRefs(refs, "")
	if err != nil {
		return fmt.Errorf("buffer: delete: %w", err)
	}
	return nil
}

// removeRefs removes records by reference, counting reason when not "".
func (b *Buffer) removeRefs(refs []Ref, reason string) (int, error) {
	// group by block, found under the lock, decoded outside it; dbMu is
	// held throughout, as blocks are named by key and position (a repack
	// changes both, holding it exclusively)
	type want struct {
		key  uint64
		refs []Ref
	}
	byBlock := map[uint64]*want{}
	var order []*want
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	b.mu.Lock()
	for _, r := range refs {
		i := b.idx.from(r.Seq)
		if i >= len(b.idx.blocks) || b.idx.blocks[i].key > r.Seq {
			continue
		}
		k := b.idx.blocks[i].key
		w := byBlock[k]
		if w == nil {
			w = &want{key: k}
			byBlock[k] = w
			order = append(order, w)
		}
		w.refs = append(w.refs, r)
	}
	b.mu.Unlock()
	type hit struct {
		key   uint64
		pos   int
		route string
		size  int64
	}
	var hits []hit
	err := b.view(func(get func([]byte) []byte) error {
		for _, w := range order {
			v := get(seqKey(w.key))
			if v == nil {
				continue
			}
			h, err := decodeBlockHeader(w.key, v, false)
			if err != nil {
				return err
			}
			for _, r := range w.refs {
				pos := sort.Search(len(h.recs), func(i int) bool { return h.recs[i].seq >= r.Seq })
				if pos < len(h.recs) && h.recs[pos].seq == r.Seq && h.routes[h.recs[pos].route] == r.Route {
					hits = append(hits, hit{w.key, pos, r.Route, h.recs[pos].budgetSize()})
				}
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	n := 0
	ch := newChanges(nil)
	b.mu.Lock()
	for _, h := range hits {
		i := b.idx.find(h.key)
		if i < 0 {
			continue
		}
		if b.idx.remove(i, h.pos, b.idx.route(h.route), h.size) {
			n++
			b.removedN.Add(1)
			if reason != "" {
				ch.remove(h.route, reason, 1, h.size)
			}
		}
	}
	b.countDrops(ch)
	b.mu.Unlock()
	b.logDrops(ch)
	return n, nil
}

// DeleteThrough removes every record of route with a gw.seq at or below seq
// and reports how many there were. The exactly-once drain calls it with the
// marks Kafka committed, so a record that reached Kafka before a crash is not
// sent again.
func (b *Buffer) DeleteThrough(route string, seq uint64) (int, error) {
	var refs []Ref
	b.dbMu.RLock()
	err := b.scanRoute(route, 0, func(h *blockHeader, _ []byte, i int) (bool, error) {
		if h.recs[i].seq > seq {
			return false, nil
		}
		refs = append(refs, Ref{Route: route, Seq: h.recs[i].seq})
		return true, nil
	})
	b.dbMu.RUnlock()
	if err != nil {
		return 0, fmt.Errorf("buffer: delete through %q/%d: %w", route, seq, err)
	}
	n, err := b.removeRefs(refs, "")
	if err != nil {
		return n, fmt.Errorf("buffer: delete through %q/%d: %w", route, seq, err)
	}
	return n, nil
}

func (b *Buffer) routeNames() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	names := make([]string, 0, len(b.idx.routes))
	for name, st := range b.idx.routes {
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
	out := make(map[string]RouteStats, len(b.idx.routes))
	for name, st := range b.idx.routes {
		out[name] = RouteStats{Messages: st.Messages, Bytes: st.Bytes}
	}
	b.mu.Unlock()
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	for name, st := range out {
		if st.Messages == 0 {
			continue
		}
		_ = b.scanRoute(name, 0, func(h *blockHeader, v []byte, i int) (bool, error) {
			br := h.recs[i]
			st.Oldest, _ = receivedOf(v[br.off : br.off+br.size])
			return false, nil
		})
		out[name] = st
	}
	return out
}

// Total is the backlog over all routes.
func (b *Buffer) Total() (messages, bytes int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, st := range b.idx.routes {
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

// Epoch names this buffer's life (the gw.epoch header): 16 random bytes in hex,
// made when the file is created and kept for its whole life. A lost, wiped or
// quarantined file starts a new epoch, so gw.id+gw.epoch+gw.seq never names two
// different messages even when gw.seq starts again at 1.
func (b *Buffer) Epoch() string { return b.epoch }

// NextSeq is the gw.seq the next stored message will get.
func (b *Buffer) NextSeq() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.nextSeq
}

// Close stops accepting appends, commits what is queued, purges delivered
// blocks, and closes the file. It is safe to call more than once.
func (b *Buffer) Close() error {
	b.closeMu.Lock()
	if b.readOnly {
		b.readOnly = false
		b.closeMu.Unlock()
		return b.db.Close()
	}
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
	<-b.ckptDone
	// A clean stop leaves an empty journal and no delivered record to
	// re-send (an unusable file is not written again).
	if b.Err() == nil {
		if err := b.checkpointAll(); err != nil {
			b.log.Warn("buffer: final checkpoint failed; the journal keeps its blocks for the next start", "error", err)
		} else if err := b.purge(true); err != nil {
			b.log.Warn("buffer: final purge failed; delivered records may be sent again after restart", "error", err)
		}
	}
	b.dbMu.Lock()
	defer b.dbMu.Unlock()
	if b.jnl != nil {
		b.jnl.close()
	}
	return b.db.Close()
}
