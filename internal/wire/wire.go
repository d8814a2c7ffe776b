// Package wire is the small length-prefixed binary encoding of the values the
// gateway keeps in bbolt (uplink records, the dedup log, the receipts
// outbox): varints and byte strings prefixed with their length.
package wire

import (
	"encoding/binary"
	"errors"
)

// ErrCorrupt is set by a Decoder that ran out of bytes or met a bad varint.
var ErrCorrupt = errors.New("wire: corrupt value")

// AppendBytes appends b prefixed with its length.
func AppendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

// Decoder reads a value written with AppendBytes and binary.Append(U)varint.
// After the first error every read returns zero and Err stays set, so a
// caller checks Err once at the end.
type Decoder struct {
	B   []byte // what is left to read
	Err error
}

// Uvarint reads an unsigned varint.
func (d *Decoder) Uvarint() uint64 {
	if d.Err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.B)
	if n <= 0 {
		d.Err = ErrCorrupt
		return 0
	}
	d.B = d.B[n:]
	return v
}

// Varint reads a signed varint.
func (d *Decoder) Varint() int64 {
	if d.Err != nil {
		return 0
	}
	v, n := binary.Varint(d.B)
	if n <= 0 {
		d.Err = ErrCorrupt
		return 0
	}
	d.B = d.B[n:]
	return v
}

// Bytes reads a length-prefixed byte string. The result aliases the input
// (capacity capped, so appending to it cannot overwrite what follows).
func (d *Decoder) Bytes() []byte {
	n := d.Uvarint()
	if d.Err != nil {
		return nil
	}
	if n > uint64(len(d.B)) {
		d.Err = ErrCorrupt
		return nil
	}
	v := d.B[:n:n]
	d.B = d.B[n:]
	return v
}
