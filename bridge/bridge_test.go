package bridge

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/internal/testkit"
	"github.com/edgegw/gateway/rules"
)

const gwID = "edge-test"

func openBuffer(t testing.TB) *buffer.Buffer {
	t.Helper()
	buf, err := buffer.Open(buffer.Options{Path: filepath.Join(t.TempDir(), "buffer.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { buf.Close() })
	return buf
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("test", t.Name())
	}
	return nil
}

// startBridge starts a bridge on buf towards addrs; edit adjusts options.
func startBridge(t testing.TB, buf *buffer.Buffer, addrs []string, edit func(*Options)) *Bridge {
	t.Helper()
	opts := Options{
		Kafka:     config.Kafka{Brokers: addrs, ClientID: "bridge-test", Version: "2.8.0", Compression: "zstd"},
		GatewayID: gwID,
		Logger:    testLogger(t),
	}
	if edit != nil {
		edit(&opts)
	}
	b, err := New(buf, opts)
	if err != nil {
		t.Fatal(err)
	}
	b.Start()
	t.Cleanup(func() { b.Close() })
	return b
}

// appender writes records for a set of keys round-robin and remembers them.
type appender struct {
	buf   *buffer.Buffer
	route string
	topic string
	keys  int

	mu   sync.Mutex
	recs map[uint64]buffer.Record
	n    int
}

func newAppender(buf *buffer.Buffer, route, topic string, keys int) *appender {
	return &appender{buf: buf, route: route, topic: topic, keys: keys, recs: map[uint64]buffer.Record{}}
}

func (a *appender) append(t testing.TB, count int) {
	t.Helper()
	for range count {
		a.mu.Lock()
		i := a.n
		a.n++
		a.mu.Unlock()
		client := fmt.Sprintf("term-%02d", i%a.keys)
		rec := buffer.Record{
			Route:      a.route,
			Received:   time.Now().Add(-time.Duration(i%7) * time.Hour),
			KafkaTopic: a.topic,
			Key:        []byte(client),
			MQTTTopic:  "terminals/" + client + "/" + a.route,
			ClientID:   client,
			Payload:    []byte(fmt.Sprintf("payload %d \x00\xff", i)),
		}
		res, err := a.buf.AppendWait(rec)
		if err != nil {
			t.Errorf("append: %v", err)
			return
		}
		rec.Seq = res.Seq
		a.mu.Lock()
		a.recs[res.Seq] = rec
		a.mu.Unlock()
	}
}

// keepAppending appends 20 records every few milliseconds in the background
// until the returned stop is called (which waits for the last append).
func (a *appender) keepAppending(t testing.TB) (stop func()) {
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-quit:
				return
			default:
			}
			a.append(t, 20)
			time.Sleep(5 * time.Millisecond) // pacing of the load, not synchronisation
		}
	}()
	return func() { close(quit); wg.Wait() }
}

func (a *appender) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.recs)
}

func headerMap(r *kgo.Record) map[string]string {
	m := map[string]string{}
	for _, h := range r.Headers {
		m[h.Key] = string(h.Value)
	}
	return m
}

func seqOf(t testing.TB, r *kgo.Record) uint64 {
	t.Helper()
	s, err := strconv.ParseUint(headerMap(r)["gw.seq"], 10, 64)
	if err != nil {
		t.Fatalf("record at %d/%d: gw.seq: %v", r.Partition, r.Offset, err)
	}
	return s
}

func waitDrained(t testing.TB, buf *buffer.Buffer, timeout time.Duration) {
	t.Helper()
	testkit.Eventually(t, timeout, func() bool { n, _ := buf.Total(); return n == 0 }, "buffer not drained: %v", buf.Stats())
}

