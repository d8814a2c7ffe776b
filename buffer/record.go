package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Record is one buffered uplink message. Its Kafka topic and key are decided
// at ingest and never change, whatever later config reloads say.
type Record struct {
	Seq        uint64 // gw.seq: unique and increasing per gateway, assigned by Append
	Route      string // the route that matched at ingest
	Received   time.Time
	KafkaTopic string
	Key        []byte
	MQTTTopic  string
	ClientID   string
	Headers    []Header // extra Kafka headers: MQTT 5 user properties, response topic, correlation data
	Payload    []byte
}

// Header is one Kafka record header.
type Header struct {
	Key   string
	Value []byte
}

const recordVersion = 1

// ErrCorruptRecord is returned when a stored value cannot be decoded.
var ErrCorruptRecord = errors.New("buffer: corrupt record")

// size is the encoded length, used for budgets and batching.
func (r *Record) size() int {
	n := 1 + 8 + 5*binary.MaxVarintLen32 + len(r.KafkaTopic) + len(r.Key) + len(r.MQTTTopic) + len(r.ClientID) + len(r.Payload)
	for _, h := range r.Headers {
		n += 2*binary.MaxVarintLen32 + len(h.Key) + len(h.Value)
	}
	return n
}

// marshal encodes everything but Seq and Route, which are the bucket and key.
// Layout: version, received (unix ns, 8 bytes), then length-prefixed kafka
// topic, key, mqtt topic, client id, payload, header count and pairs.
func (r *Record) marshal(dst []byte) []byte {
	dst = append(dst, recordVersion)
	dst = binary.BigEndian.AppendUint64(dst, uint64(r.Received.UnixNano()))
	dst = appendBytes(dst, []byte(r.KafkaTopic))
	dst = appendBytes(dst, r.Key)
	dst = appendBytes(dst, []byte(r.MQTTTopic))
	dst = appendBytes(dst, []byte(r.ClientID))
	dst = appendBytes(dst, r.Payload)
	dst = binary.AppendUvarint(dst, uint64(len(r.Headers)))
	for _, h := range r.Headers {
		dst = appendBytes(dst, []byte(h.Key))
		dst = appendBytes(dst, h.Value)
	}
	return dst
}

func appendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

// unmarshal decodes a value written by marshal. The result copies nothing it
// does not need to: callers must copy data out of a bbolt transaction first.
func (r *Record) unmarshal(b []byte) error {
	if len(b) < 9 || b[0] != recordVersion {
		return ErrCorruptRecord
	}
	r.Received = time.Unix(0, int64(binary.BigEndian.Uint64(b[1:9])))
	d := decoder{b: b[9:]}
	r.KafkaTopic = string(d.bytes())
	r.Key = d.bytes()
	r.MQTTTopic = string(d.bytes())
	r.ClientID = string(d.bytes())
	r.Payload = d.bytes()
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b)) {
		d.err = ErrCorruptRecord
	}
	r.Headers = nil
	for i := uint64(0); i < n && d.err == nil; i++ {
		k := string(d.bytes())
		v := d.bytes()
		r.Headers = append(r.Headers, Header{Key: k, Value: v})
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", ErrCorruptRecord, len(d.b))
	}
	return d.err
}

// receivedOf reads only the receive time of an encoded record.
func receivedOf(b []byte) (time.Time, bool) {
	if len(b) < 9 || b[0] != recordVersion {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(b[1:9]))), true
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = ErrCorruptRecord
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = ErrCorruptRecord
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func seqKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), seq)
}
