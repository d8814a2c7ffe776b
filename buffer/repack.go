package buffer

import (
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgegw/gateway/internal/failpoint"
)

// Repacking. A block is what one commit stored, and a small block wastes
// most of the space it takes: with 1 KiB pages a block over a quarter page
// gets pages of its own (a 300-byte message alone in its commit takes a
// whole 1 KiB page), and one under it shares a leaf that is rarely full. At
// low rates a commit holds one message, so a backlog built while the link
// is down took ~3.6 times its budgeted bytes on disk (measured: 1,070 bytes
// of file per 298-byte record), and the index held one entry per message.
//
// So once a backlog has waited a while, the janitor merges runs of adjacent
// small blocks into one, in one commit that writes the merged block and
// deletes the small ones: nothing is lost or reordered (records keep their
// gw.seq, routes and dedup entries), and a crash leaves either the old
// blocks or the new one. A merged block carries one buffer clock, the newest
// of its members, and only blocks of the same repackWindow are merged: a
// message's max_age may then be reached up to repackWindow late, never
// early. While the link is up, blocks are delivered long before they are old
// enough, so repacking costs nothing; during an outage it rewrites each
// small block once.

const (
	// repackSmall: blocks below it are merged (above it the waste of the
	// last page is under a quarter).
	repackSmall = 4 * pageSize
	// repackMaxBlock bounds a merged block.
	repackMaxBlock = 64 << 10
	// repackWindow: blocks whose buffer clocks fall in the same window of
	// this many milliseconds may share a block.
	repackWindow = 10_000
	// repackMinAge: a window is repacked once it ended this long ago.
	repackMinAge = 10_000
	// repackMaxPass bounds one pass (the commit holds ingest meanwhile); a
	// pass that reaches it is followed by another at the janitor's next tick.
	repackMaxPass   = 1 << 20
	repackMaxBlocks = 16384
	// repackHorizon: records the drain will reach within this long (at the
	// rate records left the buffer since the last pass) are not repacked:
	// after an outage the backlog drains in seconds, and rewriting it first
	// would only wear the flash.
	repackHorizon = time.Minute
)

var errNothingToRepack = errors.New("buffer: nothing to repack")

