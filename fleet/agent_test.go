package fleet

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/edgegw/gateway/admin"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/internal/testkit"
)

const baseYAML = "kafka: {brokers: [\"127.0.0.1:9\"]}\nroutes: [{name: payments, match: \"terminals/+/payments/#\", kafka_topic: payments}]\n"

// testAgent is an agent reading topic for box id, whose "gateway" is the
// base config with the applied layers.
type testAgent struct {
	a       *Agent
	applied atomic.Pointer[config.Config]
	applies atomic.Int64
}

func newTestAgent(t *testing.T, brokers []string, id, topic string, keys []PublicKey) *testAgent {
	t.Helper()
	cfg, err := config.Parse([]byte(baseYAML), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ID, cfg.DataDir, cfg.Kafka.Brokers = id, t.TempDir(), brokers
	cfg.Fleet = config.Fleet{ConfigTopic: topic, StatusInterval: time.Second}
	ta := &testAgent{}
	ta.applied.Store(cfg)
	parse := func(layers [][]byte) (*config.Config, error) {
		return config.ParseLayers([]byte(baseYAML), layers, nil)
	}
	a, err := New(Options{
		Config:   cfg,
		Snapshot: func() *admin.Status { return &admin.Status{GatewayID: id, Time: time.Now()} },
		Link:     func() admin.LinkStatus { return admin.LinkStatus{State: admin.LinkUp} },
		Check:    func(l [][]byte) error { _, err := parse(l); return err },
		Apply: func(l [][]byte) ([]string, error) {
			c, err := parse(l)
			if err == nil {
				ta.applied.Store(c)
				ta.applies.Add(1)
			}
			return nil, err
		},
		Keys:   keys,
		Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ta.a = a
	return ta
}

// fillConfigTopic writes one signed overlay per box, as compaction would
// leave a topic with that many boxes, and returns the bytes written.
func fillConfigTopic(t *testing.T, brokers []string, topic string, boxes int, priv ed25519.PrivateKey) int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.ProducerBatchCompression(kgo.NoCompression()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var total int64
	var recs []*kgo.Record
	for i := 0; i < boxes; i++ {
		key := fmt.Sprintf("box-%05d", i)
		value := []byte(fmt.Sprintf("link: {max_bytes_per_second: %dKiB}\nbuffer: {max_disk_bytes: 2GiB}\nlog: {level: info}\n", 16+i%64))
		recs = append(recs, &kgo.Record{Topic: topic, Key: []byte(key), Value: value, Headers: []kgo.RecordHeader{
			{Key: HeaderConfigVersion, Value: []byte("100")},
			{Key: HeaderConfigSignature, Value: []byte(Sign(priv, key, 100, value))}}})
		total += int64(len(key) + len(value) + 100)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	return total
}

// A box reads only the partitions of its id and of "*": with 1,000 (or
// FLEET_START_BOXES) boxes' overlays on the topic, a start fetches a small
// part of it, and applies its own overlay once.
func TestStartReadsOnlyTheBoxsPartitions(t *testing.T) {
	boxes := 1000
	if s := os.Getenv("FLEET_START_BOXES"); s != "" {
		boxes, _ = strconv.Atoi(s)
	}
	parts := []int32{16}
	if os.Getenv("FLEET_START_BOXES") != "" {
		parts = []int32{1, 16, 64, 256}
	}
	priv, keys, _ := keyPair(t)
	for _, p := range parts {
		t.Run(fmt.Sprintf("%d_partitions", p), func(t *testing.T) {
			topic := "gateway.config"
			k := testkit.Kafka(t, testkit.Topics(p, topic))
			written := fillConfigTopic(t, k.Addrs, topic, boxes, priv)
			id := fmt.Sprintf("box-%05d", boxes/2)
			v := []byte("unrouted: local\nlog: {level: debug}\n")
			// one overlay for every box too
			cl, _ := kgo.NewClient(kgo.SeedBrokers(k.Addrs...), kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)))
			if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: topic, Key: []byte(AllBoxes), Value: v, Headers: []kgo.RecordHeader{
				{Key: HeaderConfigVersion, Value: []byte("7")}, {Key: HeaderConfigSignature, Value: []byte(Sign(priv, AllBoxes, 7, v))}}}).FirstErr(); err != nil {
				t.Fatal(err)
			}
			cl.Close()

			ta := newTestAgent(t, k.Addrs, id, topic, keys)
			started := time.Now()
			ta.a.Start()
			defer ta.a.Close()
			testkit.Eventually(t, time.Minute, func() bool {
				c := ta.applied.Load()
				st := ta.a.configState() // the agent records what it applied after the apply returned
				return c.Unrouted == "local" && c.Log.Level == "info" && c.Link.MaxBytesPerSecond == int64(16+(boxes/2)%64)<<10 &&
					st.Overlays[AllBoxes] == 7 && st.Overlays[id] == 100
			}, "the box's own overlay over the one for every box applied")
			took := time.Since(started)
			in, out := MeterBytes(ta.a.m.configReg)
			t.Logf("FIGURE start with %d boxes' overlays (%d KiB of records) on %d partitions: fetched %d B, sent %d B, %d apply, applied in %v",
				boxes, written>>10, p, in, out, ta.applies.Load(), took.Round(time.Millisecond))
			if p >= 16 && in > written/4 {
				t.Fatalf("fetched %d bytes of a %d-byte topic with %d partitions: the box read more than its partitions", in, written, p)
			}
			if n := ta.applies.Load(); n > 2 {
				t.Fatalf("%d applies at a start, want at most one per partition read (what a fetch brings is applied together)", n)
			}
			st := ta.a.configState()
			if st.Overlays[id] != 100 || st.Overlays[AllBoxes] != 7 || len(st.Refused) != 0 {
				t.Fatalf("config state: %+v", st)
			}
			if _, err := os.Stat(filepath.Join(ta.a.opts.Config.DataDir, StoreFile)); err != nil {
				t.Fatalf("the applied overlays were not kept: %v", err)
			}
		})
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// A status record rides below the most urgent route: after the link
// returns, it waits while that route has a backlog (up to one interval).
func TestStatusWaitsForTheUrgentRoute(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(1, "gateway.status"))
	cfg, err := config.Parse([]byte(baseYAML), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ID, cfg.DataDir, cfg.Kafka.Brokers = "ship-1", t.TempDir(), k.Addrs
	cfg.Fleet = config.Fleet{StatusTopic: "gateway.status", StatusInterval: time.Minute}
	var state atomic.Value
	state.Store(admin.LinkDown)
	var urgent atomic.Int64
	urgent.Store(5)
	a, err := New(Options{
		Config:        cfg,
		Started:       time.Now().Add(-time.Minute),
		Snapshot:      func() *admin.Status { return &admin.Status{GatewayID: "ship-1", Time: time.Now()} },
		Link:          func() admin.LinkStatus { return admin.LinkStatus{State: state.Load().(string)} },
		UrgentBacklog: urgent.Load,
		Logger:        testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	a.Start()
	defer a.Close()
	c := testkit.Consume(t, k.Addrs, []string{"gateway.status"})
	time.Sleep(1500 * time.Millisecond) // the agent sees the link down
	state.Store(admin.LinkUp)
	// Payments drain for a while; a status record sent now would compete.
	time.Sleep(2500 * time.Millisecond)
	cleared := time.Now()
	urgent.Store(0)
	recs := c.WaitN(t, 1, 30*time.Second)
	var r Record
	if err := json.Unmarshal(recs[0].Value, &r); err != nil {
		t.Fatal(err)
	}
	if r.At.Before(cleared.Add(-time.Millisecond)) {
		t.Fatalf("the status record went at %v, before the urgent route's backlog was gone at %v", r.At, cleared)
	}
	if r.LastOutage.Ended == nil || r.LastOutage.Seconds < 60 {
		t.Fatalf("the first record after the link returned: outage %+v (the box was down since its start a minute ago)", r.LastOutage)
	}
}
