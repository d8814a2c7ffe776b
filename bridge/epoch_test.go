package bridge

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/internal/testkit"
)

// idempotencyKeys checks that no two records carry the same gw.id +
// gw.epoch + gw.seq, and returns how many distinct payloads arrived.
func idempotencyKeys(t testing.TB, recs []*kgo.Record) int {
	t.Helper()
	keys := map[string]string{}
	payloads := map[string]bool{}
	for _, r := range recs {
		h := headerMap(r)
		if h["gw.epoch"] == "" {
			t.Fatalf("record at %d/%d has no gw.epoch header", r.Partition, r.Offset)
		}
		k := h["gw.id"] + "|" + h["gw.epoch"] + "|" + h["gw.seq"]
		if prev, ok := keys[k]; ok && prev != string(r.Value) {
			t.Errorf("idempotency key %s names two messages: %q and %q", k, prev, r.Value)
		}
		keys[k] = string(r.Value)
		payloads[string(r.Value)] = true
	}
	return len(payloads)
}

// appendN appends n records with payloads prefix-0..n-1.
func appendN(t testing.TB, buf *buffer.Buffer, route, topic, prefix string, n int) {
	t.Helper()
	for i := range n {
		c := fmt.Sprintf("term-%d", i%5)
		if _, err := buf.AppendWait(buffer.Record{Route: route, Received: time.Now(), KafkaTopic: topic,
			Key: []byte(c), MQTTTopic: "terminals/" + c + "/" + route, ClientID: c,
			Payload: []byte(fmt.Sprintf("%s-%d", prefix, i))}); err != nil {
			t.Fatal(err)
		}
	}
}

// A box loses its buffer (wiped data_dir, new card, or a corrupt file moved
// aside) after 300 payments drained. The new buffer numbers gw.seq from 1
// again: its 100 new payments must all reach Kafka (exactly-once: the old
// marks at seq 300 must not delete them) and no idempotency key may repeat
// (at-least-once consumers drop duplicates by gw.id+gw.epoch+gw.seq).
func TestLostBufferNewEpoch(t *testing.T) {
	for _, tc := range []struct {
		name        string
		exactlyOnce bool
		quarantine  bool
	}{
		{"wiped/exactly-once", true, false},
		{"wiped/at-least-once", false, false},
		{"quarantined/exactly-once", true, true},
		{"quarantined/at-least-once", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := testkit.Kafka(t, testkit.Topics(2, "payments"))
			edit := func(o *Options) { o.Kafka.ExactlyOnce = tc.exactlyOnce }
			dir := t.TempDir()
			path := filepath.Join(dir, "buffer.db")
			buf, err := buffer.Open(buffer.Options{Path: path})
			if err != nil {
				t.Fatal(err)
			}
			firstEpoch := buf.Epoch()
			appendN(t, buf, "payments", "payments", "old", 300)
			b := startBridge(t, buf, k.Addrs, edit)
			waitDrained(t, buf, 60*time.Second)
			b.Close()
			buf.Close()

			if tc.quarantine {
				if err := os.WriteFile(path, []byte(strings.Repeat("not a bbolt file ", 512)), 0o600); err != nil {
					t.Fatal(err)
				}
			} else if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			buf, err = buffer.Open(buffer.Options{Path: path})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { buf.Close() })
			if tc.quarantine && buf.Quarantined() == "" {
				t.Fatal("the corrupt file was not quarantined")
			}
			if buf.Epoch() == firstEpoch || buf.NextSeq() != 1 {
				t.Fatalf("new buffer: epoch %s (old %s), next seq %d", buf.Epoch(), firstEpoch, buf.NextSeq())
			}
			appendN(t, buf, "payments", "payments", "new", 100)
			startBridge(t, buf, k.Addrs, edit)
			waitDrained(t, buf, 60*time.Second)

			recs := readCommitted(t, k.Addrs, "payments")
			if n := idempotencyKeys(t, recs); n != 400 {
				t.Fatalf("%d distinct payments in Kafka, want 400 (300 old + 100 new)", n)
			}
		})
	}
}

