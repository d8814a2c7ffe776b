package broker

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/internal/testkit"
)

// connectOpts is what a raw CONNECT carries.
type connectOpts struct {
	version       byte
	id            string
	user, pass    string
	clean         bool
	sessionExpiry uint32 // MQTT 5
	will          *willOpts
	tls           *tls.Config // nil: plain TCP
}

type willOpts struct {
	topic   string
	payload []byte
	retain  bool
	qos     byte
}

// rawConnect dials addr and sends CONNECT; it returns the client and the
// CONNACK reason (return) code, or -1 when the connection ended without a
// CONNACK (as after a failed TLS handshake).
func rawConnect(t *testing.T, addr string, o connectOpts) (*rawClient, int) {
	t.Helper()
	var conn net.Conn
	var err error
	if o.tls != nil {
		conn, err = tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, o.tls)
		if err != nil {
			return nil, -1
		}
	} else if conn, err = net.DialTimeout("tcp", addr, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &rawClient{t: t, conn: conn, r: bufio.NewReader(conn), version: o.version}
	var body []byte
	body = appendStr(body, "MQTT")
	body = append(body, o.version)
	flags := byte(0)
	if o.clean {
		flags |= 0x02
	}
	if o.will != nil {
		flags |= 0x04 | o.will.qos<<3
		if o.will.retain {
			flags |= 0x20
		}
	}
	if o.pass != "" {
		flags |= 0x40
	}
	if o.user != "" {
		flags |= 0x80
	}
	body = append(body, flags, 0, 60)
	if o.version == 5 {
		if o.sessionExpiry > 0 {
			body = append(body, 5, 0x11)
			body = binary.BigEndian.AppendUint32(body, o.sessionExpiry)
		} else {
			body = append(body, 0)
		}
	}
	body = appendStr(body, o.id)
	if o.will != nil {
		if o.version == 5 {
			body = append(body, 0) // no will properties
		}
		body = appendStr(body, o.will.topic)
		body = appendStr(body, string(o.will.payload))
	}
	if o.user != "" {
		body = appendStr(body, o.user)
	}
	if o.pass != "" {
		body = appendStr(body, o.pass)
	}
	pkt := appendLen([]byte{0x10}, len(body))
	if _, err := conn.Write(append(pkt, body...)); err != nil {
		return nil, -1
	}
	typ, ack, err := c.tryRead(10 * time.Second)
	if err != nil {
		return nil, -1
	}
	if typ != 2 || len(ack) < 2 {
		t.Fatalf("expected CONNACK, got type %d %v", typ, ack)
	}
	c.lastConnack = ack
	return c, int(ack[1])
}

// connackProps returns the properties of an MQTT 5 CONNACK body.
func connackTopicAliasMax(ack []byte) int {
	if len(ack) < 3 {
		return -1
	}
	n, i := 0, 2
	for mult := 1; ; mult *= 128 {
		n += int(ack[i]&127) * mult
		if ack[i]&128 == 0 {
			i++
			break
		}
		i++
	}
	props := ack[i : i+n]
	for j := 0; j < len(props); {
		id := props[j]
		j++
		switch id {
		case 0x22: // topic alias maximum
			return int(binary.BigEndian.Uint16(props[j:]))
		case 0x21, 0x13: // two-byte integers
			j += 2
		case 0x11, 0x27: // four-byte integers
			j += 4
		case 0x24, 0x25, 0x28, 0x29, 0x2A: // bytes
			j++
		case 0x12, 0x1F, 0x1A, 0x1C, 0x15: // strings
			j += 2 + int(binary.BigEndian.Uint16(props[j:]))
		case 0x26: // user property
			j += 2 + int(binary.BigEndian.Uint16(props[j:]))
			j += 2 + int(binary.BigEndian.Uint16(props[j:]))
		default:
			return -1
		}
	}
	return 0
}

