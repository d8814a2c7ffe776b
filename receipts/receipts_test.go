package receipts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/twmb/franz-go/pkg/kgo"
	bolt "go.etcd.io/bbolt"

	"github.com/edgegw/gateway/bridge"
	"github.com/edgegw/gateway/broker"
	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/internal/testkit"
	"github.com/edgegw/gateway/rules"
)

const (
	receiptsTopic = "receipts.gw1"
	confirmTopic  = "receipts.delivered"
)

// env is a whole downlink: kfake, uplink buffer, broker, bridge (carrying the
// confirmations) and the receipts component, on one data dir that survives
// restart().
type env struct {
	t     *testing.T
	kafka *testkit.KafkaCluster
	dir   string
	extra string
	cfg   *config.Config
	buf   *buffer.Buffer
	brk   *broker.Broker
	brg   *bridge.Bridge
	rc    *Receipts
	addr  string
	prod  *kgo.Client
	// limits, if set, are the buffer's budgets; sweep the receipts' sweep
	// interval (0: the default).
	limits *buffer.Limits
	sweep  time.Duration
}

func newEnv(t *testing.T, extraYAML string, edit ...func(*env)) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), extra: extraYAML,
		kafka: testkit.Kafka(t, testkit.Topics(3, receiptsTopic), testkit.Topics(1, confirmTopic))}
	for _, f := range edit {
		f(e)
	}
	// a fixed MQTT port, so clients reconnect to the same address after restart
	e.addr = fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t))
	prod, err := kgo.NewClient(kgo.SeedBrokers(e.kafka.Addrs...), kgo.DefaultProduceTopic(receiptsTopic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(prod.Close)
	e.prod = prod
	e.start()
	t.Cleanup(e.stop)
	return e
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func (e *env) start() {
	t := e.t
	t.Helper()
	yaml := fmt.Sprintf(`
id: gw1
kafka: {brokers: [%q], version: "2.8.0"}
mqtt: {address: %q}
admin: {address: ""}
routes:
  - {name: payments, match: "terminals/+/payments/#", kafka_topic: payments}
`, e.kafka.Addrs[0], e.addr) + e.extra
	cfg, err := config.Parse([]byte(yaml), []string{"GATEWAY_DATA_DIR=" + e.dir})
	if err != nil {
		t.Fatal(err)
	}
	e.cfg = cfg
	lg := testLogger(t)
	bopts := buffer.Options{Path: filepath.Join(e.dir, "buffer.db")}
	if e.limits != nil {
		bopts.Limits = *e.limits
	}
	if e.buf, err = buffer.Open(bopts); err != nil {
		t.Fatal(err)
	}
	rs := rules.Compile(cfg)
	if e.brk, err = broker.New(broker.Options{Config: cfg, Rules: rs, Buffer: e.buf, Logger: lg}); err != nil {
		t.Fatal(err)
	}
	if err = e.brk.Start(); err != nil {
		t.Fatal(err)
	}
	e.rc, err = New(Options{Config: cfg, Broker: e.brk, Buffer: e.buf, Logger: lg, SweepInterval: e.sweep,
		SaramaConfig: func(c *sarama.Config) {
			c.Consumer.Offsets.AutoCommit.Interval = 100 * time.Millisecond
			c.Consumer.MaxWaitTime = 50 * time.Millisecond
		}})
	if err != nil {
		t.Fatal(err)
	}
	e.rc.Start()
	if e.brg, err = bridge.New(e.buf, bridge.Options{Kafka: cfg.Kafka, GatewayID: cfg.ID, Priority: rs.Priority, Logger: lg}); err != nil {
		t.Fatal(err)
	}
	e.brg.Start()
}

// stop shuts down in the gateway's order: broker, receipts, bridge, buffer.
func (e *env) stop() {
	if e.brk == nil {
		return
	}
	e.brk.Close()
	e.rc.Close()
	e.brg.Close()
	e.buf.Close()
	e.brk = nil
}

func (e *env) restart() {
	e.stop()
	e.start()
}

// produce sends receipts for device with payloads "<device>/<i>" for i in
// [from, to), waiting for Kafka's acknowledgement.
func (e *env) produce(device string, from, to int, headers ...kgo.RecordHeader) {
	e.t.Helper()
	for i := from; i < to; i++ {
		r := &kgo.Record{Key: []byte(device), Value: fmt.Appendf(nil, "%s/%d", device, i), Headers: headers}
		if err := e.prod.ProduceSync(context.Background(), r).FirstErr(); err != nil {
			e.t.Fatal(err)
		}
	}
}

func (e *env) pending(dev string) int { return e.rc.Pending()[dev] }

func (e *env) totalPending() int {
	n := 0
	for _, c := range e.rc.Pending() {
		n += c
	}
	return n
}

// terminal is a paho (MQTT 3.1.1) client that records what it receives.
type terminal struct {
	c   paho.Client
	mu  sync.Mutex
	got []string
}

func (tm *terminal) received() []string {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return append([]string(nil), tm.got...)
}

func connect(t *testing.T, addr, id string, clean bool) *terminal {
	t.Helper()
	tm := &terminal{}
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetCleanSession(clean).
		SetAutoReconnect(false).SetConnectRetry(false).SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			tm.mu.Lock()
			tm.got = append(tm.got, string(m.Payload()))
			tm.mu.Unlock()
		})
	tm.c = paho.NewClient(o)
	if tok := tm.c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { tm.c.Disconnect(0) })
	return tm
}