// Reading the marks after 100,000 transactions reads a bounded tail, not the
// history: the reader makes a handful of fetches, whatever the history.
// The time it takes is printed (the figure of the reconnect cost).
func TestMarksReadBounded(t *testing.T) {
	n := 100_000
	if testing.Short() {
		n = 5_000
	}
	k := testkit.Kafka(t, testkit.Topics(1, "payments"))
	// The history: n transactions of this gateway's marks from an earlier
	// buffer life, then the current life's. Written by franz-go's
	// transactional producers in parallel (each transaction one mark record
	// and its commit marker, as the bridge writes them).
	createOffsetsTopic(t, k.Addrs)
	start := time.Now()
	const producers = 8
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl, err := kgo.NewClient(kgo.SeedBrokers(k.Addrs...), kgo.TransactionalID(fmt.Sprintf("history-%d", p)),
				kgo.DefaultProduceTopic(OffsetsTopic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
			if err != nil {
				t.Error(err)
				return
			}
			defer cl.Close()
			ctx := context.Background()
			for i := range n / producers {
				v, _ := json.Marshal(markValue{Format: markFormat, Epoch: "old-life", Marks: map[string]uint64{"payments": uint64(i)}})
				if err := cl.BeginTransaction(); err != nil {
					t.Error(err)
					return
				}
				if err := cl.ProduceSync(ctx, &kgo.Record{Key: []byte(gwID), Value: v}).FirstErr(); err != nil {
					t.Error(err)
					return
				}
				if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("wrote %d transactions of history in %v", n, time.Since(start).Round(time.Millisecond))

	// The current life drains 50 records in a few transactions.
	buf := openBuffer(t)
	appendN(t, buf, "payments", "payments", "p", 50)
	b := startBridge(t, buf, k.Addrs, func(o *Options) { o.Kafka.ExactlyOnce = true; o.MaxBatchRecords = 10; o.MinBatchRecords = 10 })
	waitDrained(t, buf, 60*time.Second)
	b.Close()

	cfg := sarama.NewConfig()
	cfg.Version = sarama.V2_8_0_0
	cl, err := sarama.NewClient(k.Addrs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	r := &markReader{cl: cl, version: cfg.Version, partition: 0, deadline: time.Now().Add(time.Minute)}
	start = time.Now()
	v, found, err := r.last([]byte(gwID))
	took := time.Since(start)
	if err != nil || !found {
		t.Fatalf("reading the marks: found %v, %v", found, err)
	}
	var mv markValue
	if err := json.Unmarshal(v, &mv); err != nil {
		t.Fatal(err)
	}
	if mv.Epoch != buf.Epoch() || mv.Marks["payments"] != 50 {
		t.Fatalf("last mark %s, want epoch %s with payments at 50", v, buf.Epoch())
	}
	t.Logf("marks read after %d transactions: %v, %d fetches", n, took, r.fetches)
	fmt.Printf("marks read after %d transactions: %v (%d fetches)\n", n, took, r.fetches)
	if r.fetches > 4 {
		t.Fatalf("%d fetches to read the marks: the read is not bounded", r.fetches)
	}

	// A whole reconnect of the exactly-once drain: client, producer id,
	// marks topic check, marks read, skipping what they cover.
	nb, err := New(buf, Options{Kafka: config.Kafka{Brokers: k.Addrs, Version: "2.8.0", ExactlyOnce: true}, GatewayID: gwID, PresenceInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	s, err := nb.connect()
	took = time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	s.shutdown()
	t.Logf("exactly-once reconnect after %d transactions: %v", n, took)
	fmt.Printf("exactly-once reconnect after %d transactions: %v\n", n, took)
}

func createOffsetsTopic(t testing.TB, addrs []string) {
	t.Helper()
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V2_8_0_0
	adm, err := sarama.NewClusterAdmin(addrs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	compact := "compact"
	if err := adm.CreateTopic(OffsetsTopic, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: -1,
		ConfigEntries: map[string]*string{"cleanup.policy": &compact}}, false); err != nil {
		t.Fatal(err)
	}
}

// Two boxes flashed from one image run with the same gateway id (at-least-
// once: no transactional fencing to notice it). Their presence claims expose
// each other: both report a duplicated id.
func TestDuplicateGatewayIDDetected(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(1, "payments"))
	fast := func(o *Options) { o.PresenceInterval = 100 * time.Millisecond }
	a := startBridge(t, openBuffer(t), k.Addrs, fast)
	b := startBridge(t, openBuffer(t), k.Addrs, fast)
	testkit.Eventually(t, 30*time.Second, func() bool { return a.DuplicateID() != "" && b.DuplicateID() != "" },
		"duplicate id not detected: a %q, b %q", a.DuplicateID(), b.DuplicateID())
}

// One box whose buffer was replaced (a new epoch) is not a duplicate: the
// earlier life's claim predates this process's first claim.
func TestNewBufferLifeIsNotADuplicateID(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(1, "payments"))
	fast := func(o *Options) { o.PresenceInterval = 100 * time.Millisecond }
	old := startBridge(t, openBuffer(t), k.Addrs, fast)
	testkit.Eventually(t, 30*time.Second, func() bool { return old.claimCount() >= 2 }, "no claims")
	old.Close()
	b := startBridge(t, openBuffer(t), k.Addrs, fast)
	testkit.Eventually(t, 30*time.Second, func() bool { return b.claimCount() >= 4 }, "no claims")
	if d := b.DuplicateID(); d != "" {
		t.Fatalf("reported a duplicate id after a buffer replacement: %s", d)
	}
}
