package kafkaclient

import (
	"strings"
	"testing"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/internal/testkit"
)

// A client built from Config authenticates to a real Kafka-protocol cluster
// with each mechanism, as the receipts consumer and the uplink producer both
// do, and is refused with a wrong password.
func TestSASLAgainstCluster(t *testing.T) {
	for _, mech := range []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"} {
		t.Run(mech, func(t *testing.T) {
			k := testkit.Kafka(t, testkit.Topics(1, "receipts.gw"), testkit.With(kfake.EnableSASL(), kfake.Superuser(mech, "gw", "s3cret,=x")))
			for _, tc := range []struct {
				pass string
				ok   bool
			}{{"s3cret,=x", true}, {"wrong", false}} {
				c, err := Config(config.Kafka{Brokers: k.Addrs, ClientID: "edge-gateway", Version: "2.8.0",
					SASL: config.SASL{Mechanism: mech, Username: "gw", Password: tc.pass}})
				if err != nil {
					t.Fatal(err)
				}
				c.Metadata.Retry.Max = 0
				cl, err := sarama.NewClient(k.Addrs, c)
				if err == nil {
					_, err = cl.Partitions("receipts.gw")
					cl.Close()
				}
				if tc.ok && err != nil {
					t.Fatalf("right password refused: %v", err)
				}
				if !tc.ok && err == nil {
					t.Fatal("wrong password accepted")
				}
			}
		})
	}
}

// Errors name the configuration key.
func TestErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct {
		k    config.Kafka
		want string
	}{
		{config.Kafka{Version: "x"}, "kafka.version"},
		{config.Kafka{Compression: "brotli"}, "kafka.compression"},
		{config.Kafka{TLS: config.KafkaTLS{Enabled: true, CAFile: "/nonexistent/ca.pem"}}, "kafka.tls.ca_file"},
		{config.Kafka{SASL: config.SASL{Mechanism: "GSSAPI", Username: "u"}}, "kafka.sasl.mechanism"},
	} {
		if _, err := Config(tc.k); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want it to start with %s", tc.k, err, tc.want)
		}
	}
	c, err := Config(config.Kafka{ClientID: "box-7", Version: "3.6.0", Compression: "zstd"})
	if err != nil {
		t.Fatal(err)
	}
	if c.ClientID != "box-7" || c.Version != sarama.V3_6_0_0 || c.Producer.Compression != sarama.CompressionZSTD || c.Net.DialTimeout != NetTimeout {
		t.Fatalf("settings not applied: client id %q version %v compression %v dial %v", c.ClientID, c.Version, c.Producer.Compression, c.Net.DialTimeout)
	}
}
