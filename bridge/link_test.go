package bridge

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/internal/testkit"
)

// fakeClock is an injectable wall clock for drain windows.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

func mustWindows(t testing.TB, ws ...string) []config.Window {
	t.Helper()
	var out []config.Window
	for _, s := range ws {
		w, err := config.ParseWindow(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, w)
	}
	return out
}

func TestWindowAt(t *testing.T) {
	loc := time.FixedZone("ship", 3*3600)
	l := config.Link{Windows: mustWindows(t, "22:00-06:00", "12:00-12:30"), UrgentPriority: 1}
	at := func(h, m int) time.Time { return time.Date(2025, 3, 10, h, m, 0, 0, loc) }
	cases := []struct {
		now  time.Time
		open bool
		next time.Time
	}{
		{at(23, 0), true, time.Time{}},
		{at(5, 59), true, time.Time{}},
		{at(6, 0), false, at(12, 0)},
		{at(12, 10), true, time.Time{}},
		{at(12, 30), false, at(22, 0)},
		{at(21, 59), false, at(22, 0)},
	}
	for _, c := range cases {
		ws := windowAt(l, c.now)
		if ws.open != c.open || !ws.next.Equal(c.next) {
			t.Errorf("%s: open %v next %v, want %v %v", c.now.Format("15:04"), ws.open, ws.next, c.open, c.next)
		}
		if !ws.open && ws.urgent != 1 {
			t.Errorf("urgent %d", ws.urgent)
		}
	}
	if !windowAt(config.Link{}, at(3, 0)).open {
		t.Error("no windows must mean always open")
	}
}

// Outside the drain windows only routes at or below urgent_priority drain;
// when a window opens (injected clock) or the windows are removed at run
// time, the rest follows.
func TestWindowsAndUrgentPriority(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(2, "payments", "telemetry", "bulk"))
	buf := openBuffer(t)
	clock := &fakeClock{now: time.Date(2025, 3, 10, 12, 0, 0, 0, time.Local)}
	prio := map[string]int{"payments": 0, "telemetry": 1, "bulk": 5}
	pay := newAppender(buf, "payments", "payments", 3)
	tel := newAppender(buf, "telemetry", "telemetry", 3)
	bulk := newAppender(buf, "bulk", "bulk", 3)
	tel.append(t, 200)
	bulk.append(t, 200)
	pay.append(t, 100)
	b := startBridge(t, buf, k.Addrs, func(o *Options) {
		o.Now = clock.Now
		o.Priority = func(r string) int { return prio[r] }
		o.Link = config.Link{Windows: mustWindows(t, "22:00-06:00"), UrgentPriority: 0}
	})
	routeCount := func(r string) int64 { return buf.Stats()[r].Messages }
	testkit.Eventually(t, 30*time.Second, func() bool { return routeCount("payments") == 0 }, "urgent route not drained outside the window")
	// Prove the drain went round again: new payments go too, the others stay.
	pay.append(t, 50)
	testkit.Eventually(t, 30*time.Second, func() bool { return routeCount("payments") == 0 }, "second urgent batch not drained")
	if n, m := routeCount("telemetry"), routeCount("bulk"); n != 200 || m != 200 {
		t.Fatalf("outside the window: telemetry %d bulk %d buffered, want 200 each", n, m)
	}
	st := b.Link()
	if !st.OutsideWindow || !st.NextWindow.Equal(time.Date(2025, 3, 10, 22, 0, 0, 0, time.Local)) {
		t.Errorf("link status outside window: %+v", st)
	}

	// Raising urgent_priority at run time lets telemetry go, not bulk.
	b.SetLink(config.Link{Windows: mustWindows(t, "22:00-06:00"), UrgentPriority: 1})
	testkit.Eventually(t, 30*time.Second, func() bool { return routeCount("telemetry") == 0 }, "telemetry not drained after urgent_priority 1")
	pay.append(t, 10)
	testkit.Eventually(t, 30*time.Second, func() bool { return routeCount("payments") == 0 }, "payments stuck")
	if n := routeCount("bulk"); n != 200 {
		t.Fatalf("bulk drained outside its window: %d left", n)
	}

	// The window opens: everything drains.
	clock.Set(time.Date(2025, 3, 10, 22, 0, 1, 0, time.Local))
	waitDrained(t, buf, 30*time.Second)
	if st := b.Link(); st.OutsideWindow || !st.NextWindow.IsZero() {
		t.Errorf("inside the window: %+v", st)
	}
	// It closes again; then the windows are removed at run time.
	clock.Set(time.Date(2025, 3, 11, 7, 0, 0, 0, time.Local))
	bulk.append(t, 20)
	pay.append(t, 5)
	testkit.Eventually(t, 30*time.Second, func() bool { return routeCount("payments") == 0 }, "payments stuck")
	if n := routeCount("bulk"); n != 20 {
		t.Fatalf("bulk drained outside its window: %d left", n)
	}
	b.SetLink(config.Link{})
	waitDrained(t, buf, 30*time.Second)
	for _, a := range []*appender{pay, tel, bulk} {
		if dups := checkDelivery(t, testkit.ReadAll(t, k.Addrs, a.topic), a.recs); dups != 0 {
			t.Errorf("%s: %d duplicates", a.topic, dups)
		}
	}
}

