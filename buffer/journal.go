package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgegw/gateway/internal/failpoint"
)

// The journal: one fsync per group commit.
//
// A bbolt commit is two fsyncs in a row (its pages, then the meta page that
// points at them), so an acknowledgement waited for two, and on an SD card
// or eMMC (5-20 ms each) that halved what ingest could reach. A group commit
// now appends its block to a journal file and fdatasyncs that file once;
// then it is acknowledged. The block stays in memory (pending) and readable,
// and a checkpoint writes the blocks of a whole journal generation into the
// bbolt file in one transaction, about once a second, off the
// acknowledgement path. After a power cut, opening the buffer replays what
// the journal holds beyond the last checkpoint.
//
// Two files, used in turn: generation g is written to file g%2. When a
// checkpoint of generation g starts, the writer goes on in g+1 (the other
// file, from its start); g's file is written again only as g+2, after the
// checkpoint of g committed, and that commit also stored "applied through
// g" in the bbolt file. So at any moment the unapplied generations are at
// most two, applied+1 and applied+2, one per file, and a crash at any point
// finds them there.
//
// An entry is its length, a CRC-32C, its generation, its block key, then
// the block. Entries are written one after another, each fdatasync'd before
// the next, so replay stops at the first entry that is not whole and of the
// generation expected (a torn or never-synced write, or what an earlier
// generation left further on). The files are written ahead of use with
// zeros, so an append changes no file size and fdatasync has no metadata to
// write.

const (
	journalMagic      = "GWJOURN1"
	journalHeaderSize = 128
	journalEntryHead  = 4 + 4 + 8 + 8 // length, CRC, generation, key
	// journalPrealloc is written once per file, so that appends neither
	// grow it (a metadata write per fsync) nor run out of space on a full
	// disk. A generation can go beyond it (the file grows).
	journalPrealloc = 2 << 20
	// A checkpoint starts once the generation holds this much, or has waited
	// this long since its first entry: bounds the memory of pending blocks
	// and the replay after a power cut.
	checkpointBytes = 1 << 20
	checkpointEvery = time.Second
	// maxJournalEntry bounds an entry's length read at replay (a block is at
	// most MaxBatch records of at most a few MiB each).
	maxJournalEntry = 1 << 30
)

var journalAppliedKey = []byte("journal_applied") // meta: the last generation checkpointed

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// checkpointHook, when set (tests), runs at the start of each checkpoint.
var checkpointHook func()

// journal is the writer's side of the journal files. The writer owns off,
// cur, bytes, since and lastKey (a reopen replaces the whole journal while
// holding dbMu exclusively); applied is shared with the checkpointer.
type journal struct {
	paths [2]string
	files [2]*os.File

	applied atomic.Uint64 // the last generation in the bbolt file
	cur     uint64        // the generation being written
	off     int64         // where its next entry goes
	bytes   int64         // bytes of entries in cur
	since   time.Time     // when cur got its first entry
	lastKey uint64        // key of cur's last entry (0: none yet)

	// closing is the generation waiting for (or in) its checkpoint, with
	// its last key; 0 when none.
	closing, closingKey uint64
}

// journalMark is a place in a generation.
type journalMark struct {
	gen uint64
	off int64
}

// ckptRequest asks the checkpointer to write generation gen (blocks keyed
// up to key) into the bbolt file.
type ckptRequest struct {
	j   *journal
	gen uint64
	key uint64
}

// pendingBlocks are the blocks in the journal and not yet in the bbolt
// file, readable like the others (see Buffer.getter).
type pendingBlocks struct {
	mu sync.Mutex
	m  map[uint64][]byte
	// retire is held for reading by every read transaction over the
	// blocks (Buffer.view) and for writing while checkpointed blocks leave
	// m: a reader whose transaction began before the checkpoint committed
	// must still find them here.
	retire sync.RWMutex
}

func (p *pendingBlocks) get(key uint64) []byte {
	p.mu.Lock()
	v := p.m[key]
	p.mu.Unlock()
	return v
}

func (p *pendingBlocks) put(key uint64, v []byte) {
	p.mu.Lock()
	p.m[key] = v
	p.mu.Unlock()
}

func (p *pendingBlocks) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.m)
}

