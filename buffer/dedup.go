package buffer

import (
	"encoding/binary"
	"hash/fnv"

	bolt "go.etcd.io/bbolt"
)

// The dedup log remembers, per client, the packet ids of recent QoS>0
// publishes with a hash of topic and payload, so a DUP retransmission of a
// stored message (its PUBACK was lost, or the gateway crashed before sending
// it) is acknowledged again without storing a second copy. It is appended in
// sequence order (cheap for bbolt) and mirrored in memory per client.

const (
	dedupPerClient = 128     // remembered packet ids per client: twice the usual in-flight window
	dedupLogKeep   = 1 << 18 // log entries kept on disk and reloaded at open
)

type dedupEntry struct {
	client string
	pid    uint16
	hash   uint64
	seq    uint64
}

func (e dedupEntry) encode() []byte {
	v := make([]byte, 0, 10+len(e.client))
	v = binary.BigEndian.AppendUint16(v, e.pid)
	v = binary.BigEndian.AppendUint64(v, e.hash)
	return append(v, e.client...)
}

func decodeDedup(k, v []byte) (dedupEntry, bool) {
	if len(k) != 8 || len(v) < 10 {
		return dedupEntry{}, false
	}
	return dedupEntry{
		pid:    binary.BigEndian.Uint16(v),
		hash:   binary.BigEndian.Uint64(v[2:]),
		client: string(v[10:]),
		seq:    binary.BigEndian.Uint64(k),
	}, true
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

// load reads the tail of the on-disk log into memory.
func (d *dedupIndex) load(bk *bolt.Bucket) {
	n := bk.Stats().KeyN
	skip := n - dedupLogKeep
	c := bk.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if skip > 0 {
			skip--
			continue
		}
		if e, ok := decodeDedup(k, v); ok {
			d.add(e)
		}
	}
	d.logN = n
}

func (d *dedupIndex) needsPrune() bool { return d.logN > 2*dedupLogKeep }

// pruneDedup trims the on-disk log to its newest dedupLogKeep entries.
func (b *Buffer) pruneDedup() {
	var removed int
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	err := b.db.Update(func(tx *bolt.Tx) error {
		removed = 0
		bk := tx.Bucket(dedupBucket)
		n := bk.Stats().KeyN
		// Collect first: deleting under a moving cursor skips keys.
		var keys [][]byte
		c := bk.Cursor()
		for k, _ := c.First(); k != nil && n-len(keys) > dedupLogKeep; k, _ = c.Next() {
			keys = append(keys, append([]byte(nil), k...))
		}
		for _, k := range keys {
			if err := bk.Delete(k); err != nil {
				return err
			}
		}
		removed = len(keys)
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
