package wire

import (
	"encoding/binary"
	"errors"
	"testing"
)

func TestRoundTripAndCorruption(t *testing.T) {
	b := binary.AppendVarint(nil, -42)
	b = binary.AppendUvarint(b, 7)
	b = AppendBytes(b, []byte("abc"))
	b = AppendBytes(b, nil)
	d := Decoder{B: b}
	if d.Varint() != -42 || d.Uvarint() != 7 || string(d.Bytes()) != "abc" || len(d.Bytes()) != 0 || d.Err != nil || len(d.B) != 0 {
		t.Fatalf("round trip failed: %v", d.Err)
	}

	// a length longer than what is left is corrupt, and the error sticks
	d = Decoder{B: AppendBytes(nil, []byte("abcdef"))[:4]}
	if d.Bytes() != nil || !errors.Is(d.Err, ErrCorrupt) || d.Uvarint() != 0 {
		t.Fatal("truncated value not reported")
	}
	d = Decoder{B: []byte{0x80}} // varint cut short
	if d.Uvarint(); !errors.Is(d.Err, ErrCorrupt) {
		t.Fatal("cut varint not reported")
	}

	// what Bytes returns cannot grow into the bytes after it
	d = Decoder{B: append(AppendBytes(nil, []byte("ab")), 'z')}
	v := d.Bytes()
	_ = append(v, 'X')
	if d.B[0] != 'z' {
		t.Fatal("appending to a result overwrote the next byte")
	}
}