// usersFile writes a users file (bcrypt at the lowest cost, for speed).
func usersFile(t *testing.T, users ...string) string {
	t.Helper()
	var b strings.Builder
	for _, u := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(u+"-secret"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:%s\n", u, h)
	}
	p := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func authEnv(t *testing.T, users ...string) []string {
	return []string{"GATEWAY_MQTT_ALLOW_ANONYMOUS=false", "GATEWAY_MQTT_USERS_FILE=" + usersFile(t, users...)}
}

// Attack 1: a valid user logs in under another terminal's client id. It is
// refused at CONNECT (MQTT 5 0x85, 3.1.1 code 2) and the terminal already
// connected under that id keeps its connection.
func TestImpersonationRefusedVictimStaysConnected(t *testing.T) {
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			e := start(t, "", "", buffer.Options{}, authEnv(t, "alice", "term-b")...)
			victim, code := rawConnect(t, e.addr, connectOpts{version: v, id: "term-b", user: "term-b", pass: "term-b-secret"})
			if code != 0 {
				t.Fatalf("term-b refused: %d", code)
			}
			_, code = rawConnect(t, e.addr, connectOpts{version: v, id: "term-b", user: "alice", pass: "alice-secret"})
			want := 0x85
			if v == 4 {
				want = 2
			}
			if code != want {
				t.Fatalf("alice as term-b: CONNACK %#x, want %#x", code, want)
			}
			// The victim was not disturbed: its connection still works.
			victim.publish(1, 7, false, "terminals/term-b/payments/1", []byte("pay"))
			if pid, rc := victim.expectPuback(); pid != 7 || rc != 0 {
				t.Fatalf("victim puback %d %#x", pid, rc)
			}
			// alice under her own id is fine.
			if _, code := rawConnect(t, e.addr, connectOpts{version: v, id: "alice", user: "alice", pass: "alice-secret"}); code != 0 {
				t.Fatalf("alice as alice: %#x", code)
			}
			// And a receipt for term-b still goes to term-b.
			victim.subscribe(2, "terminals/term-b/receipts", 1)
			if _, err := e.brk.SendDownlink("term-b", 1, DownlinkMessage{Topic: "terminals/term-b/receipts", Payload: []byte("r"), QoS: 1}); err != nil {
				t.Fatalf("downlink to term-b: %v", err)
			}
			for {
				typ, body := victim.read()
				if typ == 3 {
					if !strings.Contains(string(body), "terminals/term-b/receipts") {
						t.Fatalf("unexpected publish %q", body)
					}
					break
				}
			}
		})
	}
}

// With client_id_binding: any a user may pick its id, but still cannot take
// over a session that another identity made.
func TestBindingAnyKeepsSessionsWithTheirOwner(t *testing.T) {
	env := append(authEnv(t, "alice", "term-b"), "GATEWAY_MQTT_CLIENT_ID_BINDING=any")
	e := start(t, "", "", buffer.Options{}, env...)
	c, code := rawConnect(t, e.addr, connectOpts{version: 5, id: "term-b", user: "term-b", pass: "term-b-secret", sessionExpiry: 3600})
	if code != 0 {
		t.Fatalf("term-b: %#x", code)
	}
	c.conn.Close() // offline, session kept
	eventually(t, "term-b offline", func() bool {
		cl, ok := e.brk.server.Clients.Get("term-b")
		return ok && cl.Closed()
	})
	if _, code := rawConnect(t, e.addr, connectOpts{version: 5, id: "term-b", user: "alice", pass: "alice-secret"}); code != 0x85 {
		t.Fatalf("alice taking term-b's session: %#x, want 0x85", code)
	}
	if _, code := rawConnect(t, e.addr, connectOpts{version: 5, id: "dashboard-1", user: "alice", pass: "alice-secret"}); code != 0 {
		t.Fatalf("alice under a free id: %#x", code)
	}
	if _, code := rawConnect(t, e.addr, connectOpts{version: 5, id: "term-b", user: "term-b", pass: "term-b-secret"}); code != 0 {
		t.Fatalf("term-b back: %#x", code)
	}
}

