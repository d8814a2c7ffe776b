package broker

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// rawClient speaks just enough MQTT (3.1.1 and 5) to control what the
// libraries hide: DUP flags, packet ids, oversized frames, reason codes.
type rawClient struct {
	t       testing.TB
	conn    net.Conn
	r       *bufio.Reader
	version byte

	lastConnack []byte // the CONNACK body rawConnect read
}

func dialRaw(t testing.TB, addr string, version byte, clientID string, clean bool) *rawClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &rawClient{t: t, conn: conn, r: bufio.NewReader(conn), version: version}
	var body []byte
	body = appendStr(body, "MQTT")
	body = append(body, version)
	flags := byte(0)
	if clean {
		flags |= 0x02
	}
	body = append(body, flags, 0, 60) // keepalive 60s
	if version == 5 {
		body = append(body, 0) // no properties
	}
	body = appendStr(body, clientID)
	c.send(0x10, body)
	typ, ack := c.read()
	if typ != 2 {
		t.Fatalf("expected CONNACK, got type %d", typ)
	}
	if len(ack) < 2 || ack[1] != 0 {
		t.Fatalf("connection refused: %v", ack)
	}
	return c
}

func appendStr(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func appendLen(b []byte, n int) []byte {
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

func (c *rawClient) send(header byte, body []byte) {
	pkt := appendLen([]byte{header}, len(body))
	pkt = append(pkt, body...)
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.conn.Write(pkt); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawClient) publish(qos byte, pid uint16, dup bool, topic string, payload []byte) {
	header := byte(0x30) | qos<<1
	if dup {
		header |= 0x08
	}
	var body []byte
	body = appendStr(body, topic)
	if qos > 0 {
		body = binary.BigEndian.AppendUint16(body, pid)
	}
	if c.version == 5 {
		body = append(body, 0)
	}
	body = append(body, payload...)
	c.send(header, body)
}

// read returns the next packet's type and body, failing the test after 10s.
func (c *rawClient) read() (byte, []byte) {
	typ, body, err := c.tryRead(10 * time.Second)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return typ, body
}

func (c *rawClient) tryRead(timeout time.Duration) (byte, []byte, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
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

// expectPuback reads until a PUBACK and returns its packet id and reason code
// (0 when absent, as in 3.1.1).
func (c *rawClient) expectPuback() (uint16, byte) {
	for {
		typ, body := c.read()
		if typ == 3 || typ == 9 {
			continue // publishes to us, suback
		}
		if typ != 4 {
			c.t.Fatalf("expected PUBACK, got type %d body %v", typ, body)
		}
		pid := binary.BigEndian.Uint16(body)
		if len(body) > 2 {
			return pid, body[2]
		}
		return pid, 0
	}
}

// expectClosed waits for the server to close the connection and returns the
// DISCONNECT reason code if one came first (-1 if none).
func (c *rawClient) expectClosed() int {
	code := -1
	for {
		typ, body, err := c.tryRead(10 * time.Second)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				c.t.Fatalf("connection still open after 10s")
			}
			return code
		}
		if typ == 14 {
			code = 0
			if len(body) > 0 {
				code = int(body[0])
			}
		}
	}
}

func (c *rawClient) String() string { return fmt.Sprintf("raw v%d %s", c.version, c.conn.LocalAddr()) }
