package buffer

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"sort"

	bolt "go.etcd.io/bbolt"

	"github.com/edgegw/gateway/internal/wire"
)

// The dedup log remembers, per client, the packet ids of recent QoS>0
// publishes with a hash of topic and payload, so a DUP retransmission of a
// stored message (its PUBACK was lost, or the gateway crashed before sending
// it) is acknowledged again without storing a second copy. It is appended in
// sequence order (cheap for bbolt) and mirrored in memory per client.

// remembered packet ids per client: twice the usual in-flight window
const dedupPerClient = 128

// dedupLogKeep is how many log entries are kept on disk and reloaded at
// open (a variable so tests can exercise pruning).
var dedupLogKeep = 1 << 18

type dedupEntry struct {
	client string
	pid    uint16
	hash   uint64
	seq    uint64
}

// encodeDedupBatch stores one commit's entries as one value: a count, then
// per entry the packet id, hash, seq and client id. One bbolt insert per
// commit instead of one per message.
func encodeDedupBatch(entries []dedupEntry) []byte {
	v := binary.AppendUvarint(nil, uint64(len(entries)))
	for _, e := range entries {
		v = binary.BigEndian.AppendUint16(v, e.pid)
		v = binary.BigEndian.AppendUint64(v, e.hash)
		v = binary.AppendUvarint(v, e.seq)
		v = wire.AppendBytes(v, []byte(e.client))
	}
	return v
}

func decodeDedupBatch(v []byte) ([]dedupEntry, error) {
	d := wire.Decoder{B: v}
	n := d.Uvarint()
	if d.Err != nil || n > uint64(len(v)) {
		return nil, ErrCorruptRecord
	}
	out := make([]dedupEntry, 0, n)
	for i := uint64(0); i < n && d.Err == nil; i++ {
		if len(d.B) < 10 {
			return nil, ErrCorruptRecord
		}
		e := dedupEntry{pid: binary.BigEndian.Uint16(d.B), hash: binary.BigEndian.Uint64(d.B[2:])}
		d.B = d.B[10:]
		e.seq = d.Uvarint()
		e.client = string(d.Bytes())
		out = append(out, e)
	}
	if d.Err != nil {
		return nil, ErrCorruptRecord
	}
	return out, nil
}

func dedupHash(topic string, payload []byte) uint64 {
	h := fnv.New64a()
	h.Write([]byte(topic))
	h.Write([]byte{0})
	h.Write(payload)
	return h.Sum64()
}

type dedupSlot struct {
	pid   uint16
	hash  uint64
	seq   uint64
	acked uint64 // the connection its PUBACK was sent on by this process; 0: not sent
}

// dedupRing is one client's most recent packet ids.
type dedupRing struct {
	slots [dedupPerClient]dedupSlot
	n     int // entries written so far; next slot is n % len
}

type dedupIndex struct {
	clients     map[string]*dedupRing
	logN        int          // entries in the on-disk log
	pendingLoad []dedupEntry // the live blocks' entries, while opening
}

func newDedupIndex() *dedupIndex { return &dedupIndex{clients: map[string]*dedupRing{}} }

func (d *dedupIndex) add(e dedupEntry) {
	r := d.clients[e.client]
	if r == nil {
		r = &dedupRing{}
		d.clients[e.client] = r
	}
	r.slots[r.n%dedupPerClient] = dedupSlot{pid: e.pid, hash: e.hash, seq: e.seq}
	r.n++
	d.logN++
}

// lookup finds the most recent entry for the packet id; a match needs the
// same topic and payload too, since ids are reused after acknowledgement.
// ackedOn is the connection this process sent the entry's PUBACK on (0: not
// sent, or sent before a restart).
func (d *dedupIndex) lookup(client string, pid uint16, hash uint64) (seq uint64, ok bool, ackedOn uint64) {
	r := d.clients[client]
	if r == nil {
		return 0, false, 0
	}
	count := min(r.n, dedupPerClient)
	for i := 1; i <= count; i++ {
		s := r.slots[(r.n-i)%dedupPerClient]
		if s.pid == pid {
			return s.seq, s.hash == hash, s.acked
		}
	}
	return 0, false, 0
}