func (tm *terminal) subscribe(t *testing.T, filter string) byte {
	t.Helper()
	tok := tm.c.Subscribe(filter, 1, nil)
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	return tok.(*paho.SubscribeToken).Result()[filter]
}

func want(device string, from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("%s/%d", device, i))
	}
	return out
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func waitReceived(t *testing.T, tm *terminal, exp []string) {
	t.Helper()
	testkit.Eventually(t, 30*time.Second, func() bool { return len(tm.received()) >= len(exp) },
		"terminal got %d receipts, want %d", len(tm.received()), len(exp))
	if got := tm.received(); !equal(got, exp) {
		t.Fatalf("terminal got %q, want %q", got, exp)
	}
}

func headerOf(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// Online delivery, in order; the outbox empties; one confirmation per
// receipt with the headers of CONTRACT §4.
func TestOnlineDeliveryAndConfirmations(t *testing.T) {
	e := newEnv(t, "")
	tm := connect(t, e.addr, "term-1", true)
	if code := tm.subscribe(t, "terminals/term-1/receipts"); code != 1 {
		t.Fatalf("suback %#x", code)
	}
	e.produce("term-1", 0, 20)
	waitReceived(t, tm, want("term-1", 0, 20))
	testkit.Eventually(t, 10*time.Second, func() bool { return e.pending("term-1") == 0 }, "outbox not emptied: %v", e.rc.Pending())

	cons := testkit.Consume(t, e.kafka.Addrs, []string{confirmTopic})
	recs := cons.WaitN(t, 20, 30*time.Second)
	offsets := map[string]bool{}
	for _, r := range recs {
		if string(r.Key) != "term-1" || headerOf(r, "gw.id") != "gw1" || headerOf(r, "receipt.topic") != receiptsTopic {
			t.Fatalf("confirmation %q headers %v", r.Key, r.Headers)
		}
		if _, err := strconv.Atoi(headerOf(r, "receipt.partition")); err != nil {
			t.Fatalf("receipt.partition: %v", r.Headers)
		}
		k := headerOf(r, "receipt.partition") + "/" + headerOf(r, "receipt.offset")
		if offsets[k] {
			t.Fatalf("two confirmations for %s", k)
		}
		offsets[k] = true
	}
	if len(recs) != 20 {
		t.Fatalf("%d confirmations, want 20", len(recs))
	}
}

// A device that never connected gets its receipts on its first subscribe.
func TestNeverConnectedGetsReceiptsOnFirstSubscribe(t *testing.T) {
	e := newEnv(t, "")
	e.produce("term-new", 0, 3)
	testkit.Eventually(t, 30*time.Second, func() bool { return e.pending("term-new") == 3 }, "stored: %v", e.rc.Pending())
	tm := connect(t, e.addr, "term-new", true)
	tm.subscribe(t, "terminals/term-new/#")
	waitReceived(t, tm, want("term-new", 0, 3))
}

// A persistent session that is offline gets its receipts after a gateway
// restart, without subscribing again.
func TestOfflinePersistentSessionAcrossRestart(t *testing.T) {
	e := newEnv(t, "")
	tm := connect(t, e.addr, "term-p", false)
	tm.subscribe(t, "terminals/term-p/receipts")
	tm.c.Disconnect(100)
	e.produce("term-p", 0, 5)
	testkit.Eventually(t, 30*time.Second, func() bool { return e.pending("term-p") == 5 }, "stored: %v", e.rc.Pending())
	e.restart()
	tm2 := connect(t, e.addr, "term-p", false)
	waitReceived(t, tm2, want("term-p", 0, 5))
	testkit.Eventually(t, 10*time.Second, func() bool { return e.totalPending() == 0 }, "pending %v", e.rc.Pending())
}

// A receipt older than max_age is dropped and counted; later ones still
// arrive.
func TestExpiry(t *testing.T) {
	e := newEnv(t, "receipts: {max_age: 300ms}\n")
	e.produce("term-x", 0, 2)
	testkit.Eventually(t, 30*time.Second, func() bool { return e.rc.Dropped() == 2 }, "dropped %d", e.rc.Dropped())
	if n := e.totalPending(); n != 0 {
		t.Fatalf("pending %d after expiry", n)
	}
	tm := connect(t, e.addr, "term-x", true)
	tm.subscribe(t, "terminals/term-x/receipts")
	e.produce("term-x", 2, 3)
	waitReceived(t, tm, want("term-x", 2, 3))
}

// Device A, with wildcard subscriptions, never receives B's receipts: with
// the default ACL its wildcards are refused (0x80 for 3.1.1), and with an
// ACL that grants them it still gets only its own.
func TestNoLeakToOtherDevices(t *testing.T) {
	for _, tc := range []struct {
		name, acl string
		granted   bool
	}{
		{"default-acl", "", false},
		{"open-acl", "acl: {subscribe: ['#'], publish: ['#']}\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.acl)
			a := connect(t, e.addr, "term-a", true)
			for _, f := range []string{"terminals/+/receipts", "#", "terminals/term-b/receipts"} {
				code := a.subscribe(t, f)
				if tc.granted != (code < 0x80) {
					t.Fatalf("subscribe %s: code %#x, granted want %v", f, code, tc.granted)
				}
			}
			a.subscribe(t, "terminals/term-a/receipts")
			b := connect(t, e.addr, "term-b", true)
			b.subscribe(t, "terminals/term-b/receipts")
			e.produce("term-b", 0, 3)
			waitReceived(t, b, want("term-b", 0, 3))
			e.produce("term-a", 0, 1)
			waitReceived(t, a, want("term-a", 0, 1)) // nothing of B's before or with it
		})
	}
}