// produceMeter counts, at kfake, the bytes of every produced record as the
// cap counts them (key, value, header keys and values) and the wire bytes of
// the record batches, with the time each request arrived.
type produceMeter struct {
	mu     sync.Mutex
	events []meterEvent
}

type meterEvent struct {
	at            time.Time
	content, wire int
}

func (m *produceMeter) attach(k *testkit.KafkaCluster) {
	k.Cluster.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		pr := req.(*kmsg.ProduceRequest)
		ev := meterEvent{at: time.Now()}
		for _, tp := range pr.Topics {
			for _, p := range tp.Partitions {
				ev.wire += len(p.Records)
				ev.content += recordContentBytes(p.Records)
			}
		}
		m.mu.Lock()
		m.events = append(m.events, ev)
		m.mu.Unlock()
		return nil, nil, false // observe only: kfake handles the request
	})
}

// recordContentBytes parses uncompressed record batches.
func recordContentBytes(raw []byte) int {
	n := 0
	for len(raw) >= 12 {
		var rb kmsg.RecordBatch
		if err := rb.ReadFrom(raw); err != nil {
			return n
		}
		recs := rb.Records
		for len(recs) > 0 {
			l, w := binary.Varint(recs)
			if w <= 0 {
				break
			}
			var r kmsg.Record
			if err := r.ReadFrom(recs[:w+int(l)]); err != nil {
				break
			}
			n += len(r.Key) + len(r.Value)
			for _, h := range r.Headers {
				n += len(h.Key) + len(h.Value)
			}
			recs = recs[w+int(l):]
		}
		raw = raw[12+int(rb.Length):]
	}
	return n
}

// window sums the bytes of requests that arrived in [from, from+d).
func (m *produceMeter) window(from time.Time, d time.Duration) (content, wire int, last time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.events {
		if !e.at.Before(from) && e.at.Before(from.Add(d)) {
			content += e.content
			wire += e.wire
		}
		if e.at.After(last) {
			last = e.at
		}
	}
	return content, wire, last
}

func (m *produceMeter) first() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.events) == 0 {
		return time.Time{}
	}
	return m.events[0].at
}

