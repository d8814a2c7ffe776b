package broker

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// frameGuard sits between a client's connection and mochi. It follows the
// MQTT framing of the bytes read (packet type, remaining length, body) and
// checks, before mochi decodes anything:
//
//   - a packet announcing more than max bytes: an MQTT 5 client is sent
//     DISCONNECT 0x95 (packet too large) before mochi closes the connection
//     (mochi v2.7.9 closes it without a reason code);
//   - a CONNECT announcing more than maxConnect: refused from its fixed
//     header, before mochi allocates its body;
//   - the CONNECT's MQTT 5 properties: a receive maximum or maximum packet
//     size of 0, or a property given twice, is a protocol error that mochi
//     accepts (OnConnect refuses it, see connectProblem);
//   - SUBSCRIBE and UNSUBSCRIBE: held back until complete and checked
//     field by field. mochi v2.7.9's SubscribeDecode indexes past the end of
//     an MQTT 5 SUBSCRIBE whose last filter lacks its options byte and the
//     panic killed the process (TestPinSubscribeDecodePanics). A malformed
//     one ends that connection only: DISCONNECT 0x81 for MQTT 5, counted.
//
// Publishes, the bulk of the traffic, pass through as read, without a copy.
type frameGuard struct {
	net.Conn
	max        uint32
	maxConnect uint32 // 0: no limit beyond max
	events     *connEvents
	slot       *pendingSlot // counts the connection as not yet logged in; nil: not counted

	// client is the mochi client on this connection, once OnConnect saw it
	// (to end its session cleanly after a panic, see serveConn).
	client atomic.Pointer[mqtt.Client]

	mu        sync.Mutex
	state     int // guardType, guardLength, guardBody
	first     bool
	typ       byte
	remaining uint32
	mult      uint32
	lenBytes  int
	connect   []byte // the CONNECT body, up to maxConnect, until it is complete
	version   byte
	// connectProblem: why the CONNECT is a protocol error mochi would
	// accept ("" if none); OnConnect refuses the connection for it.
	connectProblem string
	tooLarge       bool
	// connectTooLarge: the first packet announced more than maxConnect
	// bytes; reads fail from then on.
	connectTooLarge bool
	holding         bool   // the body being read is held back (SUBSCRIBE, UNSUBSCRIBE)
	hold            []byte // that body so far
	ready           []byte // checked bytes mochi has not read yet (they come before any newer)
	failed          error  // a malformed packet: reads fail once ready is drained
	readErr         error  // the connection's read error, returned once ready is drained
}

// connEvents are what the guards report to the broker.
type connEvents struct {
	malformed func(packet, why string) // a packet refused before mochi decoded it
}

// errConnectTooLarge ends a connection whose CONNECT announces more than
// mqtt.max_connect_size.
var errConnectTooLarge = errors.New("CONNECT larger than mqtt.max_connect_size")

// errMalformed ends a connection that sent a packet mochi must not decode.
var errMalformed = errors.New("malformed packet")

const (
	guardType = iota
	guardLength
	guardBody
)

// writeDeadline bounds a write to a client that stopped reading, so a stuck
// terminal cannot hold a broker goroutine forever.
const writeDeadline = 30 * time.Second

func (g *frameGuard) Write(p []byte) (int, error) {
	if len(p) > 0 && (p[0] == packets.Disconnect<<4 || p[0] == packets.Connack<<4) {
		g.mu.Lock()
		v := g.version
		g.mu.Unlock()
		switch {
		case v != 3 && v != 4:
		case p[0] == packets.Disconnect<<4:
			// MQTT 3.1.1 has no server DISCONNECT (mochi v2.7.9 sends one,
			// e.g. to a client whose session is taken over): the connection
			// is just closed.
			return len(p), nil
		case len(p) >= 4 && p[3] > 5:
			// A CONNACK with a return code 3.1.1 does not define (see
			// authHook.OnPacketEncode): 3.1.1 closes without one.
			return len(p), nil
		}
	}
	_ = g.Conn.SetWriteDeadline(time.Now().Add(writeDeadline))
	return g.Conn.Write(p)
}

// Close also frees the connection's place among those not logged in.
func (g *frameGuard) Close() error {
	g.slot.release()
	return g.Conn.Close()
}

// protocolError is why the CONNECT's MQTT 5 properties are a protocol
// error mochi accepts ("" if they are not; see checkConnect).
func (g *frameGuard) protocolError() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.connectProblem
}

// preload scans bytes read before mochi took the connection (the first
// byte, see serveConn); mochi reads them first.
func (g *frameGuard) preload(b []byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	pass := g.scan(b)
	g.ready = append(b[:pass:pass], g.ready...)
}

