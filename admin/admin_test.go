package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgegw/gateway/buffer"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// fixedNow is the clock of every test server, so ages are exact.
var fixedNow = time.Date(2025, 3, 14, 12, 0, 0, 0, time.UTC)

// fakeSources is a set of values the test changes between requests; the
// functions handed to admin read them under a lock, as the real components'
// accessors do.
type fakeSources struct {
	mu       sync.Mutex
	ready    atomic.Bool
	routes   []RouteInfo
	backlog  map[string]buffer.RouteStats
	drops    map[string]map[string]uint64
	link     LinkStatus
	receipts map[string]int
	used     int64
	file     int64
}

func (f *fakeSources) sources() Sources {
	return Sources{
		GatewayID: "edge-01",
		Version:   "1.2.3",
		Ready:     f.ready.Load,
		Routes: func() []RouteInfo {
			f.mu.Lock()
			defer f.mu.Unlock()
			return append([]RouteInfo(nil), f.routes...)
		},
		Backlog: func() map[string]buffer.RouteStats {
			f.mu.Lock()
			defer f.mu.Unlock()
			out := make(map[string]buffer.RouteStats, len(f.backlog))
			for k, v := range f.backlog {
				out[k] = v
			}
			return out
		},
		DiskUsed:   func() int64 { f.mu.Lock(); defer f.mu.Unlock(); return f.used },
		DiskFile:   func() int64 { f.mu.Lock(); defer f.mu.Unlock(); return f.file },
		DiskBudget: 1 << 30,
		Drops: func() map[string]map[string]uint64 {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.drops
		},
		Link: func() LinkStatus { f.mu.Lock(); defer f.mu.Unlock(); return f.link },
		ReceiptsPending: func() map[string]int {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.receipts
		},
	}
}

// startServer starts an admin endpoint on a free loopback port and closes it
// when the test ends.
func startServer(t *testing.T, src Sources) (*Server, string) {
	t.Helper()
	s, err := New("127.0.0.1:0", src, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	s.now = func() time.Time { return fixedNow }
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, "http://" + s.Addr()
}

func get(t *testing.T, url string) (int, string, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp.StatusCode, string(body), resp.Header
}

func TestHealthz(t *testing.T) {
	f := &fakeSources{}
	s, base := startServer(t, f.sources())
	code, body, _ := get(t, base+"/healthz")
	if code != http.StatusOK || body != "ok" {
		t.Fatalf("/healthz = %d %q, want 200 \"ok\"", code, body)
	}
	// Healthy means serving, whatever readiness says.
	f.ready.Store(false)
	if code, _, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz while not ready = %d, want 200", code)
	}
	resp, err := http.Post(base+"/healthz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST /healthz = %d, want 405", resp.StatusCode)
	}

	// After Close nothing answers any more.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Fatal("GET /healthz after Close succeeded")
	}
}

func TestReadyzFlips(t *testing.T) {
	f := &fakeSources{link: LinkStatus{State: LinkDown, DownSince: fixedNow.Add(-time.Hour), LastError: "dial tcp: connection refused"}}
	_, base := startServer(t, f.sources())

	if code, body, _ := get(t, base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz before ready = %d %q, want 503", code, body)
	}
	f.ready.Store(true)
	// Kafka is down (link above) and the gateway is still ready: buffering
	// is normal work.
	if code, body, _ := get(t, base+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz when ready with Kafka down = %d %q, want 200", code, body)
	}
	f.ready.Store(false)
	if code, _, _ := get(t, base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz after ready went false = %d, want 503", code)
	}
}

