package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/edgegw/gateway/internal/wire"
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
	dst = wire.AppendBytes(dst, []byte(r.KafkaTopic))
	dst = wire.AppendBytes(dst, r.Key)
	dst = wire.AppendBytes(dst, []byte(r.MQTTTopic))
	dst = wire.AppendBytes(dst, []byte(r.ClientID))
	dst = wire.AppendBytes(dst, r.Payload)
	dst = binary.AppendUvarint(dst, uint64(len(r.Headers)))
	for _, h := range r.Headers {
		dst = wire.AppendBytes(dst, []byte(h.Key))
		dst = wire.AppendBytes(dst, h.Value)
	}
	return dst
}

// unmarshal decodes a value written by marshal. The result shares b (its
// strings too, without a copy: the drain reads hundreds of thousands of
// records a second, and three string copies each were a tenth of its CPU),
// so b must be a copy that belongs to the record and is never changed.
func (r *Record) unmarshal(b []byte) error {
	str := func(p []byte) string { return unsafe.String(unsafe.SliceData(p), len(p)) }
	if len(b) < 9 || b[0] != recordVersion {
		return ErrCorruptRecord
	}
	r.Received = time.Unix(0, int64(binary.BigEndian.Uint64(b[1:9])))
	d := wire.Decoder{B: b[9:]}
	r.KafkaTopic = str(d.Bytes())
	r.Key = d.Bytes()
	r.MQTTTopic = str(d.Bytes())
	r.ClientID = str(d.Bytes())
	r.Payload = d.Bytes()
	n := d.Uvarint()
	if d.Err == nil && n > uint64(len(d.B)) {
		d.Err = ErrCorruptRecord
	}
	r.Headers = nil
	if d.Err == nil && n > 0 {
		r.Headers = make([]Header, 0, n)
	}
	for i := uint64(0); i < n && d.Err == nil; i++ {
		k := str(d.Bytes())
		v := d.Bytes()
		r.Headers = append(r.Headers, Header{Key: k, Value: v})
	}
	if errors.Is(d.Err, wire.ErrCorrupt) {
		return ErrCorruptRecord
	}
	if d.Err == nil && len(d.B) != 0 {
		d.Err = fmt.Errorf("%w: %d trailing bytes", ErrCorruptRecord, len(d.B))
	}
	return d.Err
}

// receivedOf reads only the receive time of an encoded record.
func receivedOf(b []byte) (time.Time, bool) {
	if len(b) < 9 || b[0] != recordVersion {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(b[1:9]))), true
}

func seqKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), seq)
}