// Re-consuming records already in the outbox stores nothing twice, also
// after they were delivered and removed.
func TestStoreIsIdempotent(t *testing.T) {
	o, err := openOutbox(filepath.Join(t.TempDir(), "receipts.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer o.close()
	in := []incoming{
		{Device: "d", Topic: "t", Partition: 0, Offset: 0, Payload: []byte("a")},
		{Device: "d", Topic: "t", Partition: 0, Offset: 1, Payload: []byte("b")},
		{Device: "", Topic: "t", Partition: 0, Offset: 2},
		{Device: "e", Topic: "t", Partition: 1, Offset: 0, Payload: []byte("c")},
	}
	st, err := o.store(in, time.Now())
	if err != nil || len(st) != 3 {
		t.Fatalf("stored %d, %v", len(st), err)
	}
	if _, err := o.remove([]ref{{Device: "d", Seq: st[0].Seq}}); err != nil {
		t.Fatal(err)
	}
	st, err = o.store(append(in, incoming{Device: "d", Topic: "t", Partition: 0, Offset: 3, Payload: []byte("z")}), time.Now())
	if err != nil || len(st) != 1 || string(st[0].Payload) != "z" {
		t.Fatalf("re-store: %d stored (%v), want only the new one", len(st), err)
	}
	if p := o.pendingAll(); p["d"] != 2 || p["e"] != 1 {
		t.Fatalf("pending %v", p)
	}
	rc, ok, err := o.next("d", nil)
	if err != nil || !ok || string(rc.Payload) != "b" || rc.Offset != 1 {
		t.Fatalf("next: %+v %v %v", rc, ok, err)
	}
}

// A failed write transaction makes the outbox open its file again from
// disk (bbolt's handle is not trusted after one): what was committed
// before is all there, the failed write is not, the pending counts agree
// with the file, and the next writes work.
func TestOutboxReopensAfterFailedWrite(t *testing.T) {
	o, err := openOutbox(filepath.Join(t.TempDir(), "receipts.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer o.close()
	st, err := o.store([]incoming{
		{Device: "d", Topic: "t", Offset: 0, Payload: []byte("a")},
		{Device: "d", Topic: "t", Offset: 1, Payload: []byte("b")},
	}, time.Now())
	if err != nil || len(st) != 2 {
		t.Fatalf("stored %d, %v", len(st), err)
	}
	before := o.db
	injected := errors.New("injected: write failed")
	err = o.update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketOutbox).Put(outboxKey("d", 99), []byte("half-written")); err != nil {
			return err
		}
		return injected
	})
	if !errors.Is(err, injected) {
		t.Fatalf("update: %v", err)
	}
	if o.db == before {
		t.Fatal("the handle of a failed write was kept")
	}
	if p := o.pendingAll(); p["d"] != 2 {
		t.Fatalf("pending after the reopen: %v, want d:2", p)
	}
	if n, err := o.remove([]ref{{Device: "d", Seq: st[0].Seq}}); err != nil || n != 1 {
		t.Fatalf("remove after the reopen: %d, %v", n, err)
	}
	st2, err := o.store([]incoming{{Device: "d", Topic: "t", Offset: 2, Payload: []byte("c")}}, time.Now())
	if err != nil || len(st2) != 1 {
		t.Fatalf("store after the reopen: %d, %v", len(st2), err)
	}
	rc, ok, err := o.next("d", nil)
	if err != nil || !ok || string(rc.Payload) != "b" {
		t.Fatalf("next: %+v %v %v", rc, ok, err)
	}
}