// fillBulk appends n records of about size bytes (as the cap counts them)
// to route "bulk".
func fillBulk(t testing.TB, buf *buffer.Buffer, n, size int) {
	t.Helper()
	payload := make([]byte, size)
	var wg sync.WaitGroup
	var failed atomic.Value
	for i := range n {
		client := fmt.Sprintf("term-%02d", i%20)
		wg.Add(1)
		err := buf.Append(&buffer.Append{
			Record: buffer.Record{Route: "bulk", Received: time.Now(), KafkaTopic: "bulk", Key: []byte(client),
				MQTTTopic: "terminals/" + client + "/bulk", ClientID: client, Payload: payload},
			Done: func(r buffer.Result) {
				if r.Err != nil {
					failed.Store(r.Err)
				}
				wg.Done()
			},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		t.Fatal(err)
	}
}

// The bandwidth cap holds within 10% over a long window: bytes measured as
// they arrive at the Kafka cluster. 30 s normally, 10 s with -short.
func TestBandwidthCap(t *testing.T) {
	span := 30 * time.Second
	if testing.Short() {
		span = 10 * time.Second
	}
	const capBps = 256 << 10
	const recSize = 2000
	k := testkit.Kafka(t, testkit.Topics(3, "bulk"))
	var meter produceMeter
	meter.attach(k)
	buf := openBuffer(t)
	// Enough for the warm-up, the window and some to spare: the buffer
	// must not run dry while measuring.
	n := int((span+5*time.Second).Seconds()*capBps) / recSize
	fillBulk(t, buf, n, recSize)
	b := startBridge(t, buf, k.Addrs, func(o *Options) {
		o.Kafka.Compression = "none"
		o.Link = config.Link{MaxBytesPerSecond: capBps}
	})
	testkit.Eventually(t, 30*time.Second, func() bool { return !meter.first().IsZero() }, "nothing produced")
	// Skip the first second: the bucket starts full (a tenth of a second).
	from := meter.first().Add(time.Second)
	testkit.Eventually(t, span+30*time.Second, func() bool {
		_, _, last := meter.window(from, span)
		return last.After(from.Add(span))
	}, "the drain did not run for the whole window")
	content, wire, _ := meter.window(from, span)
	left, _ := buf.Total()
	if left == 0 {
		t.Fatal("the buffer ran dry during the window: the measurement is void")
	}
	got := float64(content) / span.Seconds()
	t.Logf("cap %d B/s over %v: %.0f B/s record content (%.1f%%), %.0f B/s record-batch wire bytes; %d records left; link %+v",
		capBps, span, got, 100*got/capBps, float64(wire)/span.Seconds(), left, b.Link())
	if got < 0.9*capBps || got > 1.1*capBps {
		t.Errorf("drained %.0f B/s with a cap of %d B/s: not within 10%%", got, capBps)
	}
}

// The cap can be set, changed and lifted while the drain runs (run with
// -race); lifting it lets the rest drain at full speed.
func TestSetLinkAndPriorityWhileDraining(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(3, "bulk", "payments"))
	buf := openBuffer(t)
	fillBulk(t, buf, 3000, 500)
	pay := newAppender(buf, "payments", "payments", 3)
	b := startBridge(t, buf, k.Addrs, func(o *Options) {
		o.Link = config.Link{MaxBytesPerSecond: 64 << 10}
	})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			b.SetLink(config.Link{MaxBytesPerSecond: int64(32<<10 + i%4*(16<<10))})
			b.SetPriority(func(r string) int {
				if r == "payments" {
					return i % 2
				}
				return 1
			})
			_ = b.Link()
			time.Sleep(10 * time.Millisecond) // pacing of the changes, not synchronisation
		}
	}()
	pay.append(t, 50)
	testkit.Eventually(t, 30*time.Second, func() bool { return buf.Stats()["payments"].Messages == 0 }, "payments not drained under a changing cap")
	close(stop)
	wg.Wait()
	if st := b.Link(); st.MaxBytesPerSecond == 0 {
		t.Errorf("cap not reported: %+v", st)
	}
	b.SetLink(config.Link{})
	waitDrained(t, buf, 60*time.Second)
	if st := b.Link(); st.MaxBytesPerSecond != 0 {
		t.Errorf("cap still reported after lifting: %+v", st)
	}
	checkDelivery(t, testkit.ReadAll(t, k.Addrs, "payments"), pay.recs)
}

func TestBatchSizer(t *testing.T) {
	s := newBatchSizer(64, 1000)
	// starts above the floor (a fast link should not crawl up from 64),
	// doubling from min while 8x stays within max: 64 -> 128
	if s.size() != 128 {
		t.Fatalf("start %d, want 128", s.size())
	}
	if big := newBatchSizer(64, 10000); big.size() != 1024 {
		t.Fatalf("start with max 10000: %d, want 1024", big.size())
	}
	for range 20 {
		s.batchDone(s.size(), 0, time.Millisecond)
	}
	if s.size() != 1000 {
		t.Fatalf("after fast full batches: %d, want 1000", s.size())
	}
	s.batchDone(10, 0, time.Millisecond) // a short batch (backlog ran out) says nothing
	if s.size() != 1000 {
		t.Fatalf("short batch changed the size: %d", s.size())
	}
	s.batchDone(1000, 0, slowAck+time.Second)
	if s.size() != 500 {
		t.Fatalf("after a slow ack: %d, want 500", s.size())
	}
	s.batchDone(500, 3, time.Millisecond)
	if s.size() != 250 {
		t.Fatalf("after failures: %d, want 250", s.size())
	}
	for range 10 {
		s.shrink()
	}
	if s.size() != 64 {
		t.Fatalf("floor: %d", s.size())
	}
}

