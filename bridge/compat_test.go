package bridge

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kversion"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/internal/testkit"
)

// The producer settings the gateway ships (idempotent, acks=all, each
// codec) against clusters emulating Kafka 2.8 through 4.0.
func TestSaramaAgainstKafkaVersions(t *testing.T) {
	cases := []struct {
		name, version, codec string
		max                  *kversion.Versions
	}{
		{"2.8 zstd", "2.8.0", "zstd", kversion.V2_8_0()},
		{"2.8 gzip", "2.8.0", "gzip", kversion.V2_8_0()},
		{"3.0 lz4", "3.0.0", "lz4", kversion.V3_0_0()},
		{"3.6 snappy", "3.6.0", "snappy", kversion.V3_6_0()},
		{"3.9 none", "3.9.0", "none", kversion.V3_9_0()},
		{"4.0 zstd", "4.0.0", "zstd", kversion.V4_0_0()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k := testkit.Kafka(t, testkit.Topics(3, "payments"), testkit.With(kfake.MaxVersions(tc.max)))
			buf := openBuffer(t)
			a := newAppender(buf, "payments", "payments", 3)
			a.append(t, 200)
			startBridge(t, buf, k.Addrs, func(o *Options) {
				o.Kafka.Version = tc.version
				o.Kafka.Compression = tc.codec
			})
			waitDrained(t, buf, 30*time.Second)
			recs := testkit.ReadAll(t, k.Addrs, "payments")
			if dups := checkDelivery(t, recs, a.recs); dups != 0 {
				t.Errorf("%d duplicates", dups)
			}
			for _, r := range recs {
				want := a.recs[seqOf(t, r)]
				if string(r.Value) != string(want.Payload) || r.Timestamp.UnixMilli() != want.Received.UnixMilli() || headerMap(r)["gw.id"] != gwID {
					t.Fatalf("record %d differs", seqOf(t, r))
				}
			}
		})
	}
}

func TestSASL(t *testing.T) {
	for _, mech := range []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"} {
		t.Run(mech, func(t *testing.T) {
			k := testkit.Kafka(t, testkit.Topics(1, "payments"), testkit.With(kfake.EnableSASL(), kfake.Superuser(mech, "gw", "s3cret,=x")))
			var auth kgo.Opt
			switch mech {
			case "PLAIN":
				auth = kgo.SASL(plain.Auth{User: "gw", Pass: "s3cret,=x"}.AsMechanism())
			case "SCRAM-SHA-256":
				auth = kgo.SASL(scram.Auth{User: "gw", Pass: "s3cret,=x"}.AsSha256Mechanism())
			default:
				auth = kgo.SASL(scram.Auth{User: "gw", Pass: "s3cret,=x"}.AsSha512Mechanism())
			}

			// Wrong password: down, nothing deleted.
			bad := openBuffer(t)
			ba := newAppender(bad, "payments", "payments", 1)
			ba.append(t, 10)
			b := startBridge(t, bad, k.Addrs, func(o *Options) {
				o.Kafka.SASL = config.SASL{Mechanism: mech, Username: "gw", Password: "wrong"}
			})
			testkit.Eventually(t, 30*time.Second, func() bool { return b.Link().State == StateDown }, "bad password: link not down")
			b.Close()
			if n, _ := bad.Total(); n != 10 {
				t.Errorf("bad password: %d records left, want 10", n)
			}

			buf := openBuffer(t)
			a := newAppender(buf, "payments", "payments", 2)
			a.append(t, 50)
			startBridge(t, buf, k.Addrs, func(o *Options) {
				o.Kafka.SASL = config.SASL{Mechanism: mech, Username: "gw", Password: "s3cret,=x"}
			})
			waitDrained(t, buf, 30*time.Second)
			checkDelivery(t, testkit.ReadAll(t, k.Addrs, "payments", auth), a.recs)
		})
	}
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	cert, caFile := selfSigned(t, dir)
	k := testkit.Kafka(t, testkit.Topics(1, "payments"), testkit.With(kfake.TLS(&tls.Config{Certificates: []tls.Certificate{cert}})))
	buf := openBuffer(t)
	a := newAppender(buf, "payments", "payments", 2)
	a.append(t, 30)
	startBridge(t, buf, k.Addrs, func(o *Options) {
		o.Kafka.TLS = config.KafkaTLS{Enabled: true, CAFile: caFile}
	})
	waitDrained(t, buf, 30*time.Second)
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	recs := testkit.ReadAll(t, k.Addrs, "payments", kgo.DialTLSConfig(&tls.Config{RootCAs: pool}))
	checkDelivery(t, recs, a.recs)
}

// selfSigned makes a certificate for 127.0.0.1 that is its own CA.
func selfSigned(t *testing.T, dir string) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kfake"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, caFile
}