// checkDelivery asserts every appended record is in Kafka at least once,
// that for each key the first occurrences are in gw.seq order, and returns
// the number of duplicates.
func checkDelivery(t testing.TB, recs []*kgo.Record, want map[uint64]buffer.Record) (dups int) {
	t.Helper()
	seen := map[uint64]bool{}
	lastByKey := map[string]uint64{}
	// ReadAll sorts by partition then offset: a key lives in one partition.
	for _, r := range recs {
		seq := seqOf(t, r)
		if seen[seq] {
			dups++
			continue
		}
		seen[seq] = true
		k := string(r.Key)
		if last := lastByKey[k]; seq < last {
			t.Errorf("key %s: seq %d first delivered after %d (partition %d offset %d)", k, seq, last, r.Partition, r.Offset)
		}
		lastByKey[k] = seq
	}
	missing := 0
	for seq := range want {
		if !seen[seq] {
			missing++
			if missing < 10 {
				t.Errorf("seq %d appended but never reached Kafka", seq)
			}
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d records lost", missing, len(want))
	}
	return dups
}

func TestDrainRecordFormat(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(3, "payments"))
	buf := openBuffer(t)
	received := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	in := []buffer.Record{
		{Route: "payments", Received: received, KafkaTopic: "payments", Key: []byte("t1"), MQTTTopic: "terminals/t1/payments/x", ClientID: "t1",
			Payload: []byte{0, 1, 2, 0xff, 0xfe, 'a'},
			Headers: []buffer.Header{{Key: "user-prop", Value: []byte("v1")}, {Key: "user-prop", Value: []byte("v2")}, {Key: "mqtt.response_topic", Value: []byte("terminals/t1/replies")}, {Key: "mqtt.correlation_data", Value: []byte{9, 8, 7}}}},
		{Route: "payments", Received: received.Add(time.Second), KafkaTopic: "payments", Key: []byte("t2"), MQTTTopic: "terminals/t2/payments", ClientID: "t2", Payload: []byte{}},
		{Route: "payments", Received: received.Add(2 * time.Second), KafkaTopic: "payments", Key: []byte("t1"), MQTTTopic: "terminals/t1/payments", ClientID: "t1", Payload: bytes.Repeat([]byte("x"), 100000)},
	}
	for i := range in {
		res, err := buf.AppendWait(in[i])
		if err != nil {
			t.Fatal(err)
		}
		in[i].Seq = res.Seq
	}
	reg := prometheus.NewRegistry()
	b := startBridge(t, buf, k.Addrs, func(o *Options) { o.Registerer = reg })
	waitDrained(t, buf, 30*time.Second)

	out := testkit.ReadAll(t, k.Addrs, "payments")
	if len(out) != len(in) {
		t.Fatalf("%d records in Kafka, want %d", len(out), len(in))
	}
	bySeq := map[uint64]*kgo.Record{}
	for _, r := range out {
		bySeq[seqOf(t, r)] = r
	}
	for _, want := range in {
		got := bySeq[want.Seq]
		if got == nil {
			t.Fatalf("seq %d missing", want.Seq)
		}
		if got.Topic != want.KafkaTopic || !bytes.Equal(got.Key, want.Key) {
			t.Errorf("seq %d: topic/key %s/%q, want %s/%q", want.Seq, got.Topic, got.Key, want.KafkaTopic, want.Key)
		}
		if !bytes.Equal(got.Value, want.Payload) || got.Value == nil {
			t.Errorf("seq %d: value differs (%d bytes, want %d)", want.Seq, len(got.Value), len(want.Payload))
		}
		if got.Timestamp.UnixMilli() != want.Received.UnixMilli() {
			t.Errorf("seq %d: timestamp %v, want %v", want.Seq, got.Timestamp, want.Received)
		}
		wantH := []kgo.RecordHeader{
			{Key: "mqtt.topic", Value: []byte(want.MQTTTopic)},
			{Key: "mqtt.client_id", Value: []byte(want.ClientID)},
			{Key: "gw.id", Value: []byte(gwID)},
			{Key: "gw.seq", Value: []byte(strconv.FormatUint(want.Seq, 10))},
		}
		for _, h := range want.Headers {
			wantH = append(wantH, kgo.RecordHeader{Key: h.Key, Value: h.Value})
		}
		if len(got.Headers) != len(wantH) {
			t.Fatalf("seq %d: headers %v, want %v", want.Seq, got.Headers, wantH)
		}
		for i := range wantH {
			if got.Headers[i].Key != wantH[i].Key || !bytes.Equal(got.Headers[i].Value, wantH[i].Value) {
				t.Errorf("seq %d header %d: %s=%q, want %s=%q", want.Seq, i, got.Headers[i].Key, got.Headers[i].Value, wantH[i].Key, wantH[i].Value)
			}
		}
	}
	// Same key, same partition, in order.
	if bySeq[in[0].Seq].Partition != bySeq[in[2].Seq].Partition || bySeq[in[0].Seq].Offset > bySeq[in[2].Seq].Offset {
		t.Errorf("key t1 records not in order in one partition")
	}

	st := b.Link()
	if st.State != StateUp || st.SentRecords != uint64(len(in)) || st.LastAck.IsZero() || !st.DownSince.IsZero() {
		t.Errorf("link status %+v", st)
	}
	if v := testutil.ToFloat64(b.m.sent); v != float64(len(in)) {
		t.Errorf("records sent metric %v", v)
	}
	if v := testutil.ToFloat64(b.m.up); v != 1 {
		t.Errorf("link up gauge %v", v)
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n == 0 {
		t.Errorf("metrics gather: %d, %v", n, err)
	}
}

func TestOrderPerKeyAcrossPartitions(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(8, "telemetry", "payments"))
	buf := openBuffer(t)
	a := newAppender(buf, "telemetry", "telemetry", 25)
	p := newAppender(buf, "payments", "payments", 10)
	// Small batches: many batches in flight at once.
	startBridge(t, buf, k.Addrs, func(o *Options) {
		o.MaxBatchRecords = 257
		o.Priority = func(r string) int {
			if r == "payments" {
				return 0
			}
			return 5
		}
	})
	var wg sync.WaitGroup
	for _, ap := range []*appender{a, p} {
		wg.Add(1)
		go func() { defer wg.Done(); ap.append(t, 3000) }()
	}
	wg.Wait()
	waitDrained(t, buf, 60*time.Second)
	for _, ap := range []*appender{a, p} {
		recs := testkit.ReadAll(t, k.Addrs, ap.topic)
		if dups := checkDelivery(t, recs, ap.recs); dups != 0 {
			t.Errorf("%s: %d duplicates without any failure", ap.topic, dups)
		}
		parts := map[int32]bool{}
		for _, r := range recs {
			parts[r.Partition] = true
		}
		if len(parts) < 4 {
			t.Errorf("%s: records in only %d partitions", ap.topic, len(parts))
		}
	}
}

