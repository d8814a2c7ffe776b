package receipts

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgegw/gateway/internal/boltfile"
	"github.com/edgegw/gateway/internal/failpoint"

	"github.com/edgegw/gateway/internal/wire"
)

// The outbox file (receipts.db, apart from the uplink buffer's file: bbolt
// has one writer, and the uplink's group commit must never wait on it):
//
//	outbox: device 0x00 seq(8, big endian) -> encoded receipt
//	marks:  topic 0x00 partition(4)         -> highest offset stored (8)
//	meta:   "seq"                           -> next seq (8)
//
// Keys sort by device then seq, so one device's receipts are a contiguous
// range in arrival order. The marks make a store idempotent: after a crash
// between storing and committing the Kafka offset, the records re-consumed
// from that partition are at or below its mark and are skipped, whether or
// not they were delivered (and deleted) meanwhile.
var (
	bucketOutbox = []byte("outbox")
	bucketMarks  = []byte("marks")
	bucketMeta   = []byte("meta")
	keySeq       = []byte("seq")
)

// header is one Kafka record header.
type header struct {
	Key   string
	Value []byte
}

// receipt is one stored receipt.
type receipt struct {
	Device    string
	Seq       uint64
	Stored    time.Time // when it entered the outbox; max_age counts from here
	Topic     string    // Kafka origin, for the confirmation headers
	Partition int32
	Offset    int64
	Headers   []header
	Payload   []byte
}

// ref names a receipt in the outbox.
type ref struct {
	Device string
	Seq    uint64
}

// incoming is a consumed Kafka record on its way into the outbox. Device ""
// means it names no valid device: it only advances the partition's mark.
type incoming struct {
	Device    string
	Topic     string
	Partition int32
	Offset    int64
	Headers   []header
	Payload   []byte
}

// outbox is the durable per-device store of receipts not yet acknowledged.
type outbox struct {
	path string
	dbMu sync.RWMutex // read-held to use db; reopen replaces db under the write lock
	db   *bolt.DB

	mu      sync.Mutex
	pending map[string]int // device -> receipts in the outbox
	total   int
}

func openOutbox(path string) (*outbox, error) {
	o, _, _, err := openOutboxQuarantine(path, time.Now())
	return o, err
}

// openOutboxQuarantine opens the outbox; a corrupt file is moved aside (its
// new name and the corruption are returned) and a fresh outbox started: the
// receipts it held are consumed again from Kafka only if their offsets were
// not committed yet, so they may be lost; the gateway keeps serving.
func openOutboxQuarantine(path string, now time.Time) (_ *outbox, moved string, cause, err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, "", nil, fmt.Errorf("receipts: outbox dir: %w", err)
	}
	o := &outbox{path: path}
	db, moved, cause, err := boltfile.Open(path, outboxOptions(), func(db *bolt.DB) error {
		o.pending, o.total = map[string]int{}, 0
		return o.load(db)
	}, now)
	if err != nil {
		return nil, moved, cause, fmt.Errorf("receipts: open outbox %s: %w", path, err)
	}
	o.db = db
	return o, moved, cause, nil
}

func outboxOptions() *bolt.Options {
	return &bolt.Options{
		Timeout:        2 * time.Second, // another process holding the file: fail, don't hang
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	}
}

// update runs fn in a write transaction. After a failed one, bbolt's handle
// is not to be trusted: a failed write can leave its freelist inconsistent
// (the next commit panics "page already freed", seen in the fault suite),
// and a failed fsync may have dropped pages the page cache goes on showing.
// So the file is closed and opened again from disk before the next use, as
// the uplink buffer does; the pending counts are read again with it.
func (o *outbox) update(fn func(*bolt.Tx) error) error {
	o.dbMu.RLock()
	err := o.db.Update(fn)
	o.dbMu.RUnlock()
	if err != nil {
		if rerr := o.reopen(); rerr != nil {
			return fmt.Errorf("%w (and reopening the outbox failed: %v)", err, rerr)
		}
	}
	return err
}

func (o *outbox) view(fn func(*bolt.Tx) error) error {
	o.dbMu.RLock()
	defer o.dbMu.RUnlock()
	return o.db.View(fn)
}

// reopen closes the file and opens it again; when that fails the closed
// handle stays (every use fails with "database not open" and tries again).
func (o *outbox) reopen() error {
	o.dbMu.Lock()
	defer o.dbMu.Unlock()
	_ = o.db.Close()
	db, err := bolt.Open(o.path, 0o600, outboxOptions())
	if err != nil {
		return err
	}
	o.mu.Lock()
	o.pending, o.total = map[string]int{}, 0
	err = o.load(db)
	o.mu.Unlock()
	if err != nil {
		db.Close()
		return err
	}
	o.db = db
	return nil
}

