// Package kafkaclient builds the sarama settings every Kafka client of the
// gateway shares: client id, protocol version, network timeouts, metadata
// scope, compression, TLS and SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) from
// the gateway config. The uplink producer (bridge) and the receipts consumer
// (receipts) add their own settings on top; this package knows neither.
package kafkaclient

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/IBM/sarama"

	"github.com/edgegw/gateway/config"
)

// Network settings of every client the gateway opens towards Kafka. Timeouts
// are moderate so that a Kafka that accepts TCP but never answers is noticed
// within seconds, not the 30 s sarama defaults to.
const (
	NetTimeout      = 10 * time.Second
	MetadataRetries = 2
	MetadataBackoff = 250 * time.Millisecond
)

// Config returns a sarama configuration with the shared client settings of
// k. It reads the TLS files but does no network I/O. Errors name the key.
func Config(k config.Kafka) (*sarama.Config, error) {
	c := sarama.NewConfig()
	if k.ClientID != "" {
		c.ClientID = k.ClientID
	}
	c.Version = sarama.DefaultVersion
	if k.Version != "" {
		v, err := sarama.ParseKafkaVersion(k.Version)
		if err != nil {
			return nil, fmt.Errorf("kafka.version: %w", err)
		}
		c.Version = v
	}

	c.Net.DialTimeout = NetTimeout
	c.Net.ReadTimeout = NetTimeout
	c.Net.WriteTimeout = NetTimeout

	c.Metadata.Retry.Max = MetadataRetries
	c.Metadata.Retry.Backoff = MetadataBackoff
	// Only the topics we use: the central cluster may have thousands.
	c.Metadata.Full = false

	codec, err := CompressionCodec(k.Compression)
	if err != nil {
		return nil, err
	}
	c.Producer.Compression = codec

	if k.TLS.Enabled {
		tc, err := TLSConfig(k.TLS)
		if err != nil {
			return nil, err
		}
		c.Net.TLS.Enable = true
		c.Net.TLS.Config = tc
	}
	if err := saslConfig(c, k.SASL); err != nil {
		return nil, err
	}
	return c, nil
}

// CompressionCodec maps kafka.compression to sarama's codec.
func CompressionCodec(name string) (sarama.CompressionCodec, error) {
	switch strings.ToLower(name) {
	case "", "none":
		return sarama.CompressionNone, nil
	case "gzip":
		return sarama.CompressionGZIP, nil
	case "snappy":
		return sarama.CompressionSnappy, nil
	case "lz4":
		return sarama.CompressionLZ4, nil
	case "zstd":
		return sarama.CompressionZSTD, nil
	}
	return sarama.CompressionNone, fmt.Errorf("kafka.compression: unknown codec %q (none | gzip | snappy | lz4 | zstd)", name)
}

// TLSConfig is the client TLS towards the cluster: TLS 1.2 or later, the
// system roots or kafka.tls.ca_file, and a client certificate when given.
func TLSConfig(t config.KafkaTLS) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("kafka.tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("kafka.tls.ca_file %s: no PEM certificate found", t.CAFile)
		}
		tc.RootCAs = pool
	}
	if t.CertFile != "" || t.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("kafka.tls.cert_file/key_file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

func saslConfig(c *sarama.Config, s config.SASL) error {
	mech := strings.ToUpper(s.Mechanism)
	if mech == "" {
		return nil
	}
	c.Net.SASL.Enable = true
	c.Net.SASL.Handshake = true
	c.Net.SASL.Version = sarama.SASLHandshakeV1
	c.Net.SASL.User = s.Username
	c.Net.SASL.Password = s.Password
	switch mech {
	case "PLAIN":
		c.Net.SASL.Mechanism = sarama.SASLTypePlaintext
	case "SCRAM-SHA-256":
		c.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA256
		c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return newSCRAM(sha256Hash) }
	case "SCRAM-SHA-512":
		c.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA512
		c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return newSCRAM(sha512Hash) }
	default:
		return fmt.Errorf("kafka.sasl.mechanism: unknown mechanism %q (PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512)", s.Mechanism)
	}
	return nil
}