// through returns the pending blocks keyed up to key, in key order.
func (p *pendingBlocks) through(key uint64) (keys []uint64, values [][]byte) {
	p.mu.Lock()
	for k := range p.m {
		if k <= key {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		values = append(values, p.m[k])
	}
	p.mu.Unlock()
	return keys, values
}

func journalPaths(dbPath string) [2]string {
	return [2]string{dbPath + ".journal-0", dbPath + ".journal-1"}
}

func journalHeader(epoch string) []byte {
	h := make([]byte, journalHeaderSize)
	copy(h, journalMagic)
	h[8] = byte(len(epoch))
	copy(h[9:], epoch)
	binary.BigEndian.PutUint32(h[journalHeaderSize-4:], crc32.Checksum(h[:journalHeaderSize-4], crcTable))
	return h
}

// journalEpoch reads a file's header: its buffer's epoch, or ok false when
// the header is missing or not whole (a file whose creation was cut short
// holds no entry: the header is synced before any).
func journalEpoch(data []byte) (epoch string, ok bool) {
	if len(data) < journalHeaderSize || string(data[:8]) != journalMagic {
		return "", false
	}
	h := data[:journalHeaderSize]
	if binary.BigEndian.Uint32(h[journalHeaderSize-4:]) != crc32.Checksum(h[:journalHeaderSize-4], crcTable) {
		return "", false
	}
	n := int(h[8])
	if 9+n > journalHeaderSize-4 {
		return "", false
	}
	return string(h[9 : 9+n]), true
}

// journalEntry is one replayed entry.
type journalEntry struct {
	key   uint64
	value []byte
}

// scanJournal returns the whole entries of generation gen from the start of
// data, and the offset after the last one.
func scanJournal(data []byte, gen uint64) ([]journalEntry, int64) {
	var out []journalEntry
	off := journalHeaderSize
	for off+journalEntryHead <= len(data) {
		n := int(binary.BigEndian.Uint32(data[off:]))
		sum := binary.BigEndian.Uint32(data[off+4:])
		if n == 0 || n > maxJournalEntry || off+journalEntryHead+n > len(data) {
			break
		}
		body := data[off+8 : off+journalEntryHead+n]
		if binary.BigEndian.Uint64(body) != gen || crc32.Checksum(body, crcTable) != sum {
			break
		}
		out = append(out, journalEntry{key: binary.BigEndian.Uint64(body[8:]), value: body[16:]})
		off += journalEntryHead + n
	}
	return out, int64(off)
}

// loadJournal replays the journal files over the blocks loaded from the
// bbolt file: the entries of the generations after the last checkpoint
// become pending blocks, indexed like the others. With write it also opens
// the files for the writer, creating (and writing ahead) the missing ones;
// read-only it only reads what is there.
func (b *Buffer) loadJournal(applied uint64, write bool) error {
	j := &journal{paths: journalPaths(b.opts.Path)}
	j.applied.Store(applied)
	b.pending.m = map[uint64][]byte{}
	var data [2][]byte
	for i, p := range j.paths {
		d, err := b.readJournalFile(p, write)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("buffer: journal: %w", err)
		}
		if len(d) == 0 {
			continue
		}
		epoch, ok := journalEpoch(d)
		if ok && epoch != b.epoch {
			// Another buffer file's journal (that file was lost, wiped or
			// moved aside): its entries do not belong to this one.
			if !write {
				continue
			}
			moved := fmt.Sprintf("%s.orphan-%s", p, b.now().UTC().Format("20060102T150405Z"))
			if err := os.Rename(p, moved); err != nil {
				return fmt.Errorf("buffer: journal: moving aside another file's journal: %w", err)
			}
			b.log.Error("buffer: a journal of another buffer file was found; moved it aside", "journal", p, "kept_as", moved)
			continue
		}
		if ok {
			data[i] = d
		}
	}
	// Nothing from where a write failed on (see Buffer.rewind).
	if rw := b.rewind; rw.gen > applied && rw.gen <= applied+2 && data[rw.gen%2] != nil && rw.off < int64(len(data[rw.gen%2])) {
		data[rw.gen%2] = data[rw.gen%2][:max(rw.off, journalHeaderSize)]
	}
	b.rewind = journalMark{}
	// Replay applied+1, then applied+2.
	var lastKey uint64 // the last block in the bbolt file, then the last replayed
	if n := len(b.idx.blocks); n > 0 {
		lastKey = b.idx.blocks[n-1].key
	}
	b.appliedKey.Store(lastKey) // replayed blocks come after it
	var ends [2]int64
	var lastOf [2]uint64
	var count [2]int
	for step := uint64(1); step <= 2; step++ {
		gen := applied + step
		entries, end := scanJournal(data[gen%2], gen)
		ends[step-1] = end
		for _, e := range entries {
			if e.key <= lastKey {
				continue // in the bbolt file already
			}
			if err := b.indexBlock(e.key, e.value, true); err != nil {
				return fmt.Errorf("buffer: journal %s: %w", j.paths[gen%2], err)
			}
			b.pending.m[e.key] = e.value
			lastKey = e.key
			lastOf[step-1] = e.key
			count[step-1]++
		}
	}
	if count[0]+count[1] > 0 {
		b.log.Info("buffer: replayed the journal", "blocks", count[0]+count[1], "applied_generation", applied)
	}
	if !write {
		return nil
	}
	// Go on in the latest generation that has entries; the one before it,
	// if it has any, is checkpointed first.
	j.cur = applied + 1
	j.off = max(ends[0], journalHeaderSize)
	j.bytes = j.off - journalHeaderSize
	j.lastKey = lastOf[0]
	if count[1] > 0 {
		j.closing, j.closingKey = applied+1, lastOf[0]
		j.cur = applied + 2
		j.off, j.bytes, j.lastKey = ends[1], ends[1]-journalHeaderSize, lastOf[1]
	}
	// Replayed blocks go into the bbolt file at the writer's next tick
	// (since is long past), so a box that keeps losing power does not
	// replay an ever longer journal, and their delivered blocks become
	// purgeable.
	created := false
	for i, p := range j.paths {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			j.close()
			return fmt.Errorf("buffer: journal: %w", err)
		}
		j.files[i] = f
		if data[i] != nil {
			dropCache(f) // as replay read it: see dropCache
		} else {
			// new, or not this buffer's: header, then zeros ahead
			if err := writeAhead(f, b.epoch); err != nil {
				j.close()
				return fmt.Errorf("buffer: journal %s: %w", p, err)
			}
			created = true
		}
	}
	if created {
		if err := syncDir(filepath.Dir(b.opts.Path)); err != nil {
			j.close()
			return err
		}
	}
	b.jnl = j
	if j.closing != 0 {
		b.requestCheckpoint(ckptRequest{j: j, gen: j.closing, key: j.closingKey})
	}
	return nil
}