// An anonymous client (allowed on this listener) cannot take over a session
// that belongs to an authenticated identity either.
func TestAnonymousCannotTakeOverOwnedSession(t *testing.T) {
	env := []string{"GATEWAY_MQTT_USERS_FILE=" + usersFile(t, "term-b")} // allow_anonymous stays true
	e := start(t, "", "", buffer.Options{}, env...)
	if _, code := rawConnect(t, e.addr, connectOpts{version: 4, id: "term-b", user: "term-b", pass: "term-b-secret"}); code != 0 {
		t.Fatalf("term-b: %#x", code)
	}
	if _, code := rawConnect(t, e.addr, connectOpts{version: 4, id: "term-b"}); code != 2 {
		t.Fatalf("anonymous as term-b: %d, want 2", code)
	}
	if _, code := rawConnect(t, e.addr, connectOpts{version: 4, id: "local-app", clean: true}); code != 0 {
		t.Fatalf("anonymous local app: %d", code)
	}
	// nor use the id of a user in the users file while that user is away
	e2 := start(t, "", "", buffer.Options{}, env...)
	if _, code := rawConnect(t, e2.addr, connectOpts{version: 5, id: "term-b", clean: true}); code != 0x85 {
		t.Fatalf("anonymous as an absent user's id: %#x, want 0x85", code)
	}
}

// Attack 3: a will aimed at another terminal's topic is refused at CONNECT
// (0x87 / 5), so it never arrives and never becomes retained.
func TestWillOutsideACLRefused(t *testing.T) {
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			// unrouted local: term-b's own sentinel on the topic is delivered
			e := start(t, "", "", buffer.Options{}, append(authEnv(t, "alice", "term-b"), "GATEWAY_UNROUTED=local")...)
			victim, code := rawConnect(t, e.addr, connectOpts{version: v, id: "term-b", user: "term-b", pass: "term-b-secret"})
			if code != 0 {
				t.Fatalf("term-b: %d", code)
			}
			victim.subscribe(1, "terminals/term-b/receipts", 1)
			w := &willOpts{topic: "terminals/term-b/receipts", payload: []byte(`{"approved":true}`), retain: true, qos: 1}
			alice, code := rawConnect(t, e.addr, connectOpts{version: v, id: "alice", user: "alice", pass: "alice-secret", will: w})
			want := 0x87
			if v == 4 {
				want = 5
			}
			if code != want {
				t.Fatalf("forged will: CONNACK %#x, want %#x", code, want)
			}
			if alice != nil {
				alice.conn.Close() // drop the TCP connection, as the attacker does
			}
			eventually(t, "alice gone", func() bool {
				cl, ok := e.brk.server.Clients.Get("alice")
				return !ok || cl.Closed()
			})
			// term-b's next message on the topic is its own sentinel, not the will.
			victim.publish(1, 9, false, "terminals/term-b/receipts", []byte("sentinel"))
			for {
				typ, body := victim.read()
				if typ != 3 {
					continue
				}
				if !strings.HasSuffix(string(body), "sentinel") {
					t.Fatalf("term-b received %q before its sentinel", body)
				}
				break
			}
			if msgs := e.brk.server.Topics.Messages("terminals/term-b/receipts"); len(msgs) != 0 {
				t.Fatalf("retained: %+v", msgs)
			}
		})
	}
}

// A will within the ACL that matches a route goes through the durable uplink.
func TestRoutedWillIsBuffered(t *testing.T) {
	e := start(t, "", "", buffer.Options{}, authEnv(t, "term-c")...)
	w := &willOpts{topic: "terminals/term-c/telemetry/presence", payload: []byte("offline"), qos: 1}
	c, code := rawConnect(t, e.addr, connectOpts{version: 5, id: "term-c", user: "term-c", pass: "term-c-secret", will: w})
	if code != 0 {
		t.Fatalf("term-c: %#x", code)
	}
	c.conn.Close() // no DISCONNECT: the will is sent
	eventually(t, "will in the buffer", func() bool { return total(e.buf) == 1 })
}

