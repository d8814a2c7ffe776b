package buffer

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The dead-letter store: records Kafka refuses for good (too large, invalid)
// are moved here so the drain goes on behind them (DESIGN invariant 11).
// They live in their own bucket of the buffer file, keyed by their gw.seq
// (unique in the buffer's life), so moving the same record twice (a crash
// between storing the copy and deleting the original) stores it once. They
// do not count against the budgets: an operator lists them, re-sends them or
// drops them (`gateway deadletter`).

var deadLetterBucket = []byte("deadletter")

// DeadLetterEntry is one record set aside.
type DeadLetterEntry struct {
	ID     uint64    `json:"id"` // the record's gw.seq when it was set aside
	Route  string    `json:"route"`
	Reason string    `json:"reason"` // e.g. too_large, invalid_record
	Error  string    `json:"error,omitempty"`
	At     time.Time `json:"at"` // when it was set aside
	Record Record    `json:"-"`
	// Size is the record's payload size in bytes.
	Size int `json:"size"`
	// Topic is the Kafka topic it was meant for.
	Topic string `json:"topic"`
}

// deadLetterValue is the stored form.
type deadLetterValue struct {
	Route  string    `json:"route"`
	Reason string    `json:"reason"`
	Error  string    `json:"error,omitempty"`
	At     time.Time `json:"at"`
	Record []byte    `json:"record"` // Record.marshal
}

// DeadLetter moves recs aside with reason (and the error text detail, may be
// ""): it stores copies in the dead-letter store, then deletes the originals.
func (b *Buffer) DeadLetter(recs []Record, reason, detail string) error {
	if len(recs) == 0 {
		return nil
	}
	now := b.now()
	b.dbMu.RLock()
	err := b.db.Update(func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists(deadLetterBucket)
		if err != nil {
			return err
		}
		for i := range recs {
			v, err := json.Marshal(deadLetterValue{Route: recs[i].Route, Reason: reason, Error: detail, At: now,
				Record: recs[i].marshal(nil)})
			if err != nil {
				return err
			}
			if err := bk.Put(seqKey(recs[i].Seq), v); err != nil {
				return err
			}
		}
		return nil
	})
	b.dbMu.RUnlock()
	if err != nil {
		return fmt.Errorf("buffer: dead letter: %w", err)
	}
	refs := make([]Ref, len(recs))
	for i := range recs {
		refs[i] = Ref{Route: recs[i].Route, Seq: recs[i].Seq}
	}
	return b.Delete(refs)
}

// DeadLetters lists up to limit entries (limit <= 0: all), oldest first.
func (b *Buffer) DeadLetters(limit int) ([]DeadLetterEntry, error) {
	var out []DeadLetterEntry
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	err := b.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(deadLetterBucket)
		if bk == nil {
			return nil
		}
		return bk.ForEach(func(k, v []byte) error {
			if limit > 0 && len(out) >= limit {
				return errStop
			}
			e, err := decodeDeadLetter(k, v)
			if err != nil {
				return err
			}
			out = append(out, e)
			return nil
		})
	})
	if err != nil && !errors.Is(err, errStop) {
		return nil, fmt.Errorf("buffer: dead letters: %w", err)
	}
	return out, nil
}

var errStop = errors.New("stop")

// DeadLetterCounts counts the stored dead letters per route and reason.
func (b *Buffer) DeadLetterCounts() (map[string]map[string]uint64, error) {
	out := map[string]map[string]uint64{}
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	err := b.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(deadLetterBucket)
		if bk == nil {
			return nil
		}
		return bk.ForEach(func(k, v []byte) error {
			var dv deadLetterValue
			if err := json.Unmarshal(v, &dv); err != nil {
				return fmt.Errorf("%w: dead letter %d: %v", ErrCorruptRecord, binary.BigEndian.Uint64(k), err)
			}
			if out[dv.Route] == nil {
				out[dv.Route] = map[string]uint64{}
			}
			out[dv.Route][dv.Reason]++
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("buffer: dead letters: %w", err)
	}
	return out, nil
}

func decodeDeadLetter(k, v []byte) (DeadLetterEntry, error) {
	id := binary.BigEndian.Uint64(k)
	var dv deadLetterValue
	if err := json.Unmarshal(v, &dv); err != nil {
		return DeadLetterEntry{}, fmt.Errorf("%w: dead letter %d: %v", ErrCorruptRecord, id, err)
	}
	var r Record
	if err := r.unmarshal(dv.Record); err != nil { // dv.Record is json's own copy
		return DeadLetterEntry{}, fmt.Errorf("dead letter %d: %w", id, err)
	}
	r.Seq, r.Route = id, dv.Route
	return DeadLetterEntry{ID: id, Route: dv.Route, Reason: dv.Reason, Error: dv.Error, At: dv.At, Record: r,
		Size: len(r.Payload), Topic: r.KafkaTopic}, nil
}

// ResendDeadLetters appends the named dead letters again through the normal
// Append path (budgets apply), with their original topic, key, headers and
// receive time, and removes each from the store once its append committed.
// They get new gw.seq values: to Kafka they are new records of this epoch.
// It returns how many were re-sent; an unknown id is an error.
func (b *Buffer) ResendDeadLetters(ids []uint64) (int, error) {
	entries, err := b.deadLettersByID(ids)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		rec := e.Record
		rec.Seq = 0
		if _, err := b.AppendWait(rec); err != nil {
			return n, fmt.Errorf("buffer: resend dead letter %d: %w", e.ID, err)
		}
		// A crash here leaves the entry stored as well: a later resend would
		// send it twice, which at-least-once consumers drop by content only.
		if _, err := b.DropDeadLetters([]uint64{e.ID}); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// DropDeadLetters deletes the named dead letters for good and returns how
// many there were.
func (b *Buffer) DropDeadLetters(ids []uint64) (int, error) {
	n := 0
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	err := b.db.Update(func(tx *bolt.Tx) error {
		n = 0
		bk := tx.Bucket(deadLetterBucket)
		if bk == nil {
			return nil
		}
		for _, id := range ids {
			if bk.Get(seqKey(id)) == nil {
				continue
			}
			if err := bk.Delete(seqKey(id)); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("buffer: drop dead letters: %w", err)
	}
	return n, nil
}

func (b *Buffer) deadLettersByID(ids []uint64) ([]DeadLetterEntry, error) {
	var out []DeadLetterEntry
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	err := b.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(deadLetterBucket)
		for _, id := range ids {
			var v []byte
			if bk != nil {
				v = bk.Get(seqKey(id))
			}
			if v == nil {
				return fmt.Errorf("no dead letter with id %d", id)
			}
			e, err := decodeDeadLetter(seqKey(id), v)
			if err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("buffer: %w", err)
	}
	return out, nil
}