// repack merges the small blocks of windows old enough, in one commit. It
// reports how many blocks it removed. The janitor calls it with the purges.
func (b *Buffer) repack() (int, error) {
	b.purgeMu.Lock()
	defer b.purgeMu.Unlock()
	// how many records leave per second, since the last pass
	left, at := b.removedN.Load(), time.Now()
	var horizon float64
	if !b.repackRateAt.IsZero() && at.After(b.repackRateAt) {
		horizon = float64(left-b.repackRateN) / at.Sub(b.repackRateAt).Seconds() * repackHorizon.Seconds()
	}
	b.repackRateN, b.repackRateAt = left, at
	now := b.clockMillis()
	if now < repackMinAge+repackWindow {
		return 0, nil
	}
	cutoff := (now - repackMinAge) / repackWindow * repackWindow // blocks committed before it
	// Exclusive: readers and removals locate records by block key and
	// position, which the merge changes (see removeRefs and commit).
	b.dbMu.Lock()
	locked := true
	unlock := func() {
		if locked {
			locked = false
			b.dbMu.Unlock()
		}
	}
	defer unlock()
	if b.Err() != nil {
		return 0, nil
	}
	b.mu.Lock()
	// Nothing is removed while dbMu is held exclusively, so which records
	// are live is known now: a merged block keeps only those (the others
	// were delivered or dropped; a crash cannot bring them back, which is
	// what the next purge would have done too).
	var cands []blockRemoved
	ahead := 0.0                   // live records before block i: the drain reaches i after them
	var firstSkipped uint64        // the first block left for the drain not yet considered
	applied := b.appliedKey.Load() // blocks after it are still in the journal
	for i := 0; i < len(b.idx.blocks) && len(cands) < repackMaxBlocks; i++ {
		bi := &b.idx.blocks[i]
		if bi.key > applied {
			break
		}
		considered := b.repackAfter != 0 && bi.key <= b.repackAfter
		if ahead < horizon || considered {
			if !considered && firstSkipped == 0 && bi.live > 0 {
				firstSkipped = bi.key
			}
			ahead += float64(bi.live)
			continue
		}
		cands = append(cands, b.idx.snapshot(i))
	}
	b.mu.Unlock()
	if len(cands) == 0 {
		return 0, nil
	}

	type run struct {
		keys []uint64
		h    *blockHeader // the merged block's header, live records only
	}
	var runs []run
	var through uint64 // every block up to it has been considered
	var total int      // bytes of the blocks considered
	err := b.db.Update(func(tx *bolt.Tx) error {
		runs, through, total = runs[:0], 0, 0
		bk := tx.Bucket(blocksBucket)
		var m merger
		curWindow := uint64(0)
		// flush writes the gathered run as one block, if it merges anything
		flush := func() error {
			defer func() { m = merger{} }()
			if len(m.keys) < 2 || len(m.recs) == 0 {
				return nil
			}
			h, v := m.block()
			runs = append(runs, run{keys: m.keys, h: h})
			for _, k := range m.keys {
				if err := deleteBlock(bk, seqKey(k)); err != nil {
					return err
				}
			}
			return putBlock(bk, seqKey(h.key), v)
		}
		for _, c := range cands {
			if total >= repackMaxPass {
				break
			}
			v := getBlock(bk, seqKey(c.key))
			if v == nil { // not expected (purges wait on purgeMu): keep runs adjacent
				if err := flush(); err != nil {
					return err
				}
				continue
			}
			h, err := decodeBlockHeader(c.key, v, true)
			if err != nil {
				return err
			}
			if h.clock >= cutoff {
				break // blocks are committed in clock order: the rest are younger
			}
			through = c.key
			if len(v) >= repackSmall && c.live > 0 {
				if err := flush(); err != nil {
					return err
				}
				continue
			}
			if w := h.clock / repackWindow; len(m.keys) > 0 && (w != curWindow || m.size+len(v) > repackMaxBlock) {
				if err := flush(); err != nil {
					return err
				}
			}
			if len(m.keys) == 0 {
				curWindow = h.clock / repackWindow
			}
			m.add(h, v, &c)
			total += len(v)
		}
		if err := flush(); err != nil {
			return err
		}
		if len(runs) == 0 {
			return errNothingToRepack // roll back: an empty commit still writes the meta page
		}
		failpoint.Hit(failpoint.BufferRepack) // inside the commit, before its fsync
		return nil
	})
	if errors.Is(err, errNothingToRepack) {
		err = nil
	}
	if err != nil {
		unlock()
		err = fmt.Errorf("buffer: repack: %w", err)
		b.afterWriteFailure(err)
		return 0, err
	}
	removed := 0
	b.mu.Lock()
	for _, r := range runs {
		b.idx.replace(r.keys, r.h)
		removed += len(r.keys) - 1
	}
	if through > b.repackAfter {
		b.repackAfter = through
	}
	if firstSkipped != 0 && b.repackAfter >= firstSkipped {
		// what the drain was expected to take is considered again next
		// time: the link may drop before it does
		b.repackAfter = firstSkipped - 1
	}
	b.mu.Unlock()
	if total >= repackMaxPass || (len(cands) == repackMaxBlocks && through == cands[len(cands)-1].key) {
		b.lastRepack.Store(0) // more is waiting: go on at the next tick
	}
	if removed > 0 {
		b.ctr.repacked.Add(uint64(removed))
		b.log.Debug("buffer: repacked small blocks", "removed", removed, "merged_into", len(runs))
	}
	return removed, nil
}

// merger gathers a run of adjacent blocks: their live records, in order,
// under the first block's key, all their dedup entries (a retransmission
// must still be known as one), and the newest of their clocks.
type merger struct {
	keys     []uint64
	routes   []string
	routeIdx map[string]int
	recs     []blockRec
	bodies   []byte
	dedup    []dedupEntry
	clock    uint64
	size     int // bytes of the member blocks
}

func (m *merger) add(h *blockHeader, v []byte, rm *blockRemoved) {
	if m.routeIdx == nil {
		m.routeIdx = map[string]int{}
	}
	m.keys = append(m.keys, h.key)
	m.clock = max(m.clock, h.clock)
	m.size += len(v)
	m.dedup = append(m.dedup, h.dedup...)
	for i, r := range h.recs {
		if rm.removed(i) {
			continue
		}
		name := h.routes[r.route]
		ri, ok := m.routeIdx[name]
		if !ok {
			ri = len(m.routes)
			m.routeIdx[name] = ri
			m.routes = append(m.routes, name)
		}
		m.recs = append(m.recs, blockRec{route: ri, seq: r.seq, size: r.size})
		m.bodies = append(m.bodies, v[r.off:r.off+r.size]...)
	}
}

// block returns the merged block's header and value.
func (m *merger) block() (*blockHeader, []byte) {
	key := m.keys[0]
	v := encodeBlock(nil, key, m.clock, m.routes, m.recs, m.bodies, m.dedup)
	h := &blockHeader{key: key, clock: m.clock, routes: m.routes, recs: m.recs}
	return h, v
}

// repackDue reports whether the janitor should try a repack now: as often
// as purges are due at most.
func (b *Buffer) repackDue() bool {
	last := b.lastRepack.Load()
	return time.Since(time.Unix(0, last)) >= time.Duration(b.purgeEvery.Load())
}
