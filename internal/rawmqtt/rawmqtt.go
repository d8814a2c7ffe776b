// Package rawmqtt speaks just enough MQTT (3.1.1 and 5), byte by byte, to
// send what client libraries refuse to: malformed packets, zero receive
// maxima, deep filters, floods. It is for tests and benchmarks that play a
// hostile terminal against a real gateway; nothing in the product uses it.
package rawmqtt

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Conn is one MQTT connection.
type Conn struct {
	Net     net.Conn
	r       *bufio.Reader
	Version byte
	// Connack is the CONNACK body Connect read.
	Connack []byte
}

// Options of a CONNECT.
type Options struct {
	Version    byte // 4 (3.1.1) or 5; default 5
	ClientID   string
	Clean      bool
	Username   string
	Password   string
	Keepalive  uint16 // seconds; default 60
	Properties []byte // MQTT 5 CONNECT properties, encoded (see Prop*)
	Will       *Will
	TLS        *tls.Config // set: dial TLS
	Timeout    time.Duration
}

// Will is a CONNECT's will message.
type Will struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
}

// Dial opens the connection without sending anything.
func Dial(addr string, o Options) (*Conn, error) {
	if o.Version == 0 {
		o.Version = 5
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	d := &net.Dialer{Timeout: o.Timeout}
	var c net.Conn
	var err error
	if o.TLS != nil {
		c, err = tls.DialWithDialer(d, "tcp", addr, o.TLS)
	} else {
		c, err = d.Dial("tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	return &Conn{Net: c, r: bufio.NewReader(c), Version: o.Version}, nil
}

// ErrRefused is returned by Connect when CONNACK carries a non-zero code.
var ErrRefused = errors.New("rawmqtt: connection refused")

// Connect dials, sends CONNECT and reads CONNACK. A refusal returns the
// connection too (its Connack says why) with an error wrapping ErrRefused.
func Connect(addr string, o Options) (*Conn, error) {
	c, err := Dial(addr, o)
	if err != nil {
		return nil, err
	}
	if err := c.Send(0x10, ConnectBody(o)); err != nil {
		c.Close()
		return nil, err
	}
	typ, body, err := c.Read(o.timeout())
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("rawmqtt: no CONNACK: %w", err)
	}
	if typ != 2 || len(body) < 2 {
		c.Close()
		return nil, fmt.Errorf("rawmqtt: packet type %d instead of CONNACK", typ)
	}
	c.Connack = body
	if body[1] != 0 {
		return c, fmt.Errorf("%w: code %#x", ErrRefused, body[1])
	}
	return c, nil
}

func (o Options) timeout() time.Duration {
	if o.Timeout == 0 {
		return 10 * time.Second
	}
	return o.Timeout
}

// ConnectBody encodes a CONNECT's variable header and payload.
func ConnectBody(o Options) []byte {
	if o.Version == 0 {
		o.Version = 5
	}
	if o.Keepalive == 0 {
		o.Keepalive = 60
	}
	var b []byte
	b = AppendString(b, "MQTT")
	flags := byte(0)
	if o.Clean {
		flags |= 0x02
	}
	if o.Will != nil {
		flags |= 0x04 | o.Will.QoS<<3
		if o.Will.Retain {
			flags |= 0x20
		}
	}
	if o.Password != "" {
		flags |= 0x40
	}
	if o.Username != "" {
		flags |= 0x80
	}
	b = append(b, o.Version, flags)
	b = binary.BigEndian.AppendUint16(b, o.Keepalive)
	if o.Version == 5 {
		b = AppendProperties(b, o.Properties)
	}
	b = AppendString(b, o.ClientID)
	if o.Will != nil {
		if o.Version == 5 {
			b = append(b, 0) // no will properties
		}
		b = AppendString(b, o.Will.Topic)
		b = binary.BigEndian.AppendUint16(b, uint16(len(o.Will.Payload)))
		b = append(b, o.Will.Payload...)
	}
	if o.Username != "" {
		b = AppendString(b, o.Username)
	}
	if o.Password != "" {
		b = AppendString(b, o.Password)
	}
	return b
}

// Close closes the connection.
func (c *Conn) Close() error { return c.Net.Close() }

// Send writes one packet: the first header byte and the body.
func (c *Conn) Send(header byte, body []byte) error {
	pkt := AppendLength([]byte{header}, len(body))
	pkt = append(pkt, body...)
	_ = c.Net.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := c.Net.Write(pkt)
	return err
}

// Publish sends a PUBLISH; props are MQTT 5 properties (ignored for 3.1.1).
func (c *Conn) Publish(qos byte, retain bool, id uint16, topic string, props, payload []byte) error {
	h := byte(0x30) | qos<<1
	if retain {
		h |= 1
	}
	var b []byte
	b = AppendString(b, topic)
	if qos > 0 {
		b = binary.BigEndian.AppendUint16(b, id)
	}
	if c.Version == 5 {
		b = AppendProperties(b, props)
	}
	b = append(b, payload...)
	return c.Send(h, b)
}

// Subscribe sends a SUBSCRIBE for filters, each with options byte opts
// (the QoS, for 3.1.1).
func (c *Conn) Subscribe(id uint16, opts byte, filters ...string) error {
	b := binary.BigEndian.AppendUint16(nil, id)
	if c.Version == 5 {
		b = append(b, 0)
	}
	for _, f := range filters {
		b = AppendString(b, f)
		b = append(b, opts)
	}
	return c.Send(0x82, b)
}

// Read returns the next packet's type and body.
func (c *Conn) Read(timeout time.Duration) (byte, []byte, error) {
	_ = c.Net.SetReadDeadline(time.Now().Add(timeout))
	h, err := c.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mult := 0, 1
	for i := 0; i < 4; i++ {
		d, err := c.r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(d&127) * mult
		mult *= 128
		if d&128 == 0 {
			break
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return 0, nil, err
	}
	return h >> 4, body, nil
}

// ReadType reads packets until one of type typ, skipping others (e.g.
// publishes to this client). It fails when the connection ends first.
func (c *Conn) ReadType(typ byte, timeout time.Duration) ([]byte, error) {
	deadline := time.Now().Add(timeout)
	for {
		t, body, err := c.Read(time.Until(deadline))
		if err != nil {
			return nil, err
		}
		if t == typ {
			return body, nil
		}
		if t == 14 {
			return body, fmt.Errorf("rawmqtt: DISCONNECT %x while waiting for packet type %d", body, typ)
		}
	}
}

// Closed waits up to timeout for the server to end the connection. It
// returns the reason code of a DISCONNECT that came first (-1: none) and
// whether the connection ended.
func (c *Conn) Closed(timeout time.Duration) (code int, ended bool) {
	code = -1
	deadline := time.Now().Add(timeout)
	for {
		t, body, err := c.Read(time.Until(deadline))
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return code, false
			}
			return code, true
		}
		if t == 14 {
			code = 0
			if len(body) > 0 {
				code = int(body[0])
			}
		}
	}
}

// AppendString appends an MQTT UTF-8 string (2-byte length, bytes).
func AppendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// AppendLength appends an MQTT variable byte integer.
func AppendLength(b []byte, n int) []byte {
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 128
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

// AppendProperties appends an MQTT 5 property block: its length, then props.
func AppendProperties(b, props []byte) []byte {
	b = AppendLength(b, len(props))
	return append(b, props...)
}

// PropUint16 encodes a two-byte-integer property (e.g. 0x21 receive maximum).
func PropUint16(id byte, v uint16) []byte {
	return binary.BigEndian.AppendUint16([]byte{id}, v)
}

// PropUint32 encodes a four-byte-integer property (e.g. 0x27 maximum packet
// size, 0x11 session expiry interval).
func PropUint32(id byte, v uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{id}, v)
}

// PropUser encodes a user property.
func PropUser(k, v string) []byte {
	return AppendString(AppendString([]byte{0x26}, k), v)
}
