package buffer

import (
	"fmt"
	"sort"
)

// The in-memory index of the blocks file, rebuilt at open from each block's
// header (its first page only). It is what lets a commit write one value and
// an acknowledgement write nothing: which records are still undelivered
// lives here, and reaches the file in rare purge commits that delete whole
// blocks (see purge.go). Everything here is guarded by Buffer.mu.

// blockInfo is one stored block: about 40 bytes of memory per commit that
// still holds an undelivered record.
type blockInfo struct {
	key  uint64 // first gw.seq of the block (its bbolt key)
	mask uint64 // bit routeID%64 set for each route with records in it
	n    uint32 // records in the block
	live uint32 // records not yet removed (delivered, dropped, set aside)
	rm   uint64 // removed records among the first 64
}

// routeState is one route's live backlog.
type routeState struct {
	RouteStats
	id      int    // bit in blockInfo.mask is id%64
	head    uint64 // key of a block at or before the route's first live record
	lastSeq uint64 // highest gw.seq ever stored for the route
}

type index struct {
	blocks []blockInfo         // ascending keys, non-overlapping seq ranges
	rmHigh map[uint64][]uint64 // block key -> removed bits of records 64 and up
	routes map[string]*routeState
	nextID int
	dead   int // blocks with live == 0, waiting for a purge
}

func newIndex() *index {
	return &index{rmHigh: map[uint64][]uint64{}, routes: map[string]*routeState{}}
}

func (x *index) route(name string) *routeState {
	st := x.routes[name]
	if st == nil {
		st = &routeState{id: x.nextID}
		x.nextID++
		x.routes[name] = st
	}
	return st
}

func (st *routeState) bit() uint64 { return 1 << (uint(st.id) % 64) }

// find returns the position of the block with this key, or -1.
func (x *index) find(key uint64) int {
	i := sort.Search(len(x.blocks), func(i int) bool { return x.blocks[i].key >= key })
	if i < len(x.blocks) && x.blocks[i].key == key {
		return i
	}
	return -1
}

// from returns the position of the first block that can hold a seq above
// after (the one before the first block keyed above it).
func (x *index) from(after uint64) int {
	i := sort.Search(len(x.blocks), func(i int) bool { return x.blocks[i].key > after })
	if i > 0 {
		i--
	}
	return i
}

// addBlock appends a committed block and counts its records as live.
func (x *index) addBlock(key uint64, h *blockHeader) {
	bi := blockInfo{key: key, n: uint32(len(h.recs)), live: uint32(len(h.recs))}
	ids := make([]*routeState, len(h.routes))
	for i, name := range h.routes {
		ids[i] = x.route(name)
		bi.mask |= ids[i].bit()
	}
	for _, r := range h.recs {
		st := ids[r.route]
		if st.Messages == 0 {
			st.head = key
		}
		st.Messages++
		st.Bytes += r.budgetSize()
		st.lastSeq = max(st.lastSeq, r.seq)
	}
	x.blocks = append(x.blocks, bi)
}

func (x *index) removed(i int, pos int) bool {
	b := &x.blocks[i]
	if pos < 64 {
		return b.rm&(1<<uint(pos)) != 0
	}
	hi := x.rmHigh[b.key]
	w := (pos - 64) / 64
	return w < len(hi) && hi[w]&(1<<uint((pos-64)%64)) != 0
}

// remove marks record pos of block i as gone from route st's backlog; it
// reports false when it already was.
func (x *index) remove(i, pos int, st *routeState, size int64) bool {
	if x.removed(i, pos) {
		return false
	}
	b := &x.blocks[i]
	if pos < 64 {
		b.rm |= 1 << uint(pos)
	} else {
		hi := x.rmHigh[b.key]
		w := (pos - 64) / 64
		for len(hi) <= w {
			hi = append(hi, 0)
		}
		hi[w] |= 1 << uint((pos-64)%64)
		x.rmHigh[b.key] = hi
	}
	b.live--
	if b.live == 0 {
		x.dead++
		delete(x.rmHigh, b.key)
	}
	st.Messages--
	st.Bytes -= size
	return true
}

