package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgegw/gateway/internal/failpoint"
	"github.com/edgegw/gateway/internal/wire"
)

// The lazy delete. A delivered (or dropped) record is only marked in memory;
// its block is deleted once nothing in it is live, by a purge: one commit
// every PurgeInterval (or sooner when purgeBlocks are waiting) that deletes
// whole blocks, moves their dedup entries to the dedup log and writes each
// route's removed-through mark and the sequence counter. Nothing is deleted
// on an acknowledgement path, and a crash between purges re-sends at most
// what was delivered since the last one (at-least-once; gw.epoch+gw.seq name
// the copies).

// purgeBlocks dead blocks trigger a purge before the interval is up, so a
// fast drain does not let the file grow for long.
const purgeBlocks = 4096

// purgeMaxBlocks bounds one purge commit's deletes (and its memory).
const purgeMaxBlocks = 65536

// purge deletes dead blocks when due (or now, when force) and records the
// marks. It returns nil when there was nothing to do.
func (b *Buffer) purge(force bool) error {
	if force {
		// what is delivered in the journal's blocks too (not after Close:
		// Close checkpoints itself)
		if err := b.Checkpoint(); err != nil && !errors.Is(err, ErrClosed) {
			return err
		}
	}
	b.purgeMu.Lock()
	defer b.purgeMu.Unlock()
	for {
		b.mu.Lock()
		dead := b.idx.dead
		b.mu.Unlock()
		if dead == 0 && !force {
			return nil
		}
		// Due: the interval is up (the first purge after a start comes at
		// once, so what a crash made the gateway re-send is not re-sent
		// again at the next one), or many blocks wait.
		due := force || dead >= purgeBlocks || time.Since(b.lastPurge) >= time.Duration(b.purgeEvery.Load())
		if !due {
			return nil
		}
		n, err := b.purgeOnce()
		if err != nil {
			b.afterWriteFailure(err)
			return err
		}
		b.lastPurge = time.Now()
		if n < purgeMaxBlocks {
			return nil
		}
	}
}

func (b *Buffer) purgeOnce() (int, error) {
	b.mu.Lock()
	// only blocks in the bbolt file: the others are still in the journal
	keys := b.idx.purgeable(purgeMaxBlocks, b.appliedKey.Load())
	marks := make(map[string]uint64, len(b.idx.routes))
	next := b.nextSeq
	b.mu.Unlock()
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	for route := range b.snapshotRoutes() {
		if m, ok := b.markOf(route); ok {
			marks[route] = m
		}
	}
	changedMarks := false
	b.mu.Lock()
	for r, m := range marks {
		if b.marks[r] != m {
			changedMarks = true
		}
	}
	b.mu.Unlock()
	if len(keys) == 0 && !changedMarks {
		return 0, nil
	}
	var moved []dedupEntry
	var pruned int
	err := b.db.Update(func(tx *bolt.Tx) error {
		moved, pruned = moved[:0], 0
		bk := tx.Bucket(blocksBucket)
		for _, k := range keys {
			kb := seqKey(k)
			v := getBlock(bk, kb)
			if v == nil {
				continue
			}
			h, err := decodeBlockHeader(k, v, true)
			if err != nil {
				return err
			}
			moved = append(moved, h.dedup...)
			if err := deleteBlock(bk, kb); err != nil {
				return err
			}
		}
		dd := tx.Bucket(dedupBucket)
		if len(moved) > 0 {
			sort.Slice(moved, func(i, j int) bool { return moved[i].seq < moved[j].seq })
			if err := dd.Put(seqKey(moved[0].seq), encodeDedupBatch(moved)); err != nil {
				return err
			}
			var err error
			if pruned, err = pruneDedupLog(dd); err != nil {
				return err
			}
		}
		failpoint.Hit(failpoint.BufferLazyDelete) // inside the purge commit, before its fsync
		meta := tx.Bucket(metaBucket)
		if err := meta.Put(marksKey, encodeMarks(marks)); err != nil {
			return err
		}
		if err := meta.Put(clockKey, seqKey(b.clockMillis())); err != nil {
			return err
		}
		return meta.Put(seqKeyName, seqKey(next))
	})
	if err != nil {
		return 0, fmt.Errorf("buffer: purge: %w", err)
	}
	b.ctr.purges.Add(1)
	b.mu.Lock()
	b.idx.dropBlocks(keys)
	b.marks = marks
	b.dedup.logN += len(moved) - pruned
	b.mu.Unlock()
	return len(keys), nil
}

func (b *Buffer) snapshotRoutes() map[string]bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]bool, len(b.idx.routes))
	for name := range b.idx.routes {
		out[name] = true
	}
	return out
}

// markOf is the highest seq below which route has nothing live: the seq
// before its first live record, or the last seq it ever stored. dbMu held
// for reading.
func (b *Buffer) markOf(route string) (uint64, bool) {
	b.mu.Lock()
	st := b.idx.routes[route]
	if st == nil {
		b.mu.Unlock()
		return 0, false
	}
	empty, last := st.Messages == 0, st.lastSeq
	b.mu.Unlock()
	if empty {
		return last, last > 0
	}
	var first uint64
	_ = b.scanRoute(route, 0, func(h *blockHeader, _ []byte, i int) (bool, error) {
		first = h.recs[i].seq
		return false, nil
	})
	if first <= 1 {
		return 0, false
	}
	return first - 1, true
}

func encodeMarks(m map[string]uint64) []byte {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	v := binary.AppendUvarint(nil, uint64(len(names)))
	for _, n := range names {
		v = wire.AppendBytes(v, []byte(n))
		v = binary.AppendUvarint(v, m[n])
	}
	return v
}

func decodeMarks(v []byte) (map[string]uint64, error) {
	d := wire.Decoder{B: v}
	n := d.Uvarint()
	if d.Err != nil || n > uint64(len(v)) {
		return nil, fmt.Errorf("%w: marks", ErrCorruptRecord)
	}
	m := make(map[string]uint64, n)
	for i := uint64(0); i < n && d.Err == nil; i++ {
		name := string(d.Bytes())
		m[name] = d.Uvarint()
	}
	if d.Err != nil {
		return nil, fmt.Errorf("%w: marks", ErrCorruptRecord)
	}
	return m, nil
}