func (g *frameGuard) Read(p []byte) (int, error) {
	for {
		g.mu.Lock()
		if len(g.ready) > 0 {
			n := copy(p, g.ready)
			g.ready = g.ready[n:]
			if len(g.ready) == 0 {
				g.ready = nil
			}
			g.mu.Unlock()
			return n, nil
		}
		failed, refused, readErr := g.failed, g.connectTooLarge, g.readErr
		g.mu.Unlock()
		if refused {
			return 0, errConnectTooLarge
		}
		if failed != nil {
			return 0, failed
		}
		if readErr != nil {
			return 0, readErr
		}
		n, err := g.Conn.Read(p)
		if n == 0 {
			return 0, err
		}
		g.mu.Lock()
		wasTooLarge, wasFailed := g.tooLarge, g.failed != nil
		pass := g.scan(p[:n])
		version, tooLarge, refused := g.version, g.tooLarge && !wasTooLarge, g.connectTooLarge
		malformed := g.failed != nil && !wasFailed
		g.mu.Unlock()
		switch {
		case refused:
			// Nothing of it reaches mochi, which would allocate the whole
			// announced body and wait for it.
			_ = g.Conn.Close()
			return 0, errConnectTooLarge
		case tooLarge && version == 5:
			// DISCONNECT, remaining length 1, reason code 0x95.
			_, _ = g.Write([]byte{0xE0, 0x01, 0x95})
		case malformed:
			if version == 5 {
				// DISCONNECT, remaining length 1, reason code 0x81.
				_, _ = g.Write([]byte{0xE0, 0x01, 0x81})
			}
			// mochi reads what came before it, then the error.
			_ = g.Conn.Close()
		}
		if err != nil {
			g.mu.Lock()
			queued := len(g.ready) > 0
			if queued {
				g.readErr = err // after what waits in ready
			}
			g.mu.Unlock()
			if queued && pass == 0 {
				continue
			}
			if queued {
				return pass, nil
			}
			return pass, err
		}
		if pass > 0 {
			return pass, nil
		}
		// All of it is held back or waits in ready: read on.
	}
}

// scan advances the framing state over b and returns how many of its first
// bytes mochi may read as they are; the rest went into hold or ready. g.mu
// held.
func (g *frameGuard) scan(b []byte) (pass int) {
	diverted := false // a byte of b was held back: later ones queue behind it
	emit := func(seg []byte) {
		if diverted {
			g.ready = append(g.ready, seg...)
		} else {
			pass += len(seg)
		}
	}
	for len(b) > 0 {
		if g.tooLarge || g.failed != nil || g.connectTooLarge {
			// mochi ends the connection after this header; nothing more
			// to check
			emit(b)
			return pass
		}
		switch g.state {
		case guardType:
			g.typ = b[0] >> 4
			g.state, g.remaining, g.mult, g.lenBytes = guardLength, 0, 1, 0
			emit(b[:1])
			b = b[1:]
		case guardLength:
			c := b[0]
			emit(b[:1])
			b = b[1:]
			g.remaining += uint32(c&127) * g.mult
			g.mult *= 128
			g.lenBytes++
			if c&128 != 0 && g.lenBytes < 4 {
				continue
			}
			// fixed header complete
			if !g.first && g.maxConnect > 0 && g.remaining+1 > g.maxConnect {
				g.connectTooLarge = true
				return pass
			}
			if g.max > 0 && g.remaining+1 > g.max {
				g.tooLarge = true
				continue
			}
			// After CONNECT (mochi refuses anything else first).
			g.holding = g.first && (g.typ == packets.Subscribe || g.typ == packets.Unsubscribe)
			g.state = guardBody
			if g.remaining == 0 {
				g.state, g.holding = guardType, false // mochi refuses an empty one itself
			}
		case guardBody:
			take := min(uint32(len(b)), g.remaining)
			seg := b[:take]
			b = b[take:]
			g.remaining -= take
			if !g.first && g.typ == packets.Connect {
				g.connect = append(g.connect, seg...) // at most maxConnect
			}
			if g.holding {
				g.hold = append(g.hold, seg...)
				diverted = true
			} else {
				emit(seg)
			}
			if g.remaining > 0 {
				continue
			}
			g.state = guardType
			if !g.first && g.typ == packets.Connect {
				g.version, g.connectProblem = checkConnect(g.connect)
				g.connect = nil
			}
			g.first = g.first || g.typ == packets.Connect
			if g.holding {
				g.holding = false
				body := g.hold
				g.hold = nil
				if why := checkFilters(body, g.version == 5, g.typ == packets.Subscribe); why != "" {
					g.failed = errMalformed
					if g.events != nil && g.events.malformed != nil {
						g.events.malformed(packetName(g.typ), why)
					}
					return pass
				}
				g.ready = append(g.ready, body...)
			}
		}
	}
	return pass
}