func TestNewValidates(t *testing.T) {
	good := (&fakeSources{}).sources()
	cases := []struct {
		name string
		addr string
		edit func(*Sources)
		want string
	}{
		{"empty address", "", nil, "address is empty"},
		{"no port", "127.0.0.1", nil, "address"},
		{"no Ready", "127.0.0.1:0", func(s *Sources) { s.Ready = nil }, "Ready"},
		{"no Routes", "127.0.0.1:0", func(s *Sources) { s.Routes = nil }, "Routes"},
		{"no Backlog", "127.0.0.1:0", func(s *Sources) { s.Backlog = nil }, "Backlog"},
		{"no Link", "127.0.0.1:0", func(s *Sources) { s.Link = nil }, "Link"},
		{"negative budget", "127.0.0.1:0", func(s *Sources) { s.DiskBudget = -1 }, "DiskBudget"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := good
			if tc.edit != nil {
				tc.edit(&src)
			}
			_, err := New(tc.addr, src, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New error = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
	// Optional sources may be nil.
	src := good
	src.DiskUsed, src.DiskFile, src.Drops, src.ReceiptsPending = nil, nil, nil, nil
	if _, err := New("127.0.0.1:0", src, nil); err != nil {
		t.Fatalf("New with optional sources nil: %v", err)
	}
}

func TestStartCloseLifecycle(t *testing.T) {
	src := (&fakeSources{}).sources()
	ctx := context.Background()

	// Close before Start, twice, is fine; Start after Close is refused.
	s, err := New("127.0.0.1:0", src, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close before Start: %v", err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Start(); err == nil {
		t.Fatal("Start after Close succeeded")
	}

	// A port in use is a Start error, not a background log line.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s2, err := New(ln.Addr().String(), src, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Start(); err == nil {
		t.Fatal("Start on a busy port succeeded")
	}
	_ = s2.Close(ctx)

	// Started: Start twice is refused, Close twice is fine.
	s3, err := New("127.0.0.1:0", src, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s3.Start(); err != nil {
		t.Fatal(err)
	}
	if err := s3.Start(); err == nil {
		t.Fatal("second Start succeeded")
	}
	if err := s3.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s3.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// openBuffer opens a real bbolt buffer and appends records: per route, the
// receive times given (oldest first) with 100-byte payloads.
func openBuffer(t *testing.T, records map[string][]time.Time) *buffer.Buffer {
	t.Helper()
	b, err := buffer.Open(buffer.Options{Path: filepath.Join(t.TempDir(), "buffer.db")})
	if err != nil {
		t.Fatalf("buffer.Open: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	for route, times := range records {
		for i, rt := range times {
			_, err := b.AppendWait(buffer.Record{
				Route:      route,
				Received:   rt,
				KafkaTopic: route,
				Key:        []byte("t-1"),
				MQTTTopic:  fmt.Sprintf("terminals/t-1/%s/%d", route, i),
				ClientID:   "t-1",
				Payload:    make([]byte, 100),
			})
			if err != nil {
				t.Fatalf("AppendWait: %v", err)
			}
		}
	}
	return b
}

// bufferSources wires admin to a real buffer the way the gateway does.
func bufferSources(b *buffer.Buffer, routes []RouteInfo, link LinkStatus, drops map[string]map[string]uint64) Sources {
	return Sources{
		GatewayID:  "edge-01",
		Version:    "1.2.3",
		Ready:      func() bool { return true },
		Routes:     func() []RouteInfo { return routes },
		Backlog:    b.Stats,
		DiskUsed:   func() int64 { _, n := b.Total(); return n },
		DiskFile:   b.FileSize,
		DiskBudget: 1 << 30,
		Drops:      func() map[string]map[string]uint64 { return drops },
		Link:       func() LinkStatus { return link },
	}
}

func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body, hdr := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics = %d: %s", code, body)
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("/metrics Content-Type = %q, want text/plain", ct)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse as Prometheus text: %v\n%s", err, body)
	}
	return fams
}

// value finds the sample of family name whose labels include want; ok is
// false when there is none.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	fam := fams[name]
	if fam == nil {
		return 0, false
	}
next:
	for _, m := range fam.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

func TestMetricsFromRealBuffer(t *testing.T) {
	b := openBuffer(t, map[string][]time.Time{
		"payments":  {fixedNow.Add(-90 * time.Second), fixedNow.Add(-30 * time.Second), fixedNow.Add(-10 * time.Second)},
		"telemetry": {fixedNow.Add(-2 * time.Hour)},
	})
	routes := []RouteInfo{
		{Name: "payments", Match: "terminals/+/payments/#", KafkaTopic: "payments", Priority: 0},
		{Name: "telemetry", Match: "terminals/+/telemetry/#", KafkaTopic: "telemetry", Priority: 5, OnFull: "drop_oldest"},
		{Name: "events", Match: "terminals/+/events/#", KafkaTopic: "events", Priority: 1},
	}
	lastAck := fixedNow.Add(-75 * time.Minute)
	link := LinkStatus{State: LinkDown, LastAck: lastAck, DownSince: fixedNow.Add(-time.Hour), LastError: "dial tcp 10.0.0.1:9092: i/o timeout"}
	drops := map[string]map[string]uint64{"telemetry": {DropDropOldest: 7, "too_large": 2}}
	src := bufferSources(b, routes, link, drops)

	// Someone else's metric in the caller's registry is served alongside.
	reg := prometheus.NewRegistry()
	ingested := prometheus.NewCounter(prometheus.CounterOpts{Name: "gateway_ingested_total", Help: "test"})
	ingested.Add(4)
	reg.MustRegister(ingested)
	src.Gatherer = reg

	_, base := startServer(t, src)
	fams := scrape(t, base)

	_, usedBytes := b.Total()
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"gateway_backlog_messages", map[string]string{"route": "payments"}, 3},
		{"gateway_backlog_messages", map[string]string{"route": "telemetry"}, 1},
		{"gateway_backlog_messages", map[string]string{"route": "events"}, 0},
		{"gateway_oldest_undelivered_age_seconds", map[string]string{"route": "payments"}, 90},
		{"gateway_oldest_undelivered_age_seconds", map[string]string{"route": "telemetry"}, 7200},
		{"gateway_oldest_undelivered_age_seconds", map[string]string{"route": "events"}, 0},
		{"gateway_drops_total", map[string]string{"route": "telemetry", "reason": "drop_oldest"}, 7},
		{"gateway_drops_total", map[string]string{"route": "telemetry", "reason": "too_large"}, 2},
		{"gateway_drops_total", map[string]string{"route": "payments", "reason": "max_age"}, 0},
		{"gateway_drops_total", map[string]string{"route": "payments", "reason": "rejected"}, 0},
		{"gateway_estimated_drain_seconds", map[string]string{"route": "events"}, 0},
		{"gateway_link_up", nil, 0},
		{"gateway_link_down_seconds", nil, 3600},
		{"gateway_last_kafka_ack_timestamp_seconds", nil, float64(lastAck.Unix())},
		{"gateway_disk_used_bytes", nil, float64(usedBytes)},
		{"gateway_disk_budget_bytes", nil, 1 << 30},
		{"gateway_buffer_file_bytes", nil, float64(b.FileSize())},
		{"gateway_ready", nil, 1},
		{"gateway_info", map[string]string{"gateway_id": "edge-01", "version": "1.2.3"}, 1},
		{"gateway_ingested_total", nil, 4},
	}
	for _, c := range checks {
		got, ok := value(fams, c.name, c.labels)
		if !ok {
			t.Errorf("%s%v missing from /metrics", c.name, c.labels)
			continue
		}
		if got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if usedBytes <= 0 {
		t.Errorf("buffer reports %d bytes used for 4 records", usedBytes)
	}
	if got, _ := value(fams, "gateway_backlog_bytes", map[string]string{"route": "payments"}); got < 300 {
		t.Errorf("gateway_backlog_bytes{route=payments} = %v, want at least the 3x100 payload bytes", got)
	}
	if fams["gateway_drops_total"].GetType() != dto.MetricType_COUNTER {
		t.Errorf("gateway_drops_total type = %v, want counter", fams["gateway_drops_total"].GetType())
	}
	// The link is down and nothing drains: no estimate for a non-empty route.
	if _, ok := value(fams, "gateway_estimated_drain_seconds", map[string]string{"route": "payments"}); ok {
		t.Error("gateway_estimated_drain_seconds{route=payments} present while the drain rate is 0")
	}
	// No receipts source: no receipts gauge, rather than a misleading 0.
	if _, ok := fams["gateway_receipts_pending"]; ok {
		t.Error("gateway_receipts_pending present without a receipts source")
	}
}

func TestMetricsReceiptsAndRate(t *testing.T) {
	f := &fakeSources{
		routes:   []RouteInfo{{Name: "payments", KafkaTopic: "payments"}},
		backlog:  map[string]buffer.RouteStats{"payments": {Messages: 50, Bytes: 5000, Oldest: fixedNow.Add(-time.Minute)}},
		link:     LinkStatus{State: LinkUp, LastAck: fixedNow.Add(-3 * time.Second), RecentRate: 25},
		receipts: map[string]int{"t-1": 3, "t-2": 1, "t-3": 0},
	}
	f.ready.Store(true)
	_, base := startServer(t, f.sources())
	fams := scrape(t, base)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"gateway_link_up", nil, 1},
		{"gateway_link_down_seconds", nil, 0},
		{"gateway_link_drain_rate_records_per_second", nil, 25},
		{"gateway_estimated_drain_seconds", map[string]string{"route": "payments"}, 2},
		{"gateway_receipts_pending", nil, 4},
		{"gateway_receipts_pending_devices", nil, 2},
	} {
		if got, ok := value(fams, c.name, c.labels); !ok || got != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
}

func TestStatusRoundTrip(t *testing.T) {
	b := openBuffer(t, map[string][]time.Time{
		"payments": {fixedNow.Add(-5 * time.Minute), fixedNow.Add(-time.Minute)},
		"legacy":   {fixedNow.Add(-50 * time.Hour)}, // buffered, then removed from the config
	})
	routes := []RouteInfo{
		{Name: "payments", Match: "terminals/+/payments/#", KafkaTopic: "payments", Priority: 0, MaxAge: 720 * time.Hour, MaxBytes: 512 << 20, OnFull: "reject"},
		{Name: "telemetry", Match: "terminals/+/telemetry/#", KafkaTopic: "telemetry", Priority: 5, MaxAge: 24 * time.Hour, OnFull: "drop_oldest"},
	}
	link := LinkStatus{State: LinkUp, LastAck: fixedNow.Add(-3 * time.Second), RecentRate: 2}
	drops := map[string]map[string]uint64{"payments": {DropMaxAge: 1, DropRejected: 4}}
	src := bufferSources(b, routes, link, drops)
	src.ReceiptsPending = func() map[string]int { return map[string]int{"t-1": 2} }
	_, base := startServer(t, src)

	code, body, hdr := get(t, base+"/status")
	if code != http.StatusOK {
		t.Fatalf("/status = %d: %s", code, body)
	}
	if ct := hdr.Get("Content-Type"); ct != "application/json" {
		t.Errorf("/status Content-Type = %q", ct)
	}
	// The field names are the contract: check them on the raw document.
	var raw map[string]any
	if err := json.Unmarshal([]byte(body), &raw); err != nil {
		t.Fatalf("/status is not JSON: %v\n%s", err, body)
	}
	for _, k := range []string{"gateway_id", "version", "time", "routes", "link", "disk", "receipts"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("/status lacks %q", k)
		}
	}
	route0 := raw["routes"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "kafka_topic", "priority", "backlog_messages", "backlog_bytes", "oldest_age_seconds", "drops", "estimated_drain_seconds"} {
		if _, ok := route0[k]; !ok {
			t.Errorf("/status routes[0] lacks %q", k)
		}
	}
	for _, k := range []string{"max_age", "drop_oldest", "rejected"} {
		if _, ok := route0["drops"].(map[string]any)[k]; !ok {
			t.Errorf("/status routes[0].drops lacks %q", k)
		}
	}
	linkRaw := raw["link"].(map[string]any)
	for _, k := range []string{"state", "last_ack", "down_since", "down_for_seconds", "rate_records_per_second"} {
		if _, ok := linkRaw[k]; !ok {
			t.Errorf("/status link lacks %q", k)
		}
	}
	if linkRaw["down_since"] != nil {
		t.Errorf("link.down_since = %v while up, want null", linkRaw["down_since"])
	}
	if linkRaw["last_ack"] != "2025-03-14T11:59:57Z" {
		t.Errorf("link.last_ack = %v, want RFC 3339 2025-03-14T11:59:57Z", linkRaw["last_ack"])
	}
	for _, k := range []string{"used_bytes", "budget_bytes", "file_bytes", "used_percent"} {
		if _, ok := raw["disk"].(map[string]any)[k]; !ok {
			t.Errorf("/status disk lacks %q", k)
		}
	}

	// The listen-address form (":port") reaches the same endpoint.
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(base, "http://"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := FetchStatus(ctx, ":"+port)
	if err != nil {
		t.Fatalf("FetchStatus: %v", err)
	}
	want := buildStatus(&src, fixedNow)
	wantJSON, _ := json.Marshal(want)
	gotJSON, _ := json.Marshal(st)
	if string(gotJSON) != string(wantJSON) {
		t.Fatalf("FetchStatus round trip differs:\n got %s\nwant %s", gotJSON, wantJSON)
	}

	if st.GatewayID != "edge-01" || st.Version != "1.2.3" || !st.Time.Equal(fixedNow) || !st.Ready {
		t.Errorf("header fields = %q %q %v ready=%v", st.GatewayID, st.Version, st.Time, st.Ready)
	}
	if len(st.Routes) != 3 {
		t.Fatalf("routes = %+v, want payments, telemetry, legacy", st.Routes)
	}
	pay, tel, leg := st.Routes[0], st.Routes[1], st.Routes[2]
	if pay.Name != "payments" || !pay.Configured || pay.KafkaTopic != "payments" || *pay.Priority != 0 ||
		pay.BacklogMessages != 2 || pay.OldestAgeSeconds != 300 || pay.MaxBytes != 512<<20 || pay.MaxAgeSeconds != 720*3600 {
		t.Errorf("payments = %+v", pay)
	}
	if pay.Drops != (DropCounts{MaxAge: 1, Rejected: 4}) {
		t.Errorf("payments drops = %+v", pay.Drops)
	}
	if pay.EstimatedDrainSeconds == nil || *pay.EstimatedDrainSeconds != 1.5 {
		t.Errorf("payments ETA = %v, want 1.5s (legacy's 1 first, then its 2, at 2/s)", pay.EstimatedDrainSeconds)
	}
	if tel.Name != "telemetry" || tel.BacklogMessages != 0 || tel.OldestReceived != nil || tel.EstimatedDrainSeconds == nil || *tel.EstimatedDrainSeconds != 0 {
		t.Errorf("telemetry (empty) = %+v", tel)
	}
	if leg.Name != "legacy" || leg.Configured || leg.Priority != nil || leg.BacklogMessages != 1 || leg.OldestAgeSeconds != 50*3600 {
		t.Errorf("legacy (unconfigured) = %+v", leg)
	}
	// Unconfigured routes drain first (one client's order across a rename).
	if leg.EstimatedDrainSeconds == nil || *leg.EstimatedDrainSeconds != 0.5 {
		t.Errorf("legacy ETA = %v, want 0.5s (its 1 message at 2/s)", leg.EstimatedDrainSeconds)
	}
	if !st.Link.Up || st.Link.State != LinkUp || st.Link.DownSince != nil || st.Link.DownForSeconds != 0 {
		t.Errorf("link = %+v", st.Link)
	}
	_, used := b.Total()
	if st.Disk.UsedBytes != used || st.Disk.BudgetBytes != 1<<30 || st.Disk.FileBytes != b.FileSize() || st.Disk.UsedPercent == nil {
		t.Errorf("disk = %+v (buffer used %d, file %d)", st.Disk, used, b.FileSize())
	}
	if st.Receipts == nil || st.Receipts.PendingTotal != 2 || st.Receipts.PendingDevices != 1 ||
		len(st.Receipts.ByDevice) != 1 || st.Receipts.ByDevice[0] != (DevicePending{Device: "t-1", Pending: 2}) {
		t.Errorf("receipts = %+v", st.Receipts)
	}
}

func TestFetchStatusErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	// Nothing listening: a port we held and released.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if _, err := FetchStatus(ctx, addr); err == nil {
		t.Error("FetchStatus from a closed port succeeded")
	}
	if _, err := FetchStatus(ctx, "no-port"); err == nil {
		t.Error("FetchStatus with a bad address succeeded")
	}

	// Something that is not the admin endpoint.
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "nope", http.StatusNotFound)
	})}
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln2) }()
	defer srv.Close()
	_, err = FetchStatus(ctx, "http://"+ln2.Addr().String())
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("FetchStatus from a 404 server = %v, want an error naming 404", err)
	}
}