func TestKafkaDownAtStart(t *testing.T) {
	port := testkit.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	buf := openBuffer(t)
	a := newAppender(buf, "payments", "payments", 5)
	a.append(t, 300)
	b := startBridge(t, buf, []string{addr}, nil)
	testkit.Eventually(t, 30*time.Second, func() bool { return b.Link().State == StateDown }, "link never reported down")
	st := b.Link()
	if st.DownSince.IsZero() || st.LastError == "" {
		t.Errorf("down status without DownSince/LastError: %+v", st)
	}
	if n, _ := buf.Total(); n != 300 {
		t.Fatalf("buffer has %d records while Kafka is down, want 300", n)
	}
	a.append(t, 200)

	k := testkit.Kafka(t, testkit.Ports(port), testkit.Topics(3, "payments"))
	waitDrained(t, buf, 60*time.Second)
	checkDelivery(t, testkit.ReadAll(t, k.Addrs, "payments"), a.recs)
	if st := b.Link(); st.State != StateUp || st.SentRecords != 500 {
		t.Errorf("after Kafka came up: %+v", st)
	}
}

// TestFlappingLink drives the link through refuse, hang and pass several
// times while records keep arriving: nothing may be lost, first occurrences
// per key stay in order; duplicates are allowed and reported.
func TestFlappingLink(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about a minute: hangs wait for network timeouts")
	}
	k := testkit.Kafka(t, testkit.Topics(4, "payments"), testkit.WithProxy())
	buf := openBuffer(t)
	a := newAppender(buf, "payments", "payments", 12)
	b := startBridge(t, buf, k.Addrs, func(o *Options) { o.MaxBatchRecords = 100 })

	stopAppending := a.keepAppending(t)
	acked := func() uint64 { return b.Link().SentRecords }
	for cycle := range 3 {
		before := acked()
		k.SetMode(t, testkit.Pass)
		testkit.Eventually(t, 60*time.Second, func() bool { return acked() > before+200 }, "cycle %d: no progress while passing", cycle)

		k.SetMode(t, testkit.Refuse)
		testkit.Eventually(t, 30*time.Second, func() bool { return b.Link().State == StateDown }, "cycle %d: refuse: link not reported down", cycle)
		n := a.count()
		testkit.Eventually(t, 30*time.Second, func() bool { return a.count() > n+100 }, "cycle %d: appends stalled while Kafka refused", cycle)

		k.SetMode(t, testkit.Pass)
		testkit.Eventually(t, 60*time.Second, func() bool { return b.Link().State == StateUp }, "cycle %d: link not back up", cycle)

		k.SetMode(t, testkit.Hang)
		n = a.count()
		testkit.Eventually(t, 60*time.Second, func() bool { return b.Link().State == StateDown }, "cycle %d: hang: link not reported down", cycle)
		if a.count() <= n {
			t.Errorf("cycle %d: no appends while Kafka hung", cycle)
		}
		t.Logf("cycle %d: %d appended, %d acked, link %+v", cycle, a.count(), acked(), b.Link())
	}
	k.SetMode(t, testkit.Pass)
	stopAppending()
	waitDrained(t, buf, 120*time.Second)
	recs := testkit.ReadAll(t, k.Addrs, "payments")
	dups := checkDelivery(t, recs, a.recs)
	t.Logf("flapping: %d records appended, %d in Kafka, %d duplicates", a.count(), len(recs), dups)
}