// Batches grow to the maximum on a fast link and shrink when it fails.
func TestBatchesAdaptToTheLink(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(3, "bulk"), testkit.WithProxy())
	buf := openBuffer(t)
	const maxBatch = 2000
	fillBulk(t, buf, 30000, 100)
	b := startBridge(t, buf, k.Addrs, func(o *Options) { o.MaxBatchRecords = maxBatch })
	testkit.Eventually(t, 60*time.Second, func() bool { return b.Link().BatchRecords == maxBatch }, "batches never grew to the maximum: %+v", b.Link())
	waitDrained(t, buf, 60*time.Second)

	k.SetMode(t, testkit.Refuse)
	fillBulk(t, buf, 100, 100)
	testkit.Eventually(t, 60*time.Second, func() bool { return b.Link().BatchRecords < maxBatch }, "batches did not shrink after failures: %+v", b.Link())
	k.SetMode(t, testkit.Pass)
	waitDrained(t, buf, 60*time.Second)
}

// testutilCounter is the bytes the drain handed to the producer.
func testutilCounter(b *Bridge) float64 { return testutil.ToFloat64(b.m.bytes) }

// TestWindowsAcrossClockJumps: a box without a battery-backed clock boots in
// 1970, NTP then moves it forward by decades, and a ship's clock may go back.
// Drain windows are times of day on the wall clock, so each jump must be
// followed at once: no window is missed because the clock was wrong when the
// drain last looked, and none opens early because of a stale "next window".
func TestWindowsAcrossClockJumps(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(2, "payments", "bulk"))
	buf := openBuffer(t)
	// boot: 1 January 1970, noon; the window is 01:00-02:00
	clock := &fakeClock{now: time.Date(1970, 1, 1, 12, 0, 0, 0, time.Local)}
	prio := map[string]int{"payments": 0, "bulk": 5}
	pay := newAppender(buf, "payments", "payments", 2)
	bulk := newAppender(buf, "bulk", "bulk", 2)
	bulk.append(t, 100)
	pay.append(t, 20)
	b := startBridge(t, buf, k.Addrs, func(o *Options) {
		o.Now = clock.Now
		o.Priority = func(r string) int { return prio[r] }
		o.Link = config.Link{Windows: mustWindows(t, "01:00-02:00"), UrgentPriority: 0}
	})
	routeCount := func(r string) int64 { return buf.Stats()[r].Messages }
	testkit.Eventually(t, 30*time.Second, func() bool { return routeCount("payments") == 0 }, "urgent route not drained in 1970")
	if st := b.Link(); !st.OutsideWindow || !st.NextWindow.Equal(time.Date(1970, 1, 2, 1, 0, 0, 0, time.Local)) {
		t.Fatalf("1970 noon: link %+v, want outside with the next window at 01:00 the next day", st)
	}
	if n := routeCount("bulk"); n != 100 {
		t.Fatalf("bulk drained outside its window in 1970: %d left of 100", n)
	}

	// NTP: forward 56 years, to a time inside the window. The drain follows
	// at once, not at the window it computed in 1970.
	clock.Set(time.Date(2026, 11, 30, 1, 30, 0, 0, time.Local))
	waitDrained(t, buf, 30*time.Second)
	if st := b.Link(); st.OutsideWindow {
		t.Fatalf("after the jump into the window: %+v", st)
	}

	// Back by 26 years, to an afternoon: closed again, and the next window
	// is the one after the new now, not the 2026 one.
	clock.Set(time.Date(2000, 6, 1, 15, 0, 0, 0, time.Local))
	bulk.append(t, 50)
	pay.append(t, 10)
	testkit.Eventually(t, 30*time.Second, func() bool { return routeCount("payments") == 0 }, "urgent route stuck after the backward jump")
	if n := routeCount("bulk"); n != 50 {
		t.Fatalf("bulk drained outside its window after the backward jump: %d left of 50", n)
	}
	if st := b.Link(); !st.OutsideWindow || !st.NextWindow.Equal(time.Date(2000, 6, 2, 1, 0, 0, 0, time.Local)) {
		t.Fatalf("after the backward jump: %+v, want next window 2000-06-02 01:00", st)
	}

	// Forward a few hours into that window: bulk goes.
	clock.Set(time.Date(2000, 6, 2, 1, 0, 5, 0, time.Local))
	waitDrained(t, buf, 30*time.Second)
	for _, a := range []*appender{pay, bulk} {
		if dups := checkDelivery(t, testkit.ReadAll(t, k.Addrs, a.topic), a.recs); dups != 0 {
			t.Errorf("%s: %d duplicates", a.topic, dups)
		}
	}
}