func TestClientIDAndUsernameLengthLimits(t *testing.T) {
	e := start(t, "", "", buffer.Options{})
	if _, code := rawConnect(t, e.addr, connectOpts{version: 5, id: strings.Repeat("x", 129)}); code != 0x85 {
		t.Fatalf("129-byte client id: %#x, want 0x85", code)
	}
	if _, code := rawConnect(t, e.addr, connectOpts{version: 4, id: strings.Repeat("x", 2000)}); code != 2 {
		t.Fatalf("2000-byte client id: %d, want 2", code)
	}
	// Larger than max_connect_size (here max_packet_size, 4096): closed
	// from the fixed header, no CONNACK.
	if _, code := rawConnect(t, e.addr, connectOpts{version: 4, id: strings.Repeat("x", 65535)}); code != -1 {
		t.Fatalf("65535-byte client id: %d, want the connection closed", code)
	}
	if _, code := rawConnect(t, e.addr, connectOpts{version: 5, id: "ok", user: strings.Repeat("u", 129)}); code != 0x86 {
		t.Fatalf("129-byte user name: %#x, want 0x86", code)
	}
	if _, code := rawConnect(t, e.addr, connectOpts{version: 5, id: strings.Repeat("x", 128)}); code != 0 {
		t.Fatalf("128-byte client id: %#x", code)
	}
	// mochi's in-process client publishes the receipts: its id is reserved.
	if _, code := rawConnect(t, e.addr, connectOpts{version: 5, id: "inline"}); code != 0x85 {
		t.Fatalf("client id inline: %#x, want 0x85", code)
	}
}

// Repeated wrong passwords for one user from one address end in refusals
// that cost no bcrypt work (MQTT 5 0x9F connection rate exceeded), for that
// user from that address only: another terminal behind the same address
// (a carrier-grade NAT) logs in as before, and a wrong password for it is
// answered as a wrong password.
func TestFailedLoginBackoff(t *testing.T) {
	e := start(t, "", "", buffer.Options{}, authEnv(t, "alice", "bob")...)
	for i := 0; i < loginBurst; i++ {
		if _, code := rawConnect(t, e.addr, connectOpts{version: 5, id: "alice", user: "alice", pass: "wrong"}); code != 0x86 {
			t.Fatalf("attempt %d: %#x, want 0x86", i, code)
		}
	}
	if _, code := rawConnect(t, e.addr, connectOpts{version: 5, id: "alice", user: "alice", pass: "wrong"}); code != 0x9F {
		t.Fatalf("after %d failures: %#x, want 0x9F", loginBurst, code)
	}
	if _, code := rawConnect(t, e.addr, connectOpts{version: 5, id: "alice", user: "alice", pass: "alice-secret"}); code != 0x9F {
		t.Fatalf("alice backing off, right password: %#x, want 0x9F", code)
	}
	if _, code := rawConnect(t, e.addr, connectOpts{version: 5, id: "bob", user: "bob", pass: "bob-secret"}); code != 0 {
		t.Fatalf("bob behind the same address: %#x, want 0", code)
	}
	if _, code := rawConnect(t, e.addr, connectOpts{version: 5, id: "mallory", user: "mallory", pass: "x"}); code != 0x86 {
		t.Fatalf("unknown user after alice's failures: %#x, want 0x86", code)
	}
}

func TestTopicAliasMaxAnnouncedAndEnforced(t *testing.T) {
	e := start(t, "", "", buffer.Options{}, "GATEWAY_MQTT_TOPIC_ALIAS_MAX=4", "GATEWAY_UNROUTED=local")
	conn, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := &rawClient{t: t, conn: conn, r: bufio.NewReader(conn), version: 5}
	var body []byte
	body = appendStr(body, "MQTT")
	body = append(body, 5, 0x02, 0, 60, 0)
	body = appendStr(body, "alias-user")
	c.send(0x10, body)
	typ, ack := c.read()
	if typ != 2 || ack[1] != 0 {
		t.Fatalf("connack %d %v", typ, ack)
	}
	if got := connackTopicAliasMax(ack); got != 4 {
		t.Fatalf("CONNACK topic alias maximum %d, want 4", got)
	}
	// alias 4 is fine, alias 5 ends the connection with 0x94.
	pub := func(alias uint16) {
		var b []byte
		b = appendStr(b, "local/x")
		b = append(b, 3, 0x23)
		b = binary.BigEndian.AppendUint16(b, alias)
		c.send(0x30, append(b, 'p'))
	}
	pub(4)
	pub(5)
	if code := c.expectClosed(); code != 0x94 {
		t.Fatalf("alias above the maximum: DISCONNECT %#x, want 0x94", code)
	}
}

