package buffer

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// migrate converts a file of the first format (a bucket per route, a key
// per record) into blocks, so a box upgraded with a week of backlog drains
// it and loses nothing. Records keep their gw.seq, Kafka topic, key and
// receive time; they move in seq order across routes, migrateChunk records
// per transaction, each transaction moving and deleting atomically, so a
// crash midway resumes where it stopped. The dedup log and sequence counter
// of that format are already what this one uses.
func (b *Buffer) migrate() error {
	old := false
	_ = b.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			old = old || strings.HasPrefix(string(name), routePrefix)
			return nil
		})
	})
	if !old {
		return nil // nothing to convert: no write transaction (see load)
	}
	for {
		moved, err := b.migrateChunk()
		if err != nil {
			return fmt.Errorf("buffer: upgrading %s: %w", b.opts.Path, err)
		}
		if moved == 0 {
			return nil
		}
		b.log.Info("buffer: upgraded records to the block format", "records", moved)
	}
}

const migrateChunk = 20000

// migrateBlock records per block written by the upgrade.
const migrateBlock = 512

func (b *Buffer) migrateChunk() (int, error) {
	moved := 0
	err := b.db.Update(func(tx *bolt.Tx) error {
		moved = 0
		type cur struct {
			route string
			bk    *bolt.Bucket
			c     *bolt.Cursor
			k, v  []byte
		}
		var curs []*cur
		var empty [][]byte
		err := tx.ForEach(func(name []byte, bk *bolt.Bucket) error {
			if !strings.HasPrefix(string(name), routePrefix) {
				return nil
			}
			c := bk.Cursor()
			k, v := c.First()
			if k == nil {
				empty = append(empty, append([]byte(nil), name...))
				return nil
			}
			curs = append(curs, &cur{route: string(name[len(routePrefix):]), bk: bk, c: c, k: k, v: v})
			return nil
		})
		if err != nil {
			return err
		}
		for _, name := range empty {
			if err := tx.DeleteBucket(name); err != nil {
				return err
			}
		}
		if len(curs) == 0 {
			return nil
		}
		blocks, err := tx.CreateBucketIfNotExists(blocksBucket)
		if err != nil {
			return err
		}
		type item struct {
			route string
			seq   uint64
			body  []byte
		}
		var batch []item
		var dels []struct {
			bk *bolt.Bucket
			k  []byte
		}
		flush := func() error {
			if len(batch) == 0 {
				return nil
			}
			h := &blockHeader{key: batch[0].seq}
			idx := map[string]int{}
			var bodies []byte
			for _, it := range batch {
				ri, ok := idx[it.route]
				if !ok {
					ri = len(h.routes)
					idx[it.route] = ri
					h.routes = append(h.routes, it.route)
				}
				h.recs = append(h.recs, blockRec{route: ri, seq: it.seq, size: len(it.body)})
				bodies = append(bodies, it.body...)
			}
			if err := putBlock(blocks, seqKey(h.key), encodeBlock(nil, h.key, b.clockMillis(), h.routes, h.recs, bodies, nil)); err != nil {
				return err
			}
			batch = batch[:0]
			return nil
		}
		for moved < migrateChunk {
			// the record with the lowest seq over all routes
			var low *cur
			for _, c := range curs {
				if c.k != nil && (low == nil || bytes.Compare(c.k, low.k) < 0) {
					low = c
				}
			}
			if low == nil {
				break
			}
			if len(low.k) != 8 {
				return fmt.Errorf("%w: route %q key of %d bytes", ErrCorruptRecord, low.route, len(low.k))
			}
			var r Record
			if err := r.unmarshal(append([]byte(nil), low.v...)); err != nil {
				return fmt.Errorf("route %q seq %d: %w", low.route, binary.BigEndian.Uint64(low.k), err)
			}
			batch = append(batch, item{low.route, binary.BigEndian.Uint64(low.k), append([]byte(nil), low.v...)})
			dels = append(dels, struct {
				bk *bolt.Bucket
				k  []byte
			}{low.bk, append([]byte(nil), low.k...)})
			moved++
			if len(batch) == migrateBlock {
				if err := flush(); err != nil {
					return err
				}
			}
			low.k, low.v = low.c.Next()
		}
		if err := flush(); err != nil {
			return err
		}
		for _, d := range dels {
			if err := d.bk.Delete(d.k); err != nil {
				return err
			}
		}
		return nil
	})
	return moved, err
}
