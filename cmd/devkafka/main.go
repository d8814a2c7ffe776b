// Command devkafka runs a single-node Kafka-protocol cluster (kfake) for
// development, `make run` and benchmarks. It keeps its data in a directory so
// that topics and records survive restarts, like a real broker would.
//
// It is a development tool only: the gateway binary never links kfake.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "devkafka:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("devkafka", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:9092", "listen address host:port")
	port := fs.Int("port", 0, "listen port on the -addr host (overrides the port of -addr; 0 = keep)")
	dataDir := fs.String("data-dir", "./.devkafka", "directory holding the cluster's data across restarts (\"\" = in memory only)")
	partitions := fs.Int("partitions", 3, "partitions of seeded and auto-created topics")
	topics := fs.String("topics", "payments,telemetry,receipts.edge-01,receipts.delivered", "comma-separated topics to create if missing")
	syncWrites := fs.Bool("sync", false, "fsync every produced batch (slower; default relies on the page cache like Kafka)")
	logLevel := fs.String("log-level", "none", "kfake log level: none, error, warn, info, debug")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}

	host, p, err := net.SplitHostPort(*addr)
	if err != nil {
		return fmt.Errorf("-addr %q: %w", *addr, err)
	}
	if *port != 0 {
		p = strconv.Itoa(*port)
	}
	portNum, err := strconv.Atoi(p) // 0: any free port
	if err != nil || portNum < 0 || portNum > 65535 {
		return fmt.Errorf("-addr/-port: %q is not a port", p)
	}
	if *partitions < 1 {
		return fmt.Errorf("-partitions must be at least 1")
	}
	lvl, err := parseLevel(*logLevel)
	if err != nil {
		return err
	}
	seed := splitList(*topics)
	c, err := start(options{
		addr:       net.JoinHostPort(host, p),
		dataDir:    *dataDir,
		partitions: *partitions,
		topics:     seed,
		syncWrites: *syncWrites,
		logLevel:   lvl,
	})
	if err != nil {
		return err
	}
	defer c.Close()

	where := *dataDir
	if where == "" {
		where = "(memory)"
	}
	fmt.Printf("devkafka ready on %s (data %s, topics %s)\n", strings.Join(c.ListenAddrs(), ","), where, strings.Join(seed, ","))

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	<-sigs
	fmt.Fprintln(os.Stderr, "devkafka: shutting down (Ctrl-C again to force)")
	done := make(chan struct{})
	go func() { c.Close(); close(done) }()
	for {
		select {
		case <-done:
			return nil
		case sig := <-sigs:
			// Only a second Ctrl-C forces: a wrapper script that sends
			// SIGTERM after the terminal's SIGINT reached us too must not
			// cut the final save short.
			if sig == os.Interrupt {
				return errors.New("forced shutdown; data written since the last save may be lost")
			}
		}
	}
}

// options configure one devkafka cluster.
type options struct {
	addr       string // host:port; port 0 picks a free one
	dataDir    string // "" keeps everything in memory
	partitions int    // of seeded and auto-created topics
	topics     []string
	syncWrites bool
	logLevel   kfake.LogLevel
}

// start runs a single-broker kfake cluster and makes sure o.topics exist.
func start(o options) (*kfake.Cluster, error) {
	_, p, err := net.SplitHostPort(o.addr)
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", o.addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return nil, fmt.Errorf("address %q: bad port", o.addr)
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.Ports(port),
		// kfake always listens on 127.0.0.1; honour the host of the address.
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			return net.Listen(network, o.addr)
		}),
		kfake.ClusterID("devkafka"),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(o.partitions),
		kfake.SeedTopics(int32(o.partitions), o.topics...),
		kfake.WithLogger(kfake.BasicLogger(os.Stderr, o.logLevel)),
	}
	if o.dataDir != "" {
		if err := os.MkdirAll(o.dataDir, 0o755); err != nil {
			return nil, fmt.Errorf("data dir: %w", err)
		}
		opts = append(opts, kfake.DataDir(o.dataDir))
	}
	if o.syncWrites {
		opts = append(opts, kfake.SyncWrites())
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("start cluster on %s: %w", o.addr, err)
	}
	// Seeded topics are only created on a fresh data dir; topics added to
	// -topics later must still appear, so create whatever is missing.
	if err := ensureTopics(c.ListenAddrs(), o.topics, int32(o.partitions)); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// ensureTopics creates the topics that do not exist yet. An "already exists"
// answer is fine: the topic survived from an earlier run.
func ensureTopics(brokers, topics []string, partitions int32) error {
	if len(topics) == 0 {
		return nil
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return fmt.Errorf("admin client: %w", err)
	}
	defer cl.Close()
	req := kmsg.NewPtrCreateTopicsRequest()
	req.TimeoutMillis = 5000
	for _, t := range topics {
		rt := kmsg.NewCreateTopicsRequestTopic()
		rt.Topic = t
		rt.NumPartitions = partitions
		rt.ReplicationFactor = 1
		req.Topics = append(req.Topics, rt)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	for _, t := range resp.Topics {
		if t.ErrorCode == 0 || t.ErrorCode == 36 { // 36 = TOPIC_ALREADY_EXISTS
			continue
		}
		return fmt.Errorf("create topic %s: kafka error code %d", t.Topic, t.ErrorCode)
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func parseLevel(s string) (kfake.LogLevel, error) {
	switch strings.ToLower(s) {
	case "none":
		return kfake.LogLevelNone, nil
	case "error":
		return kfake.LogLevelError, nil
	case "warn":
		return kfake.LogLevelWarn, nil
	case "info":
		return kfake.LogLevelInfo, nil
	case "debug":
		return kfake.LogLevelDebug, nil
	}
	return 0, fmt.Errorf("-log-level %q: want none, error, warn, info or debug", s)
}