// load creates the buckets and counts the pending receipts.
func (o *outbox) load(db *bolt.DB) error {
	err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketOutbox, bucketMarks, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketOutbox).ForEach(func(k, _ []byte) error {
			dev, _, ok := splitKey(k)
			if !ok {
				return fmt.Errorf("%w: outbox key %q", boltfile.ErrCorrupt, k)
			}
			o.pending[dev]++
			o.total++
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("receipts: load outbox: %w", err)
	}
	return nil
}

func (o *outbox) close() error {
	o.dbMu.Lock()
	defer o.dbMu.Unlock()
	return o.db.Close()
}

func outboxKey(dev string, seq uint64) []byte {
	k := make([]byte, 0, len(dev)+9)
	k = append(k, dev...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, seq)
}

func splitKey(k []byte) (string, uint64, bool) {
	if len(k) < 9 || k[len(k)-9] != 0 {
		return "", 0, false
	}
	return string(k[:len(k)-9]), binary.BigEndian.Uint64(k[len(k)-8:]), true
}

func markKey(topic string, partition int32) []byte {
	k := append([]byte(topic), 0)
	return binary.BigEndian.AppendUint32(k, uint32(partition))
}

// store writes the records in one fsync'd transaction, skipping any at or
// below their partition's mark, and returns what was stored. It must return
// before the records' offsets are marked for commit.
func (o *outbox) store(in []incoming, now time.Time) ([]receipt, error) {
	var stored []receipt
	err := o.update(func(tx *bolt.Tx) error {
		stored = stored[:0] // Update does not retry, but keep the function self-contained
		ob, marks, meta := tx.Bucket(bucketOutbox), tx.Bucket(bucketMarks), tx.Bucket(bucketMeta)
		var seq uint64 = 1
		if v := meta.Get(keySeq); len(v) == 8 {
			seq = binary.BigEndian.Uint64(v)
		}
		high := map[string]int64{} // mark key -> highest offset so far in this transaction
		for _, r := range in {
			mk := string(markKey(r.Topic, r.Partition))
			mark, ok := high[mk]
			if !ok {
				mark = -1
				if v := marks.Get([]byte(mk)); len(v) == 8 {
					mark = int64(binary.BigEndian.Uint64(v))
				}
			}
			if r.Offset <= mark {
				continue // stored before a crash, or earlier in this batch
			}
			high[mk] = r.Offset
			if r.Device == "" {
				continue
			}
			rc := receipt{Device: r.Device, Seq: seq, Stored: now, Topic: r.Topic, Partition: r.Partition,
				Offset: r.Offset, Headers: r.Headers, Payload: r.Payload}
			seq++
			if err := ob.Put(outboxKey(rc.Device, rc.Seq), encodeReceipt(&rc)); err != nil {
				return err
			}
			stored = append(stored, rc)
		}
		for mk, off := range high {
			if err := marks.Put([]byte(mk), binary.BigEndian.AppendUint64(nil, uint64(off))); err != nil {
				return err
			}
		}
		failpoint.Hit(failpoint.ReceiptsOutboxWrite)
		return meta.Put(keySeq, binary.BigEndian.AppendUint64(nil, seq))
	})
	if err != nil {
		return nil, fmt.Errorf("receipts: store %d records: %w", len(in), err)
	}
	o.mu.Lock()
	for _, rc := range stored {
		o.pending[rc.Device]++
	}
	o.total += len(stored)
	o.mu.Unlock()
	return stored, nil
}

// next returns the device's oldest receipt for which skip is false.
func (o *outbox) next(dev string, skip func(seq uint64) bool) (receipt, bool, error) {
	var rc receipt
	var found bool
	err := o.view(func(tx *bolt.Tx) error {
		prefix := append([]byte(dev), 0)
		c := tx.Bucket(bucketOutbox).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			_, seq, ok := splitKey(k)
			if !ok || len(k) != len(prefix)+8 {
				continue
			}
			if skip != nil && skip(seq) {
				continue
			}
			var err error
			if rc, err = decodeReceipt(v); err != nil {
				return fmt.Errorf("outbox %s/%d: %w", dev, seq, err)
			}
			rc.Device, rc.Seq, found = dev, seq, true
			return nil
		}
		return nil
	})
	if err != nil {
		return receipt{}, false, fmt.Errorf("receipts: read outbox: %w", err)
	}
	return rc, found, nil
}

