package broker

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/internal/rawmqtt"
	"github.com/edgegw/gateway/internal/testkit"
	"github.com/edgegw/gateway/rules"
)

// Topic aliases are announced in CONNACK: a publish by alias alone is taken
// as a publish on the topic the alias was set to (mochi v2.7.9 checked the
// ACL against the empty topic name first and refused it 0x87). An alias
// never set is a protocol error.
func TestTopicAliasPublish(t *testing.T) {
	e := start(t, "", "", buffer.Options{})
	c, err := rawmqtt.Connect(e.addr, rawmqtt.Options{ClientID: "term-al", Clean: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	alias := func(n uint16) []byte { return rawmqtt.PropUint16(0x23, n) }
	if err := c.Publish(1, false, 1, "terminals/term-al/payments/1", alias(2), []byte("first")); err != nil {
		t.Fatal(err)
	}
	for pid := uint16(2); pid <= 3; pid++ {
		if err := c.Publish(1, false, pid, "", alias(2), []byte("by alias")); err != nil {
			t.Fatal(err)
		}
	}
	for pid := uint16(1); pid <= 3; pid++ {
		body, err := c.ReadType(4, 5*time.Second)
		if err != nil || binary.BigEndian.Uint16(body) != pid || (len(body) > 2 && body[2] != 0) {
			t.Fatalf("PUBACK %x %v, want %d success", body, err, pid)
		}
	}
	recs, err := e.buf.Read(nil, func(string) int { return 0 }, 10, 1<<20)
	if err != nil || len(recs) != 3 {
		t.Fatalf("%d records %v", len(recs), err)
	}
	for _, r := range recs {
		if r.MQTTTopic != "terminals/term-al/payments/1" {
			t.Fatalf("record topic %q", r.MQTTTopic)
		}
	}
	if err := c.Publish(1, false, 4, "", alias(3), []byte("unknown alias")); err != nil {
		t.Fatal(err)
	}
	if code, ended := c.Closed(5 * time.Second); !ended || code != 0x82 {
		t.Fatalf("publish by an alias never set: DISCONNECT %#x (ended %v), want 0x82", code, ended)
	}
}

// MQTT 3.1.1 CONNACKs carry only 3.1.1 return codes: a persistent session
// without a client id gets 0x02 (mochi sent 0x80), and a CONNECT that is a
// protocol error gets no CONNACK, the connection is closed (mochi sent
// 0x82).
func TestConnack311Codes(t *testing.T) {
	e := start(t, "", "", buffer.Options{})
	c, err := rawmqtt.Connect(e.addr, rawmqtt.Options{Version: 4, ClientID: "", Clean: false})
	if err == nil || len(c.Connack) < 2 || c.Connack[1] != 0x02 {
		t.Fatalf("3.1.1 persistent session without a client id: %v, CONNACK %x, want code 2", err, connack(c))
	}
	// reserved flag bit 0 set: a protocol error
	nc, err := rawmqtt.Dial(e.addr, rawmqtt.Options{Version: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	body := rawmqtt.ConnectBody(rawmqtt.Options{Version: 4, ClientID: "x", Clean: true})
	body[7] |= 0x01
	if err := nc.Send(0x10, body); err != nil {
		t.Fatal(err)
	}
	typ, b, err := nc.Read(5 * time.Second)
	if err == nil {
		t.Fatalf("3.1.1 CONNECT with the reserved flag: packet type %d %x, want the connection closed", typ, b)
	}
}

func connack(c *rawmqtt.Conn) []byte {
	if c == nil {
		return nil
	}
	return c.Connack
}

// A certificate whose subject holds two CNs names no identity: its login is
// refused (0x86), counted; Go's pkix.Name would have taken the last CN.
func TestCertificateWithTwoCNsRefused(t *testing.T) {
	ca := testkit.NewCA(t, "terminals")
	e := start(t, "", "", buffer.Options{}, tlsEnv(t, ca)...)
	cn := asn1.ObjectIdentifier{2, 5, 4, 3}
	two := ca.ClientWithSubject("two-cns", pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
		{Type: cn, Value: "term-a"}, {Type: cn, Value: "term-b"}}})
	for _, id := range []string{"term-b", "term-a", ""} {
		if _, code := rawConnect(t, e.brk.Addr("tls"), connectOpts{version: 5, id: id, clean: true, tls: clientTLS(ca, &two)}); code != 0x86 {
			t.Fatalf("two CNs as %q: CONNACK %#x, want 0x86", id, code)
		}
	}
	if n := testutil.ToFloat64(e.brk.loginRefused.WithLabelValues("certificate_cn_ambiguous")); n != 3 {
		t.Fatalf("counted %v, want 3", n)
	}
}

// mqtt.tls.crl_file: a revoked client certificate is refused in the TLS
// handshake, counted; the others log in. A CRL not signed by a client CA
// stops the start, naming the key.
func TestCRLRevokesClientCertificates(t *testing.T) {
	ca := testkit.NewCA(t, "terminals")
	good, bad := ca.Client("term-a"), ca.Client("term-b")
	crl := ca.CRL(bad)
	e := start(t, "", "", buffer.Options{}, tlsEnv(t, ca, "GATEWAY_MQTT_TLS_CRL_FILE="+crl)...)
	addr := e.brk.Addr("tls")
	if _, code := rawConnect(t, addr, connectOpts{version: 5, id: "term-a", clean: true, tls: clientTLS(ca, &good)}); code != 0 {
		t.Fatalf("a certificate the CRL does not list: %#x", code)
	}
	if c, code := rawConnect(t, addr, connectOpts{version: 5, id: "term-b", clean: true, tls: clientTLS(ca, &bad)}); code != -1 {
		if c != nil {
			c.conn.Close()
		}
		t.Fatalf("a revoked certificate: CONNACK %#x, want the handshake refused", code)
	}
	testkit.Eventually(t, 5*time.Second, func() bool {
		return testutil.ToFloat64(e.brk.loginRefused.WithLabelValues("certificate_revoked")) == 1
	}, "revocation not counted")

	// a CRL from another CA
	other := testkit.NewCA(t, "other")
	dir := t.TempDir()
	cfg, err := config.Parse([]byte(baseYAML), append(tlsEnv(t, ca, "GATEWAY_MQTT_TLS_CRL_FILE="+other.CRL()), "GATEWAY_DATA_DIR="+dir))
	if err != nil {
		t.Fatal(err)
	}
	buf, err := buffer.Open(buffer.Options{Path: filepath.Join(dir, "buffer.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Close()
	_, err = New(Options{Config: cfg, Rules: rules.Compile(cfg), Buffer: buf})
	if err == nil || !strings.Contains(err.Error(), "mqtt.tls.crl_file") {
		t.Fatalf("a CRL of another CA: %v, want an error naming mqtt.tls.crl_file", err)
	}
}