func packetName(typ byte) string {
	switch typ {
	case packets.Subscribe:
		return "subscribe"
	case packets.Unsubscribe:
		return "unsubscribe"
	}
	return "other"
}

// checkFilters checks the body of a SUBSCRIBE (or UNSUBSCRIBE) as mochi's
// decoder will read it: packet id, MQTT 5 properties, then filters, each a
// length-prefixed string followed (SUBSCRIBE only) by its options byte. It
// returns why the body is malformed, or "".
func checkFilters(body []byte, v5, subscribe bool) string {
	if len(body) < 2 {
		return "no packet id"
	}
	off := 2
	if v5 {
		n, l := uvarint(body[off:])
		if l <= 0 || uint64(len(body)-off-l) < n {
			return "bad property length"
		}
		off += l + int(n)
	}
	for off < len(body) {
		if len(body)-off < 2 {
			return "filter length cut short"
		}
		n := int(binary.BigEndian.Uint16(body[off:]))
		off += 2
		if len(body)-off < n {
			return "filter cut short"
		}
		off += n
		if subscribe {
			if off >= len(body) {
				return "filter without its options byte"
			}
			off++
		}
	}
	return ""
}

// uvarint reads an MQTT variable byte integer: the value and the bytes it
// took (0 if b ends first, -1 if longer than 4 bytes).
func uvarint(b []byte) (uint64, int) {
	var v uint64
	mult := uint64(1)
	for i := 0; i < 4; i++ {
		if i >= len(b) {
			return 0, 0
		}
		v += uint64(b[i]&127) * mult
		if b[i]&128 == 0 {
			return v, i + 1
		}
		mult *= 128
	}
	return 0, -1
}

// checkConnect reads the protocol level from a CONNECT body and, for MQTT
// 5, looks for what the specification calls a protocol error in its
// properties but mochi v2.7.9 accepts: a receive maximum or maximum packet
// size of 0, or a property other than a user property given twice (MQTT 5
// 3.1.2.11). It returns the level and the problem ("" if none).
func checkConnect(body []byte) (version byte, problem string) {
	if len(body) < 2 {
		return 0, ""
	}
	n := int(body[0])<<8 | int(body[1])
	if len(body) < 2+n+1 {
		return 0, ""
	}
	version = body[2+n]
	off := 2 + n + 1 + 1 + 2 // level, flags, keepalive
	if version != 5 || off > len(body) {
		return version, ""
	}
	plen, l := uvarint(body[off:])
	if l <= 0 || uint64(len(body)-off-l) < plen {
		return version, "" // mochi refuses it as malformed
	}
	props := body[off+l : off+l+int(plen)]
	seen := map[byte]bool{}
	for len(props) > 0 {
		id := props[0]
		props = props[1:]
		var size int
		switch id {
		case 0x17, 0x19: // request problem / response information
			size = 1
		case 0x21, 0x22: // receive maximum, topic alias maximum
			size = 2
		case 0x11, 0x27: // session expiry interval, maximum packet size
			size = 4
		case 0x15, 0x16: // authentication method, data
			if len(props) < 2 {
				return version, ""
			}
			size = 2 + int(binary.BigEndian.Uint16(props))
		case 0x26: // user property: a string pair
			if len(props) < 2 {
				return version, ""
			}
			k := 2 + int(binary.BigEndian.Uint16(props))
			if len(props) < k+2 {
				return version, ""
			}
			size = k + 2 + int(binary.BigEndian.Uint16(props[k:]))
		default:
			return version, "" // not a CONNECT property: mochi refuses it
		}
		if len(props) < size {
			return version, ""
		}
		v := props[:size]
		props = props[size:]
		if id != 0x26 && seen[id] {
			return version, "duplicate_property"
		}
		seen[id] = true
		switch {
		case id == 0x21 && binary.BigEndian.Uint16(v) == 0:
			return version, "receive_maximum_zero"
		case id == 0x27 && binary.BigEndian.Uint32(v) == 0:
			return version, "maximum_packet_size_zero"
		}
	}
	return version, ""
}

// guardOf returns the frameGuard under a mochi client's connection, or nil
// (the in-process client).
func guardOf(cl *mqtt.Client) *frameGuard {
	g, _ := cl.Net.Conn.(*frameGuard)
	return g
}
