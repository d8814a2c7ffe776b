package e2e

import (
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/gateway/internal/testkit"
)

// A terminal with a client certificate and no user name logs in over mTLS;
// its payment reaches Kafka with the certificate's CN as mqtt.client_id and
// key. The same certificate under another terminal's client id is refused.
func TestCertificateLoginReachesKafka(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	ca := testkit.NewCA(t, "terminals")
	srv := ca.Server()
	g := newGateway(t, kafka.Addrs, "")
	tlsAddr := fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t))
	g.env = []string{
		"GATEWAY_MQTT_TLS_ADDRESS=" + tlsAddr,
		"GATEWAY_MQTT_TLS_CERT_FILE=" + srv.CertFile,
		"GATEWAY_MQTT_TLS_KEY_FILE=" + srv.KeyFile,
		"GATEWAY_MQTT_TLS_CLIENT_CA_FILE=" + ca.File,
		"GATEWAY_MQTT_ALLOW_ANONYMOUS=false",
		"GATEWAY_MQTT_TCP_ALLOW_ANONYMOUS=true",
	}
	g.start()

	cert := ca.Client("term-a")
	connect := func(id string) (paho.Client, error) {
		o := paho.NewClientOptions().AddBroker("ssl://" + tlsAddr).SetClientID(id).
			SetAutoReconnect(false).SetConnectRetry(false).
			SetTLSConfig(&tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{cert.TLS}})
		c := paho.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(20 * time.Second) {
			return nil, fmt.Errorf("connect timed out")
		}
		if tok.Error() != nil {
			return nil, tok.Error()
		}
		t.Cleanup(func() { c.Disconnect(0) })
		return c, nil
	}
	if _, err := connect("term-b"); err == nil {
		t.Fatal("term-a's certificate was accepted as term-b")
	}
	c, err := connect("term-a")
	if err != nil {
		t.Fatalf("certificate login: %v", err)
	}
	tok := c.Publish("terminals/term-a/payments/1", 1, false, "pay-1")
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	recs := testkit.Consume(t, kafka.Addrs, []string{"payments"}).WaitN(t, 1, 60*time.Second)
	if len(recs) != 1 {
		t.Fatalf("%d records", len(recs))
	}
	r := recs[0]
	if id, _ := header(r, "mqtt.client_id"); id != "term-a" || string(r.Key) != "term-a" || string(r.Value) != "pay-1" {
		t.Fatalf("record key %q client id %q value %q", r.Key, id, r.Value)
	}
}
