package testkit

import (
	"fmt"
	"net"
	"sync"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
)

// KafkaCluster is an in-process Kafka-protocol cluster for a test.
type KafkaCluster struct {
	// Addrs are the bootstrap addresses clients should use: the brokers'
	// own, or their proxies' when started WithProxy.
	Addrs []string
	// Cluster is the kfake cluster, for fault injection and inspection.
	Cluster *kfake.Cluster
	// Proxies front the brokers, one each, when started WithProxy; the
	// cluster advertises their addresses in metadata, so clients cannot
	// bypass them after bootstrap.
	Proxies []*Proxy
}

// SetMode switches every broker proxy; the cluster must have been started
// WithProxy.
func (k *KafkaCluster) SetMode(t testing.TB, m Mode) {
	t.Helper()
	if len(k.Proxies) == 0 {
		t.Fatal("testkit: SetMode on a Kafka cluster started without WithProxy")
	}
	for _, p := range k.Proxies {
		if err := p.SetMode(m); err != nil {
			t.Fatalf("testkit: %v", err)
		}
	}
}

// KafkaOpt configures Kafka.
type KafkaOpt func(*kafkaCfg)

type kafkaCfg struct {
	brokers int
	ports   []int
	topics  []kfake.Opt
	proxy   bool
	extra   []kfake.Opt
}

// Brokers sets the number of brokers (default 1).
func Brokers(n int) KafkaOpt { return func(c *kafkaCfg) { c.brokers = n } }

// Ports fixes the advertised ports, one per broker, e.g. for a cluster that
// comes up later on an address a client already uses (see FreePort). With
// WithProxy they are the proxies' ports.
func Ports(ports ...int) KafkaOpt { return func(c *kafkaCfg) { c.ports = ports } }

// Topics seeds topics with the given partition count (<1: kfake's default).
// It may be given several times.
func Topics(partitions int32, topics ...string) KafkaOpt {
	return func(c *kafkaCfg) { c.topics = append(c.topics, kfake.SeedTopics(partitions, topics...)) }
}

// WithProxy puts a Proxy in front of each broker and makes the cluster
// advertise the proxies' addresses.
func WithProxy() KafkaOpt { return func(c *kafkaCfg) { c.proxy = true } }

// With passes kfake options through (SASL, TLS, MaxVersions, BrokerConfigs...).
func With(opts ...kfake.Opt) KafkaOpt {
	return func(c *kafkaCfg) { c.extra = append(c.extra, opts...) }
}

// Kafka starts an in-process kfake cluster on 127.0.0.1 and closes it on
// t.Cleanup.
func Kafka(t testing.TB, opts ...KafkaOpt) *KafkaCluster {
	t.Helper()
	k, err := StartKafka(opts...)
	if err != nil {
		t.Fatalf("testkit: %v", err)
	}
	t.Cleanup(k.Close)
	return k
}

// StartKafka is Kafka for callers without a test (bench programs); the
// caller must Close the result.
func StartKafka(opts ...KafkaOpt) (*KafkaCluster, error) {
	cfg := kafkaCfg{brokers: 1}
	for _, o := range opts {
		o(&cfg)
	}
	if len(cfg.ports) > 0 {
		cfg.brokers = len(cfg.ports)
	}
	k := &KafkaCluster{}
	kopts := []kfake.Opt{kfake.NumBrokers(cfg.brokers)}
	if len(cfg.ports) > 0 {
		kopts = append(kopts, kfake.Ports(cfg.ports...))
	}
	var mu sync.Mutex
	if cfg.proxy {
		// kfake advertises whatever its listener's Addr() says. Listen for
		// real on a free port, start a proxy on the requested port in front
		// of it, and report the proxy's address as the listener's own.
		kopts = append(kopts, kfake.ListenFn(func(network, address string) (net.Listener, error) {
			ln, err := net.Listen(network, "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			p, err := StartProxy(address, ln.Addr().String())
			if err != nil {
				ln.Close()
				return nil, err
			}
			mu.Lock()
			k.Proxies = append(k.Proxies, p)
			mu.Unlock()
			return &advertisedListener{Listener: ln, addr: p.laddr}, nil
		}))
	}
	kopts = append(kopts, cfg.topics...)
	kopts = append(kopts, cfg.extra...)
	c, err := kfake.NewCluster(kopts...)
	if err != nil {
		for _, p := range k.Proxies {
			p.Close()
		}
		return nil, fmt.Errorf("kfake: %w", err)
	}
	k.Cluster = c
	k.Addrs = c.ListenAddrs()
	return k, nil
}

// Close stops the cluster and its proxies. Safe to call twice.
func (k *KafkaCluster) Close() {
	k.Cluster.Close()
	for _, p := range k.Proxies {
		p.Close()
	}
}

// advertisedListener accepts on one address and claims another.
type advertisedListener struct {
	net.Listener
	addr net.Addr
}

func (l *advertisedListener) Addr() net.Addr { return l.addr }