// acknowledged marks the entry of seq as PUBACKed on connection conn.
func (d *dedupIndex) acknowledged(client string, pid uint16, seq, conn uint64) {
	r := d.clients[client]
	if r == nil {
		return
	}
	count := min(r.n, dedupPerClient)
	for i := 1; i <= count; i++ {
		s := &r.slots[(r.n-i)%dedupPerClient]
		if s.pid == pid {
			if s.seq == seq {
				s.acked = conn
			}
			return
		}
	}
}

func lookupBatch(batch []dedupEntry, k DedupKey, hash uint64) (uint64, bool) {
	for i := len(batch) - 1; i >= 0; i-- {
		e := batch[i]
		if e.client == k.ClientID && e.pid == k.PacketID {
			return e.seq, e.hash == hash
		}
	}
	return 0, false
}

// loadDedupLog reads the newest dedupLogKeep entries of the on-disk log
// (the dedup entries of purged blocks), oldest first.
func loadDedupLog(bk *bolt.Bucket) ([]dedupEntry, error) {
	var batches [][]dedupEntry
	total := 0
	c := bk.Cursor()
	for k, v := c.Last(); k != nil && total < dedupLogKeep; k, v = c.Prev() {
		if bytes.Equal(k, firstReleaseGuardKey) {
			continue
		}
		entries, err := decodeDedupBatch(v)
		if err != nil {
			return nil, fmt.Errorf("buffer: dedup log: %w", err)
		}
		batches = append(batches, entries)
		total += len(entries)
	}
	out := make([]dedupEntry, 0, total)
	for i := len(batches) - 1; i >= 0; i-- {
		out = append(out, batches[i]...)
	}
	return out, nil
}

// load fills the index from the log and the live blocks' entries, in seq
// order so each client's ring ends with its newest.
func (d *dedupIndex) load(logged, recent []dedupEntry) {
	all := append(logged, recent...)
	sort.Slice(all, func(i, j int) bool { return all[i].seq < all[j].seq })
	for _, e := range all {
		d.add(e)
	}
	d.logN = len(logged)
}

// pruneDedupLog trims the on-disk log to about its newest dedupLogKeep
// entries once it holds a quarter more, and reports how many it removed.
// (At twice, the log swung between 6.5 and 13 MB at 500 msg/s, and its peak
// added to an outage's backlog set how large buffer.db grew.)
func pruneDedupLog(bk *bolt.Bucket) (int, error) {
	kept, total := 0, 0
	c := bk.Cursor()
	for k, v := c.Last(); k != nil; k, v = c.Prev() {
		total += dedupCount(k, v)
	}
	if total <= dedupLogKeep+dedupLogKeep/4 {
		return 0, nil
	}
	// walk back from the newest until dedupLogKeep entries are kept
	k, v := c.Last()
	for ; k != nil && kept < dedupLogKeep; k, v = c.Prev() {
		kept += dedupCount(k, v)
	}
	// collect first: deleting under a moving cursor skips keys
	var keys [][]byte
	removed := 0
	for ; k != nil; k, v = c.Prev() {
		if bytes.Equal(k, firstReleaseGuardKey) {
			continue // sorts last, so never here; kept whatever happens
		}
		keys = append(keys, append([]byte(nil), k...))
		removed += dedupCount(k, v)
	}
	for _, k := range keys {
		if err := bk.Delete(k); err != nil {
			return 0, err
		}
	}
	return removed, nil
}

func dedupCount(key, v []byte) int {
	if bytes.Equal(key, firstReleaseGuardKey) {
		return 0
	}
	n, k := binary.Uvarint(v)
	if k <= 0 {
		return 0
	}
	return int(n)
}