// writeAhead gives a journal file its header and zeros up to
// journalPrealloc. On a full disk the zeros are left out: appends then grow
// the file.
func writeAhead(f *os.File, epoch string) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	if _, err := f.WriteAt(journalHeader(epoch), 0); err != nil {
		return err
	}
	zeros := make([]byte, 4096) // page by page: a larger write makes larger page-cache folios, and dirtying one byte of a folio writes it all back
	for off := int64(journalHeaderSize); off < journalPrealloc; off += int64(len(zeros)) {
		if _, err := f.WriteAt(zeros[:min(int64(len(zeros)), journalPrealloc-off)], off); err != nil {
			if diskFull(err) {
				break
			}
			return err
		}
	}
	return f.Sync()
}

func (j *journal) close() {
	for i, f := range j.files {
		if f != nil {
			f.Close()
			j.files[i] = nil
		}
	}
}

// append writes one block to the current generation and makes it durable
// with one fdatasync. entry is the block with journalEntryHead bytes of room
// in front of it, which append fills (the commit encodes the block there, so
// it is not copied). The writer alone calls it, holding dbMu for reading.
func (j *journal) append(key uint64, entry []byte) error {
	binary.BigEndian.PutUint32(entry, uint32(len(entry)-journalEntryHead))
	binary.BigEndian.PutUint64(entry[8:], j.cur)
	binary.BigEndian.PutUint64(entry[16:], key)
	binary.BigEndian.PutUint32(entry[4:], crc32.Checksum(entry[8:], crcTable))
	f := j.files[j.cur%2]
	if _, err := f.WriteAt(entry, j.off); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	failpoint.Hit(failpoint.BufferCommitBeforeSync)
	if err := fdatasync(f); err != nil {
		return fmt.Errorf("journal: fdatasync: %w", err)
	}
	if j.lastKey == 0 {
		j.since = time.Now()
	}
	j.off += int64(len(entry))
	j.bytes += int64(len(entry))
	j.lastKey = key
	return nil
}

// maybeCheckpoint ends the current generation and asks for its checkpoint
// when it is large or old enough (or force) and the one before it is in the
// file already. The writer calls it between commits, holding dbMu for
// reading.
func (b *Buffer) maybeCheckpoint(force bool) {
	j := b.jnl
	if j == nil || j.lastKey == 0 || j.closing != 0 && j.applied.Load() < j.closing {
		return
	}
	if !force && j.bytes < checkpointBytes && time.Since(j.since) < checkpointEvery {
		return
	}
	j.closing, j.closingKey = j.cur, j.lastKey
	j.cur++
	j.off, j.bytes, j.lastKey = journalHeaderSize, 0, 0
	b.requestCheckpoint(ckptRequest{j: j, gen: j.closing, key: j.closingKey})
}