func TestCloseWhileKafkaHangs(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(2, "payments"), testkit.WithProxy())
	buf := openBuffer(t)
	a := newAppender(buf, "payments", "payments", 4)
	const closeTimeout = time.Second
	b := startBridge(t, buf, k.Addrs, func(o *Options) { o.CloseTimeout = closeTimeout })
	a.append(t, 100)
	waitDrained(t, buf, 30*time.Second)

	k.SetMode(t, testkit.Hang)
	a.append(t, 100)
	testkit.Eventually(t, 10*time.Second, func() bool { return testutil.ToFloat64(b.m.inflight) > 0 }, "nothing in flight")
	start := time.Now()
	b.Close()
	// Close waits CloseTimeout, then cuts connections and gives sarama 2s.
	if took := time.Since(start); took > closeTimeout+5*time.Second {
		t.Errorf("Close took %v with Kafka hanging", took)
	}
	b.Close() // twice is fine
	left, _ := buf.Total()
	if left == 0 {
		t.Fatal("records deleted although Kafka never answered")
	}
	// Everything is either still buffered or in Kafka.
	k.SetMode(t, testkit.Pass)
	inKafka := map[uint64]bool{}
	for _, r := range testkit.ReadAll(t, k.Addrs, "payments") {
		inKafka[seqOf(t, r)] = true
	}
	stored, err := buf.Read(nil, func(string) int { return 0 }, 1<<20, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	inBuf := map[uint64]bool{}
	for _, r := range stored {
		inBuf[r.Seq] = true
	}
	for seq := range a.recs {
		if !inKafka[seq] && !inBuf[seq] {
			t.Errorf("seq %d neither in Kafka nor buffered", seq)
		}
	}
	t.Logf("after Close: %d buffered, %d in Kafka", len(inBuf), len(inKafka))
}

func TestNewValidates(t *testing.T) {
	buf := openBuffer(t)
	good := Options{Kafka: config.Kafka{Brokers: []string{"127.0.0.1:1"}}, GatewayID: "g"}
	cases := map[string]func(*Options){
		"no brokers":  func(o *Options) { o.Kafka.Brokers = nil },
		"no id":       func(o *Options) { o.GatewayID = "" },
		"version":     func(o *Options) { o.Kafka.Version = "banana" },
		"compression": func(o *Options) { o.Kafka.Compression = "brotli" },
		"sasl":        func(o *Options) { o.Kafka.SASL.Mechanism = "GSSAPI" },
		"tls ca":      func(o *Options) { o.Kafka.TLS = config.KafkaTLS{Enabled: true, CAFile: "/nonexistent/ca.pem"} },
		"zstd on 2.0": func(o *Options) { o.Kafka.Version = "2.0.0"; o.Kafka.Compression = "zstd" },
	}
	for name, edit := range cases {
		o := good
		edit(&o)
		if _, err := New(buf, o); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
	if _, err := New(nil, good); err == nil {
		t.Error("nil buffer accepted")
	}
	b, err := New(buf, good)
	if err != nil {
		t.Fatal(err)
	}
	if st := b.Link(); st.State != StateConnecting {
		t.Errorf("before Start: %+v", st)
	}
	// Close without Start, twice, then Start: nothing runs.
	b.Close()
	b.Close()
	b.Start()
	reg := prometheus.NewRegistry()
	good.Registerer = reg
	if _, err := New(buf, good); err != nil {
		t.Fatal(err)
	}
	if _, err := New(buf, good); err == nil {
		t.Error("second bridge on the same registry accepted")
	}
}

// A route renamed by a reload leaves a backlog under its old name: it drains
// before the new route's newer messages, so one client's records reach Kafka
// in publish order across the rename (one partition: the order is Kafka's).
func TestRenamedRouteBacklogDrainsFirst(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(1, "payments"))
	buf := openBuffer(t)
	var want []uint64
	for i, route := range []string{"pay-old", "pay-old", "pay-old", "payments", "payments"} {
		res, err := buf.AppendWait(buffer.Record{Route: route, Received: time.Now(), KafkaTopic: "payments",
			Key: []byte("t1"), ClientID: "t1", MQTTTopic: "terminals/t1/payments", Payload: []byte(fmt.Sprint(i))})
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, res.Seq)
	}
	rs := rules.Compile(&config.Config{Routes: []config.Route{{Name: "payments", Match: "terminals/+/payments/#", KafkaTopic: "payments", Priority: 0}}})
	startBridge(t, buf, k.Addrs, func(o *Options) { o.Priority = rs.Priority })
	waitDrained(t, buf, 30*time.Second)
	out := testkit.ReadAll(t, k.Addrs, "payments")
	var got []uint64
	for _, r := range out {
		got = append(got, seqOf(t, r))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Kafka order %v, want publish order %v", got, want)
	}
}
