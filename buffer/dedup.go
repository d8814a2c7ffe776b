package buffer

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"

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
	pid  uint16
	hash uint64
	seq  uint64
}

// dedupRing is one client's most recent packet ids.
type dedupRing struct {
	slots [dedupPerClient]dedupSlot
	n     int // entries written so far; next slot is n % len
}

type dedupIndex struct {
	clients map[string]*dedupRing
	logN    int // entries in the on-disk log
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
func (d *dedupIndex) lookup(client string, pid uint16, hash uint64) (uint64, bool) {
	r := d.clients[client]
	if r == nil {
		return 0, false
	}
	count := min(r.n, dedupPerClient)
	for i := 1; i <= count; i++ {
		s := r.slots[(r.n-i)%dedupPerClient]
		if s.pid == pid {
			return s.seq, s.hash == hash
		}
	}
	return 0, false
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

// load reads the newest dedupLogKeep entries of the on-disk log into memory.
func (d *dedupIndex) load(bk *bolt.Bucket) error {
	var batches [][]dedupEntry
	total := 0
	c := bk.Cursor()
	for k, v := c.Last(); k != nil && total < dedupLogKeep; k, v = c.Prev() {
		entries, err := decodeDedupBatch(v)
		if err != nil {
			return fmt.Errorf("buffer: dedup log: %w", err)
		}
		batches = append(batches, entries)
		total += len(entries)
	}
	for i := len(batches) - 1; i >= 0; i-- { // oldest first, so rings end newest
		for _, e := range batches[i] {
			d.add(e)
		}
	}
	d.logN = total
	return nil
}

func (d *dedupIndex) needsPrune() bool { return d.logN > 2*dedupLogKeep }

// pruneDedup trims the on-disk log to about its newest dedupLogKeep entries.
func (b *Buffer) pruneDedup() {
	var removed int
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	err := b.db.Update(func(tx *bolt.Tx) error {
		removed = 0
		bk := tx.Bucket(dedupBucket)
		// walk back from the newest until dedupLogKeep entries are kept
		kept := 0
		c := bk.Cursor()
		k, v := c.Last()
		for ; k != nil && kept < dedupLogKeep; k, v = c.Prev() {
			kept += dedupCount(v)
		}
		// collect first: deleting under a moving cursor skips keys
		var keys [][]byte
		for ; k != nil; k, v = c.Prev() {
			keys = append(keys, append([]byte(nil), k...))
			removed += dedupCount(v)
		}
		for _, k := range keys {
			if err := bk.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.log.Warn("buffer: pruning the dedup log failed", "error", err)
		return
	}
	b.mu.Lock()
	b.dedup.logN -= removed
	b.mu.Unlock()
}

func dedupCount(v []byte) int {
	n, k := binary.Uvarint(v)
	if k <= 0 {
		return 0
	}
	return int(n)
}