func TestStatusURL(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:9100":         "http://127.0.0.1:9100/status",
		":9100":                  "http://127.0.0.1:9100/status",
		"0.0.0.0:9100":           "http://127.0.0.1:9100/status",
		"[::]:9100":              "http://[::1]:9100/status",
		"gw.local:9100":          "http://gw.local:9100/status",
		"http://10.0.0.5:9100/":  "http://10.0.0.5:9100/status",
		"https://gw.example:443": "https://gw.example:443/status",
	} {
		got, err := statusURL(in)
		if err != nil || got != want {
			t.Errorf("statusURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// A panicking source must not take the process down through the metrics
// collector (which the registry runs in its own goroutine).
func TestMetricsSourcePanicIsContained(t *testing.T) {
	f := &fakeSources{}
	src := f.sources()
	src.Drops = func() map[string]map[string]uint64 { panic("boom") }
	_, base := startServer(t, src)
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// Still serving afterwards.
	if code, _, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz after a panicking scrape = %d", code)
	}
}

func TestCloseWaitsForContext(t *testing.T) {
	f := &fakeSources{}
	src := f.sources()
	entered := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	src.Link = func() LinkStatus {
		once.Do(func() { close(entered) })
		<-release
		return LinkStatus{}
	}
	s, err := New("127.0.0.1:0", src, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer close(release)
	go func() {
		if resp, err := http.Get("http://" + s.Addr() + "/status"); err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	// A request stuck in a source: Close gives up when its context ends
	// and reports it, rather than hanging shutdown.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close with a stuck request = %v, want deadline exceeded", err)
	}
}

func TestSecondsDurationClamps(t *testing.T) {
	if secondsDuration(math.NaN()) != 0 || secondsDuration(-5) != 0 || secondsDuration(1e300) != math.MaxInt64 {
		t.Error("secondsDuration does not clamp NaN, negative or huge values")
	}
}