func (b *Buffer) requestCheckpoint(r ckptRequest) {
	select {
	case b.ckptReq <- r:
	default:
		// one is queued already: a reopen replaced the journal, and the
		// checkpointer drops requests of an older one
		select {
		case <-b.ckptReq:
		default:
		}
		b.ckptReq <- r
	}
}

// checkpointer writes closed generations into the bbolt file. A failed
// checkpoint reopens the buffer (afterWriteFailure), whose replay keeps
// the blocks pending and asks again when two generations wait; otherwise the
// writer asks again with its next generation.
func (b *Buffer) checkpointer() {
	defer close(b.ckptDone)
	for {
		select {
		case r := <-b.ckptReq:
			if wait := time.Until(time.Unix(0, b.fullUntil.Load())); wait > 0 {
				time.Sleep(wait) // the disk was full a moment ago
			}
			if err := b.checkpoint(r); err != nil {
				b.log.Error("buffer: checkpoint of the journal failed; its blocks stay in the journal", "error", err)
				b.afterWriteFailure(err)
			}
		case <-b.quit:
			return
		}
	}
}

// checkpoint writes the pending blocks of r's generation into the bbolt file
// with "applied through r.gen", in one transaction, then lets them leave
// memory.
func (b *Buffer) checkpoint(r ckptRequest) error {
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	if b.jnl != r.j || r.j.applied.Load() >= r.gen || b.Err() != nil {
		return nil // a reopen replaced the journal (and asked again if needed)
	}
	if checkpointHook != nil {
		checkpointHook()
	}
	keys, values := b.pending.through(r.key)
	err := b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(blocksBucket)
		for i, k := range keys {
			if err := putBlock(bk, seqKey(k), values[i]); err != nil {
				return err
			}
		}
		failpoint.Hit(failpoint.BufferCheckpoint)
		return tx.Bucket(metaBucket).Put(journalAppliedKey, seqKey(r.gen))
	})
	if err != nil {
		return fmt.Errorf("buffer: checkpoint: %w", err)
	}
	b.ctr.checkpoints.Add(1)
	b.pending.retire.Lock()
	b.pending.mu.Lock()
	for _, k := range keys {
		delete(b.pending.m, k)
	}
	b.pending.mu.Unlock()
	b.appliedKey.Store(r.key)
	b.pending.retire.Unlock()
	r.j.applied.Store(r.gen)
	return nil
}

// checkpointAll writes every pending block into the bbolt file (Close, once
// the writer stopped), so a clean stop leaves an empty journal.
func (b *Buffer) checkpointAll() error {
	b.dbMu.RLock()
	j := b.jnl
	b.dbMu.RUnlock()
	if j == nil {
		return nil
	}
	if j.closing != 0 && j.applied.Load() < j.closing {
		if err := b.checkpoint(ckptRequest{j: j, gen: j.closing, key: j.closingKey}); err != nil {
			return err
		}
	}
	if j.lastKey == 0 {
		return nil
	}
	return b.checkpoint(ckptRequest{j: j, gen: j.cur, key: j.lastKey})
}

// ckptState is what the writer tells Checkpoint: the generation it closed
// (or that was closing) and whether the current one is still empty.
type ckptState struct {
	j     *journal
	gen   uint64
	empty bool
}

// Checkpoint writes every block that is only in the journal into the bbolt
// file and returns once it is there. Nothing needs it for durability (the
// journal is); tests and tools that read the bbolt file alone do.
func (b *Buffer) Checkpoint() error {
	for {
		reply := make(chan ckptState, 1)
		select {
		case b.ckptForce <- reply:
		case <-b.done:
			return ErrClosed
		}
		st := <-reply
		if st.j == nil {
			return b.Err()
		}
		for st.gen != 0 && st.j.applied.Load() < st.gen {
			if err := b.Err(); err != nil {
				return err
			}
			select {
			case <-b.quit:
				return ErrClosed // Close checkpoints what is left itself
			default:
			}
			b.dbMu.RLock()
			replaced := b.jnl != st.j
			b.dbMu.RUnlock()
			if replaced {
				break // a reopen: ask again
			}
			time.Sleep(time.Millisecond)
		}
		if st.empty && (st.gen == 0 || st.j.applied.Load() >= st.gen) {
			return nil
		}
	}
}