// Attack 4: a connection that never sends CONNECT is closed at
// connect_timeout; one that announces a CONNECT above max_connect_size is
// closed at once; one that sends part of an allowed CONNECT is closed at the
// deadline.
func TestSilentAndPartialConnectionsBounded(t *testing.T) {
	e := start(t, "", "", buffer.Options{}, "GATEWAY_MQTT_CONNECT_TIMEOUT=1s", "GATEWAY_MQTT_MAX_CONNECT_SIZE=2KiB")
	closedWithin := func(name string, conn net.Conn, limit time.Duration) {
		t.Helper()
		_ = conn.SetReadDeadline(time.Now().Add(limit))
		_, err := conn.Read(make([]byte, 1))
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("%s: still open after %v", name, limit)
		}
	}
	silent, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	closedWithin("silent", silent, 10*time.Second)

	big, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer big.Close()
	// CONNECT announcing 256 KiB, and most of it
	hdr := appendLen([]byte{0x10}, 256*1024)
	big.Write(append(hdr, make([]byte, 1000)...))
	closedWithin("256 KiB CONNECT", big, 10*time.Second)

	part, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer part.Close()
	part.Write(append(appendLen([]byte{0x10}, 1500), make([]byte, 100)...))
	closedWithin("partial CONNECT", part, 10*time.Second)
}

// TLS listener helpers.
func tlsEnv(t *testing.T, ca *testkit.CA, extra ...string) []string {
	srv := ca.Server()
	return append([]string{
		"GATEWAY_MQTT_TLS_ADDRESS=127.0.0.1:0",
		"GATEWAY_MQTT_TLS_CERT_FILE=" + srv.CertFile,
		"GATEWAY_MQTT_TLS_KEY_FILE=" + srv.KeyFile,
		"GATEWAY_MQTT_TLS_CLIENT_CA_FILE=" + ca.File,
		"GATEWAY_MQTT_ALLOW_ANONYMOUS=false",
		"GATEWAY_MQTT_TCP_ALLOW_ANONYMOUS=true", // the plain listener serves local apps
	}, extra...)
}

func clientTLS(ca *testkit.CA, cert *testkit.Issued) *tls.Config {
	c := &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}
	if cert != nil {
		c.Certificates = []tls.Certificate{cert.TLS}
	}
	return c
}

// Attack 2: a terminal with a valid client certificate and no user name
// logs in; its identity is the certificate's CN, under which its publishes
// are stored; the same certificate under another client id is refused.
func TestCertificateLogin(t *testing.T) {
	ca := testkit.NewCA(t, "terminals")
	e := start(t, "", "", buffer.Options{}, tlsEnv(t, ca)...)
	addr := e.brk.Addr("tls")
	cert := ca.Client("term-a")

	for _, v := range []byte{4, 5} {
		c, code := rawConnect(t, addr, connectOpts{version: v, id: "term-a", clean: true, tls: clientTLS(ca, &cert)})
		if code != 0 {
			t.Fatalf("v%d certificate login: %#x", v, code)
		}
		c.publish(1, 3, false, "terminals/term-a/payments/1", []byte("pay"))
		if pid, rc := c.expectPuback(); pid != 3 || rc != 0 {
			t.Fatalf("v%d puback %d %#x", v, pid, rc)
		}
		c.conn.Close()
		want := 0x85
		if v == 4 {
			want = 2
		}
		if _, code := rawConnect(t, addr, connectOpts{version: v, id: "term-b", clean: true, tls: clientTLS(ca, &cert)}); code != want {
			t.Fatalf("v%d term-a's certificate as term-b: %#x, want %#x", v, code, want)
		}
	}
	// An empty client id is given the identity.
	if _, code := rawConnect(t, addr, connectOpts{version: 5, id: "", clean: true, tls: clientTLS(ca, &cert)}); code != 0 {
		t.Fatalf("empty client id: %#x", code)
	}
	eventually(t, "two records", func() bool { return total(e.buf) == 2 })
	recs, err := e.buf.Read(nil, func(string) int { return 0 }, 10, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.ClientID != "term-a" || string(r.Key) != "term-a" {
			t.Fatalf("record client id %q key %q, want term-a", r.ClientID, r.Key)
		}
	}
}