// get returns the receipts that are still in the outbox.
func (o *outbox) get(refs []ref) ([]receipt, error) {
	var out []receipt
	err := o.view(func(tx *bolt.Tx) error {
		ob := tx.Bucket(bucketOutbox)
		for _, r := range refs {
			v := ob.Get(outboxKey(r.Device, r.Seq))
			if v == nil {
				continue
			}
			rc, err := decodeReceipt(v)
			if err != nil {
				return fmt.Errorf("outbox %s/%d: %w", r.Device, r.Seq, err)
			}
			rc.Device, rc.Seq = r.Device, r.Seq
			out = append(out, rc)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("receipts: read outbox: %w", err)
	}
	return out, nil
}

// remove deletes receipts in one transaction and returns how many were
// still there.
func (o *outbox) remove(refs []ref) (int, error) {
	removed := map[string]int{}
	err := o.update(func(tx *bolt.Tx) error {
		clear(removed)
		ob := tx.Bucket(bucketOutbox)
		for _, r := range refs {
			k := outboxKey(r.Device, r.Seq)
			if ob.Get(k) == nil {
				continue
			}
			if err := ob.Delete(k); err != nil {
				return err
			}
			removed[r.Device]++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("receipts: remove %d from outbox: %w", len(refs), err)
	}
	n := 0
	o.mu.Lock()
	for dev, c := range removed {
		n += c
		if o.pending[dev] -= c; o.pending[dev] <= 0 {
			delete(o.pending, dev)
		}
	}
	o.total -= n
	o.mu.Unlock()
	return n, nil
}

// olderThan lists the receipts stored before cutoff.
func (o *outbox) olderThan(cutoff time.Time) ([]ref, error) {
	var out []ref
	err := o.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketOutbox).ForEach(func(k, v []byte) error {
			stored, err := decodeStored(v)
			if err != nil {
				return fmt.Errorf("outbox key %q: %w", k, err)
			}
			if stored.Before(cutoff) {
				dev, seq, _ := splitKey(k)
				out = append(out, ref{Device: dev, Seq: seq})
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("receipts: scan outbox: %w", err)
	}
	return out, nil
}

// pendingCount is the number of receipts waiting for one device.
func (o *outbox) pendingCount(dev string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.pending[dev]
}

// pendingAll copies the per-device counts.
func (o *outbox) pendingAll() map[string]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[string]int, len(o.pending))
	for d, n := range o.pending {
		out[d] = n
	}
	return out
}

func (o *outbox) pendingTotal() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.total
}

// Encoding of a receipt value: version, stored (unix ns), partition, offset,
// topic, headers, payload. Stored comes first so the expiry scan reads only it.
const encVersion = 1

var errCorrupt = errors.New("corrupt receipt")

func encodeReceipt(rc *receipt) []byte {
	n := 32 + len(rc.Topic) + len(rc.Payload)
	for _, h := range rc.Headers {
		n += 10 + len(h.Key) + len(h.Value)
	}
	b := make([]byte, 0, n)
	b = append(b, encVersion)
	b = binary.AppendVarint(b, rc.Stored.UnixNano())
	b = binary.AppendVarint(b, int64(rc.Partition))
	b = binary.AppendVarint(b, rc.Offset)
	b = wire.AppendBytes(b, []byte(rc.Topic))
	b = binary.AppendUvarint(b, uint64(len(rc.Headers)))
	for _, h := range rc.Headers {
		b = wire.AppendBytes(b, []byte(h.Key))
		b = wire.AppendBytes(b, h.Value)
	}
	return append(b, rc.Payload...)
}

func decodeStored(v []byte) (time.Time, error) {
	if len(v) < 2 || v[0] != encVersion {
		return time.Time{}, errCorrupt
	}
	ns, n := binary.Varint(v[1:])
	if n <= 0 {
		return time.Time{}, errCorrupt
	}
	return time.Unix(0, ns), nil
}

// decodeReceipt copies everything out of v (bbolt memory is valid only
// inside its transaction).
func decodeReceipt(v []byte) (receipt, error) {
	d := wire.Decoder{B: v}
	if len(v) == 0 || v[0] != encVersion {
		return receipt{}, errCorrupt
	}
	d.B = d.B[1:]
	var rc receipt
	rc.Stored = time.Unix(0, d.Varint())
	rc.Partition = int32(d.Varint())
	rc.Offset = d.Varint()
	rc.Topic = string(d.Bytes())
	nh := d.Uvarint()
	if d.Err == nil && nh > uint64(len(d.B)) {
		d.Err = errCorrupt
	}
	for i := uint64(0); i < nh && d.Err == nil; i++ {
		k := string(d.Bytes())
		rc.Headers = append(rc.Headers, header{Key: k, Value: bytes.Clone(d.Bytes())})
	}
	if d.Err != nil {
		return receipt{}, errCorrupt
	}
	rc.Payload = bytes.Clone(d.B)
	return rc, nil
}