// blockRemoved is a snapshot of which records of a block are removed, taken
// under the lock so a block can be decoded outside it.
type blockRemoved struct {
	key  uint64
	rm   uint64
	high []uint64
	live uint32
}

func (x *index) snapshot(i int) blockRemoved {
	b := x.blocks[i]
	s := blockRemoved{key: b.key, rm: b.rm, live: b.live}
	if hi := x.rmHigh[b.key]; len(hi) > 0 {
		s.high = append([]uint64(nil), hi...)
	}
	return s
}

func (s *blockRemoved) removed(pos int) bool {
	if s.live == 0 {
		return true
	}
	if pos < 64 {
		return s.rm&(1<<uint(pos)) != 0
	}
	w := (pos - 64) / 64
	return w < len(s.high) && s.high[w]&(1<<uint((pos-64)%64)) != 0
}

// candidates lists up to limit blocks from position start on that may hold
// live records of st (by the route mask), with their removal snapshots.
func (x *index) candidates(st *routeState, start, limit int) (out []blockRemoved, next int) {
	bit := st.bit()
	i := start
	for ; i < len(x.blocks) && len(out) < limit; i++ {
		b := &x.blocks[i]
		if b.live == 0 || b.mask&bit == 0 {
			continue
		}
		out = append(out, x.snapshot(i))
	}
	return out, i
}

// advanceHead moves a route's head past blocks known to hold none of its
// live records.
func (x *index) advanceHead(st *routeState, key uint64) {
	if key > st.head {
		st.head = key
	}
}

// purgeable lists the keys, up to through, of blocks with nothing live.
func (x *index) purgeable(limit int, through uint64) []uint64 {
	var keys []uint64
	for _, b := range x.blocks {
		if b.key > through {
			break
		}
		if b.live == 0 {
			keys = append(keys, b.key)
			if len(keys) >= limit {
				break
			}
		}
	}
	return keys
}

// dropBlocks forgets purged blocks (they had nothing live).
func (x *index) dropBlocks(keys []uint64) {
	gone := make(map[uint64]bool, len(keys))
	for _, k := range keys {
		gone[k] = true
	}
	out := x.blocks[:0]
	for _, b := range x.blocks {
		if gone[b.key] && b.live == 0 {
			x.dead--
			continue
		}
		out = append(out, b)
	}
	// let the tail be collected
	for i := len(out); i < len(x.blocks); i++ {
		x.blocks[i] = blockInfo{}
	}
	x.blocks = out
	if cap(x.blocks) > 1024 && len(x.blocks) < cap(x.blocks)/4 {
		x.blocks = append([]blockInfo(nil), x.blocks...)
	}
}

// replace puts one block, as a repack wrote it (h: the live records of the
// adjacent blocks keys, ascending, under the first key), in their place. The
// routes' counts do not change: the records were live before and still are.
func (x *index) replace(keys []uint64, h *blockHeader) {
	i := x.find(keys[0])
	if i < 0 || i+len(keys) > len(x.blocks) {
		panic(fmt.Sprintf("buffer: index: repacked blocks from %d not found", keys[0]))
	}
	for j, k := range keys {
		ob := &x.blocks[i+j]
		if ob.key != k {
			panic(fmt.Sprintf("buffer: index: repacked block %d is not adjacent", k))
		}
		if ob.live == 0 {
			x.dead--
		}
		delete(x.rmHigh, k)
	}
	nb := blockInfo{key: h.key, n: uint32(len(h.recs)), live: uint32(len(h.recs))}
	for _, name := range h.routes {
		nb.mask |= x.route(name).bit()
	}
	x.blocks[i] = nb
	x.blocks = append(x.blocks[:i+1], x.blocks[i+len(keys):]...)
}
