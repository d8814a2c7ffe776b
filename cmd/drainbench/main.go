// Command drainbench measures the drain of a buffered backlog to a local
// Kafka-protocol cluster (kfake, in-process) against a bare sarama async
// producer sending the same records with the same settings, in one run,
// alternating, and prints medians and the ratio.
//
//	drainbench -n 1000000 -size 200 -rounds 3
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/IBM/sarama"

	"github.com/edgegw/gateway/bridge"
	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/internal/testkit"
)

func main() {
	n := flag.Int("n", 1_000_000, "records in the backlog")
	size := flag.Int("size", 200, "payload bytes")
	clients := flag.Int("clients", 100, "distinct client ids (keys)")
	rounds := flag.Int("rounds", 3, "alternating rounds of each")
	compression := flag.String("compression", "zstd", "none | gzip | snappy | lz4 | zstd (both sides)")
	partitions := flag.Int("partitions", 3, "partitions of the topic")
	minBatch := flag.Int("min-batch", 0, "bridge MinBatchRecords (0 = the bridge's default)")
	exactlyOnce := flag.Bool("exactly-once", false, "the bridge drains transactionally (kafka.exactly_once); the bare producer stays idempotent, not transactional")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the bridge's drains (not the bare producer's) to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fail(err)
		}
		defer f.Close()
		profile = f
	}

	kcfg := config.Kafka{ClientID: "drainbench", Version: "2.8.0", Compression: *compression}
	var bridgeRates, bareRates []float64
	for r := 0; r < *rounds; r++ {
		topic := fmt.Sprintf("bench-%d", r)
		cluster, err := testkit.StartKafka(testkit.Topics(int32(*partitions), topic+"-bridge", topic+"-bare"))
		if err != nil {
			fail(err)
		}
		kcfg.Brokers = cluster.Addrs
		eos := kcfg
		eos.ExactlyOnce = *exactlyOnce

		rate, err := drainBridge(eos, topic+"-bridge", *n, *size, *clients, *minBatch)
		if err != nil {
			fail(err)
		}
		bridgeRates = append(bridgeRates, rate)
		bare, err := bareSarama(kcfg, topic+"-bare", *n, *size, *clients)
		if err != nil {
			fail(err)
		}
		bareRates = append(bareRates, bare)
		cluster.Close()
		fmt.Printf("round %d: bridge drain %.0f rec/s, bare sarama %.0f rec/s (ratio %.2f)\n", r+1, rate, bare, rate/bare)
	}
	mb, ms := median(bridgeRates), median(bareRates)
	fmt.Printf("\ndrain of %d x %d B (compression %s), medians of %d rounds:\n", *n, *size, *compression, *rounds)
	fmt.Printf("  bridge (buffer -> Kafka, delete after ack): %.0f records/s\n", mb)
	fmt.Printf("  bare sarama async producer:                %.0f records/s\n", ms)
	fmt.Printf("  ratio bridge/bare: %.2f (target >= 0.5)\n", mb/ms)
	fmt.Printf("DRAIN bridge=%.0f bare=%.0f\n", mb, ms) // for bench/run.sh
}

// profile receives the CPU profile of the bridge's drains (-cpuprofile);
// pprof keeps one profile per file, so only the first round's is written.
var profile *os.File

func fail(err error) {
	fmt.Fprintln(os.Stderr, "drainbench:", err)
	os.Exit(1)
}

func payload(size int) []byte { return bytes.Repeat([]byte("p"), size) }

// drainBridge fills a fresh buffer with n records (outside the timing), then
// times the bridge draining it until the buffer is empty.
func drainBridge(k config.Kafka, topic string, n, size, clients, minBatch int) (float64, error) {
	dir, err := os.MkdirTemp("", "drainbench-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	buf, err := buffer.Open(buffer.Options{Path: filepath.Join(dir, "buffer.db")})
	if err != nil {
		return 0, err
	}
	defer buf.Close()
	p := payload(size)
	var wg sync.WaitGroup
	var appendErr error
	var mu sync.Mutex
	for i := 0; i < n; i++ {
		wg.Add(1)
		id := "term-" + strconv.Itoa(i%clients)
		err := buf.Append(&buffer.Append{
			Record: buffer.Record{Route: "bench", Received: time.Now(), KafkaTopic: topic, Key: []byte(id),
				MQTTTopic: "terminals/" + id + "/telemetry", ClientID: id, Payload: p},
			Done: func(r buffer.Result) {
				if r.Err != nil {
					mu.Lock()
					appendErr = r.Err
					mu.Unlock()
				}
				wg.Done()
			},
		})
		if err != nil {
			return 0, err
		}
	}
	wg.Wait()
	if appendErr != nil {
		return 0, appendErr
	}
	br, err := bridge.New(buf, bridge.Options{Kafka: k, GatewayID: "bench", MinBatchRecords: minBatch, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return 0, err
	}
	if profile != nil {
		if err := pprof.StartCPUProfile(profile); err == nil {
			defer pprof.StopCPUProfile()
		}
		profile = nil
	}
	start := time.Now()
	br.Start()
	deadline := time.Now().Add(10 * time.Minute)
	for {
		if m, _ := buf.Total(); m == 0 {
			break
		}
		if time.Now().After(deadline) {
			br.Close()
			return 0, fmt.Errorf("bridge did not drain %d records in 10 minutes", n)
		}
		time.Sleep(2 * time.Millisecond)
	}
	elapsed := time.Since(start)
	br.Close()
	return float64(n) / elapsed.Seconds(), nil
}

// bareSarama sends the same records with a sarama async producer configured
// as the bridge configures it, and waits for every acknowledgement.
func bareSarama(k config.Kafka, topic string, n, size, clients int) (float64, error) {
	cfg, err := bridge.NewSaramaConfig(k)
	if err != nil {
		return 0, err
	}
	cfg.Producer.Return.Successes = true
	cfg.Producer.Return.Errors = true
	prod, err := sarama.NewAsyncProducer(k.Brokers, cfg)
	if err != nil {
		return 0, err
	}
	p := payload(size)
	keys := make([]sarama.ByteEncoder, clients)
	for i := range keys {
		keys[i] = sarama.ByteEncoder("term-" + strconv.Itoa(i))
	}
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		var firstErr error
		for acked := 0; acked < n; {
			select {
			case <-prod.Successes():
				acked++
			case e := <-prod.Errors():
				acked++
				if firstErr == nil {
					firstErr = e.Err
				}
			}
		}
		done <- firstErr
	}()
	now := time.Now()
	for i := 0; i < n; i++ {
		id := "term-" + strconv.Itoa(i%clients)
		prod.Input() <- &sarama.ProducerMessage{
			Topic: topic, Key: keys[i%clients], Value: sarama.ByteEncoder(p), Timestamp: now,
			Headers: []sarama.RecordHeader{
				{Key: []byte("mqtt.topic"), Value: []byte("terminals/" + id + "/telemetry")},
				{Key: []byte("mqtt.client_id"), Value: []byte(id)},
				{Key: []byte("gw.id"), Value: []byte("bench")},
				{Key: []byte("gw.seq"), Value: []byte(strconv.Itoa(i + 1))},
			},
		}
	}
	err = <-done
	elapsed := time.Since(start)
	prod.Close()
	if err != nil {
		return 0, err
	}
	return float64(n) / elapsed.Seconds(), nil
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}
