package bridge

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"github.com/IBM/sarama"

	"github.com/edgegw/gateway/config"
)

// Network and retry settings of every client the gateway opens towards Kafka.
// Timeouts are moderate so that a Kafka that accepts TCP but never answers is
// noticed within seconds, not the 30 s sarama defaults to.
const (
	netTimeout       = 10 * time.Second
	produceRetries   = 200 // sarama-internal retries of one batch before it is returned as an error
	retryBackoffMin  = 100 * time.Millisecond
	retryBackoffMax  = 5 * time.Second
	metadataRetries  = 2
	metadataBackoff  = 250 * time.Millisecond
	maxMessageBytes  = 1000000 // Kafka's default message.max.bytes is 1048588
	flushBytes       = 1 << 20
	flushFrequency   = 5 * time.Millisecond
	flushMaxMessages = 0 // no hard cap: one request carries what accumulated while the previous was in flight
)

// NewSaramaConfig builds the sarama configuration shared by the uplink
// producer and the receipts consumer: client id, protocol version,
// compression, TLS and SASL from the gateway config, plus the producer
// settings the delivery guarantees rest on (idempotent, acks=all, one request
// in flight per broker, retries with capped exponential backoff and jitter).
// It reads the TLS files but does no network I/O.
func NewSaramaConfig(k config.Kafka) (*sarama.Config, error) {
	c := sarama.NewConfig()
	if k.ClientID != "" {
		c.ClientID = k.ClientID
	}
	c.Version = sarama.DefaultVersion
	if k.Version != "" {
		v, err := sarama.ParseKafkaVersion(k.Version)
		if err != nil {
			return nil, fmt.Errorf("bridge: kafka.version: %w", err)
		}
		c.Version = v
	}

	c.Net.DialTimeout = netTimeout
	c.Net.ReadTimeout = netTimeout
	c.Net.WriteTimeout = netTimeout
	// Idempotence needs it; it also keeps retries from reordering.
	c.Net.MaxOpenRequests = 1

	c.Metadata.Retry.Max = metadataRetries
	c.Metadata.Retry.Backoff = metadataBackoff
	// Only the topics we produce to: the central cluster may have thousands.
	c.Metadata.Full = false

	p := &c.Producer
	p.Idempotent = true
	p.RequiredAcks = sarama.WaitForAll
	p.Return.Successes = true
	p.Return.Errors = true
	p.Retry.Max = produceRetries
	p.Retry.BackoffFunc = backoffFunc(retryBackoffMin, retryBackoffMax)
	// Getting a producer id is the first request a new producer makes: a
	// few tries, then the drain's own reconnect backoff takes over.
	p.Transaction.Retry.Max = metadataRetries
	p.Transaction.Retry.Backoff = metadataBackoff
	p.MaxMessageBytes = maxMessageBytes
	if k.MaxMessageBytes > 0 {
		p.MaxMessageBytes = int(k.MaxMessageBytes)
	}
	p.Flush.Bytes = flushBytes
	p.Flush.Frequency = flushFrequency
	p.Flush.MaxMessages = flushMaxMessages
	// Same partition for a key as the Java client's default partitioner, so
	// consumers may co-partition with other producers.
	p.Partitioner = sarama.NewMurmur2Partitioner

	codec, err := compressionCodec(k.Compression)
	if err != nil {
		return nil, err
	}
	p.Compression = codec

	if k.TLS.Enabled {
		tc, err := tlsConfig(k.TLS)
		if err != nil {
			return nil, err
		}
		c.Net.TLS.Enable = true
		c.Net.TLS.Config = tc
	}
	if err := saslConfig(c, k.SASL); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("bridge: kafka settings: %w", err)
	}
	return c, nil
}

func compressionCodec(name string) (sarama.CompressionCodec, error) {
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
	return sarama.CompressionNone, fmt.Errorf("bridge: kafka.compression: unknown codec %q (none | gzip | snappy | lz4 | zstd)", name)
}

func tlsConfig(t config.KafkaTLS) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("bridge: kafka.tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("bridge: kafka.tls.ca_file %s: no PEM certificate found", t.CAFile)
		}
		tc.RootCAs = pool
	}
	if t.CertFile != "" || t.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("bridge: kafka.tls.cert_file/key_file: %w", err)
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
		return fmt.Errorf("bridge: kafka.sasl.mechanism: unknown mechanism %q (PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512)", s.Mechanism)
	}
	return nil
}

// backoffFunc is exponential from lo, capped at hi, with full jitter in the
// upper half so that many gateways recovering at once do not retry in step.
func backoffFunc(lo, hi time.Duration) func(retries, maxRetries int) time.Duration {
	return func(retries, _ int) time.Duration { return backoff(retries, lo, hi) }
}

func backoff(attempt int, lo, hi time.Duration) time.Duration {
	d := lo
	for i := 0; i < attempt && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d/2 + rand.N(d/2+1)
}