// mTLS refusals: no certificate, an expired one, one from another CA. None
// gets a CONNACK: the TLS handshake fails.
func TestTLSClientCertificateRefusals(t *testing.T) {
	ca := testkit.NewCA(t, "terminals")
	other := testkit.NewCA(t, "other")
	e := start(t, "", "", buffer.Options{}, tlsEnv(t, ca)...)
	addr := e.brk.Addr("tls")
	expired := ca.ExpiredClient("term-a")
	foreign := other.Client("term-a")
	for name, cert := range map[string]*testkit.Issued{"none": nil, "expired": &expired, "wrong CA": &foreign} {
		if c, code := rawConnect(t, addr, connectOpts{version: 5, id: "term-a", clean: true, tls: clientTLS(ca, cert)}); code != -1 {
			if c != nil {
				c.conn.Close()
			}
			t.Errorf("%s certificate: CONNACK %#x, want the handshake refused", name, code)
		}
	}
}

// With both a users file and a CA, either works on the TLS listener.
func TestTLSPasswordOrCertificate(t *testing.T) {
	ca := testkit.NewCA(t, "terminals")
	e := start(t, "", "", buffer.Options{}, tlsEnv(t, ca, "GATEWAY_MQTT_USERS_FILE="+usersFile(t, "term-p"))...)
	addr := e.brk.Addr("tls")
	if _, code := rawConnect(t, addr, connectOpts{version: 5, id: "term-p", user: "term-p", pass: "term-p-secret", clean: true, tls: clientTLS(ca, nil)}); code != 0 {
		t.Fatalf("password over TLS without certificate: %#x", code)
	}
	cert := ca.Client("term-a")
	if _, code := rawConnect(t, addr, connectOpts{version: 5, id: "term-a", clean: true, tls: clientTLS(ca, &cert)}); code != 0 {
		t.Fatalf("certificate: %#x", code)
	}
	if _, code := rawConnect(t, addr, connectOpts{version: 5, id: "anon", clean: true, tls: clientTLS(ca, nil)}); code != 0x86 {
		t.Fatalf("anonymous on the TLS listener: %#x, want 0x86", code)
	}
	// the plain listener takes anonymous local apps (tcp_allow_anonymous)
	if _, code := rawConnect(t, e.addr, connectOpts{version: 5, id: "local-app", clean: true}); code != 0 {
		t.Fatalf("anonymous on the plain listener: %#x", code)
	}
}

// A 3.1.1 client whose session is taken over by its own identity is just
// disconnected: 3.1.1 has no server DISCONNECT packet.
func TestTakeoverSendsNoDisconnectTo311(t *testing.T) {
	e := start(t, "", "", buffer.Options{}, authEnv(t, "term-b")...)
	old, code := rawConnect(t, e.addr, connectOpts{version: 4, id: "term-b", user: "term-b", pass: "term-b-secret"})
	if code != 0 {
		t.Fatalf("connect: %d", code)
	}
	if _, code := rawConnect(t, e.addr, connectOpts{version: 4, id: "term-b", user: "term-b", pass: "term-b-secret"}); code != 0 {
		t.Fatalf("reconnect: %d", code)
	}
	if got := old.expectClosed(); got != -1 {
		t.Fatalf("the 3.1.1 client taken over got a DISCONNECT (%#x)", got)
	}
}
