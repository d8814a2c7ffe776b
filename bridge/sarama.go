package bridge

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/IBM/sarama"

	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/kafkaclient"
)

// Retry settings of the uplink producer; the network settings every client
// shares are kafkaclient's.
const (
	netTimeout      = kafkaclient.NetTimeout
	produceRetries  = 200 // sarama-internal retries of one batch before it is returned as an error
	retryBackoffMin = 100 * time.Millisecond
	retryBackoffMax = 5 * time.Second
	metadataRetries = kafkaclient.MetadataRetries
	metadataBackoff = kafkaclient.MetadataBackoff
	maxMessageBytes = 1000000 // Kafka's default message.max.bytes is 1048588
	flushBytes      = 1 << 20
	flushFrequency  = 20 * time.Millisecond
	// A transaction's commit waits for its last records, which sarama
	// sends only when the flush timer fires: a short timer there.
	txnFlushFrequency = time.Millisecond
	flushMaxMessages  = 0 // no hard cap: one request carries what accumulated while the previous was in flight
)

// NewSaramaConfig builds the uplink producer's sarama configuration: the
// client settings every Kafka client shares (kafkaclient.Config: client id,
// protocol version, compression, TLS, SASL), plus the producer settings the
// delivery guarantees rest on (idempotent, acks=all, one request in flight
// per broker, retries with capped exponential backoff and jitter).
// It reads the TLS files but does no network I/O.
func NewSaramaConfig(k config.Kafka) (*sarama.Config, error) {
	c, err := kafkaclient.Config(k)
	if err != nil {
		return nil, fmt.Errorf("bridge: %w", err)
	}
	// Idempotence needs it; it also keeps retries from reordering.
	c.Net.MaxOpenRequests = 1

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
	if k.ExactlyOnce {
		p.Flush.Frequency = txnFlushFrequency
	}
	p.Flush.MaxMessages = flushMaxMessages
	// Same partition for a key as the Java client's default partitioner, so
	// consumers may co-partition with other producers.
	p.Partitioner = sarama.NewMurmur2Partitioner

	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("bridge: kafka settings: %w", err)
	}
	return c, nil
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
