package broker

import (
	"encoding/binary"
	"sync"
	"testing"

	"github.com/edgegw/gateway/buffer"
)

// events records downlink reports and, like the receipts component, sends
// the message again when the client is ready and nothing is in flight.
type events struct {
	b    *Broker
	msg  DownlinkMessage
	mu   sync.Mutex
	acks []uint64
}

func (e *events) DownlinkReady(clientID string) {
	e.mu.Lock()
	acked := len(e.acks) > 0
	e.mu.Unlock()
	if _, busy := e.b.DownlinkInflight(clientID); !busy && !acked {
		go func() { _, _ = e.b.SendDownlink(clientID, 1, e.msg) }()
	}
}

func (e *events) DownlinkAcked(clientID string, token uint64) {
	e.mu.Lock()
	e.acks = append(e.acks, token)
	e.mu.Unlock()
}

func (e *events) acked() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.acks)
}

// subscribe subscribes, fails the test if the SUBACK refuses, and returns
// the publishes that came before the SUBACK (the downlink may be sent from
// the subscribe hook).
func (c *rawClient) subscribe(pid uint16, filter string, qos byte) [][]byte {
	body := binary.BigEndian.AppendUint16(nil, pid)
	if c.version == 5 {
		body = append(body, 0) // no properties
	}
	body = appendStr(body, filter)
	body = append(body, qos)
	c.send(0x82, body)
	var early [][]byte
	for {
		typ, b := c.read()
		switch typ {
		case 9:
			if b[len(b)-1] >= 0x80 {
				c.t.Fatalf("subscribe %s refused: %v", filter, b)
			}
			return early
		case 3:
			early = append(early, b)
		}
	}
}

// readPublish returns the packet id and payload of an early publish, or of
// the next one read (3.1.1, QoS 1).
func (c *rawClient) readPublish(early [][]byte) (uint16, string) {
	body := []byte(nil)
	if len(early) > 0 {
		body = early[0]
	}
	for body == nil {
		typ, b := c.read()
		if typ == 3 {
			body = b
		}
	}
	n := int(binary.BigEndian.Uint16(body))
	pid := binary.BigEndian.Uint16(body[2+n:])
	return pid, string(body[4+n:])
}

// The terminal publishes with the very packet id its receipt is in flight
// under (each direction has its own id space in MQTT, mochi keeps one map):
// the receipt must still be acknowledged, not stall for as long as the
// terminal stays connected.
func TestDownlinkPacketIDCollision(t *testing.T) {
	e := start(t, "", "", buffer.Options{})
	ev := &events{b: e.brk, msg: DownlinkMessage{Topic: "terminals/c1/receipts", Payload: []byte("receipt-1"), QoS: 1}}
	e.brk.SetDownlinkEvents(ev)
	c := dialRaw(t, e.addr, 4, "c1", true)
	early := c.subscribe(1, "terminals/c1/receipts", 1)
	pid, payload := c.readPublish(early)
	if payload != "receipt-1" {
		t.Fatalf("got %q", payload)
	}
	// The terminal's own publish with the same id, then its PUBACK of the
	// receipt; whatever is sent to it meanwhile is read and acknowledged.
	var mu sync.Mutex
	pubacked := false
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev.acked() == 0 {
			typ, body, err := c.tryRead(500e6)
			if err != nil {
				continue
			}
			switch typ {
			case 4:
				if binary.BigEndian.Uint16(body) == pid {
					mu.Lock()
					pubacked = true
					mu.Unlock()
				}
			case 3:
				n := int(binary.BigEndian.Uint16(body))
				again := binary.BigEndian.Uint16(body[2+n:])
				if again == pid {
					t.Errorf("re-sent under the colliding id %d", pid)
				}
				c.send(0x40, binary.BigEndian.AppendUint16(nil, again))
			}
		}
	}()
	c.publish(1, pid, false, "terminals/c1/payments/p", []byte("pay"))
	eventually(t, "the terminal's publish acknowledged", func() bool { mu.Lock(); defer mu.Unlock(); return pubacked })
	c.send(0x40, binary.BigEndian.AppendUint16(nil, pid))
	eventually(t, "the receipt acknowledged", func() bool { return ev.acked() > 0 })
	<-done
	if _, busy := e.brk.DownlinkInflight("c1"); busy {
		t.Fatal("the client still counts as busy after its acknowledgement")
	}
	if n := total(e.buf); n != 1 {
		t.Fatalf("the terminal's publish: %d records buffered", n)
	}
}
