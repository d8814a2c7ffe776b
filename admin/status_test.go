package admin

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/gateway/buffer"
)

func eta(r RouteReport) string {
	if r.EstimatedDrainSeconds == nil {
		return "unknown"
	}
	return fmt.Sprint(*r.EstimatedDrainSeconds)
}

func TestEstimatedDrainWithPriorities(t *testing.T) {
	routes := []RouteInfo{
		{Name: "bulk", Priority: 9},
		{Name: "payments", Priority: 0},
		{Name: "telemetry", Priority: 5},
		{Name: "events", Priority: 5},
		{Name: "alarms", Priority: 1},
	}
	backlog := map[string]buffer.RouteStats{
		"bulk":      {Messages: 1000},
		"payments":  {Messages: 100},
		"telemetry": {Messages: 300},
		"events":    {Messages: 100},
		"alarms":    {Messages: 0},
		"old":       {Messages: 50}, // no longer configured: drains first
		"gone":      {Messages: 0},  // empty and unconfigured: not listed
	}
	rate := 10.0
	src := (&fakeSources{}).sources()
	src.Routes = func() []RouteInfo { return routes }
	src.Backlog = func() map[string]buffer.RouteStats { return backlog }
	src.Link = func() LinkStatus { return LinkStatus{State: LinkUp, RecentRate: rate} }

	st := buildStatus(&src, fixedNow)
	got := map[string]string{}
	var order []string
	for _, r := range st.Routes {
		got[r.Name] = eta(r)
		order = append(order, r.Name)
	}
	if want := "bulk payments telemetry events alarms old"; strings.Join(order, " ") != want {
		t.Errorf("route order = %v, want config order then unconfigured: %s", order, want)
	}
	want := map[string]string{
		"payments":  "15",  // (50 + 100) / 10: the orphan first
		"alarms":    "0",   // empty: nothing to wait for, whatever is ahead
		"telemetry": "55",  // (50 + 100 + 300 + 100) / 10: equal priorities drain together
		"events":    "55",  // same group as telemetry
		"bulk":      "155", // (50 + 100 + 300 + 100 + 1000) / 10
		"old":       "5",   // no longer configured: drains first, its own 50
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("ETA %s = %s, want %s", name, got[name], w)
		}
	}

	// Nothing drained recently: unknown where there is backlog, 0 where empty.
	rate = 0
	st = buildStatus(&src, fixedNow)
	for _, r := range st.Routes {
		w := "unknown"
		if r.BacklogMessages == 0 {
			w = "0"
		}
		if eta(r) != w {
			t.Errorf("rate 0: ETA %s = %s, want %s", r.Name, eta(r), w)
		}
	}
}

func TestUnknownETAOverHTTP(t *testing.T) {
	f := &fakeSources{
		routes:  []RouteInfo{{Name: "payments", KafkaTopic: "payments"}, {Name: "telemetry", KafkaTopic: "telemetry", Priority: 5}},
		backlog: map[string]buffer.RouteStats{"payments": {Messages: 3, Bytes: 300, Oldest: fixedNow.Add(-time.Minute)}},
		link:    LinkStatus{State: LinkDown, DownSince: fixedNow.Add(-time.Minute)},
	}
	_, base := startServer(t, f.sources())
	code, body, _ := get(t, base+"/status")
	if code != 200 {
		t.Fatalf("/status = %d", code)
	}
	// null, not 0 and not absent: "unknown" is a different answer from "now".
	if !strings.Contains(body, `"estimated_drain_seconds": null`) {
		t.Errorf("/status lacks a null ETA for the stuck route:\n%s", body)
	}
	if !strings.Contains(body, `"estimated_drain_seconds": 0`) {
		t.Errorf("/status lacks a 0 ETA for the empty route:\n%s", body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := FetchStatus(ctx, strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	PrintStatus(&out, st)
	row := findLine(out.String(), "payments")
	if !strings.HasSuffix(strings.TrimSpace(row), "unknown") {
		t.Errorf("payments row %q does not end in ETA unknown\n%s", row, out.String())
	}
}

func findLine(s, prefix string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

func TestPrintStatusLinkDown(t *testing.T) {
	used := int64(126143283) // 120.3MiB
	f := &fakeSources{
		routes: []RouteInfo{
			{Name: "payments", KafkaTopic: "payments", Priority: 0, MaxBytes: 512 << 20},
			{Name: "telemetry", KafkaTopic: "telemetry", Priority: 5},
		},
		backlog: map[string]buffer.RouteStats{
			"payments":  {Messages: 1200, Bytes: 1 << 20, Oldest: fixedNow.Add(-(2*time.Hour + 13*time.Minute))},
			"telemetry": {Messages: 40000, Bytes: 40 << 20, Oldest: fixedNow.Add(-(4*24*time.Hour + 2*time.Hour))},
			"legacy":    {Messages: 12, Bytes: 1024, Oldest: fixedNow.Add(-3 * time.Second)},
		},
		drops: map[string]map[string]uint64{"telemetry": {DropMaxAge: 3, DropDropOldest: 1532}},
		link: LinkStatus{
			State:     LinkDown,
			LastAck:   fixedNow.Add(-(2*time.Hour + 14*time.Minute)),
			DownSince: fixedNow.Add(-(2*time.Hour + 13*time.Minute)),
			LastError: "kafka: client has run out of available brokers",
		},
		receipts: map[string]int{"t-7": 5, "t-2": 4, "t-9": 3, "t-1": 1},
		used:     used,
		file:     140 << 20,
	}
	f.ready.Store(true)
	_, base := startServer(t, f.sources())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := FetchStatus(ctx, strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	PrintStatus(&buf, st)
	out := buf.String()
	t.Logf("gateway status:\n%s", out)

	for _, want := range []string{
		"gateway edge-01 (version 1.2.3), ready",
		"link: DOWN for 2h13m (since 2025-03-14 09:47:00Z), last Kafka ack 2h14m ago",
		"last error: kafka: client has run out of available brokers",
		"disk: 120.3MiB of 1.00GiB (11.7%), buffer file 140.0MiB",
		"ROUTE", "PRIO", "BACKLOG", "BYTES", "OLDEST", "DROPS(max_age/drop_oldest/rejected)", "ETA",
		"receipts: 13 pending for 4 devices (most: t-7 5, t-2 4, t-9 3)",
		"* no longer configured",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	rows := []struct{ prefix, fields string }{
		{"payments ", "payments 0 1200 1.0MiB/512.0MiB 2h13m 0/0/0 unknown"},
		{"telemetry ", "telemetry 5 40000 40.0MiB 4d2h 3/1532/0 unknown"},
		{"legacy*", "legacy* - 12 1.0KiB 3s 0/0/0 unknown"},
	}
	for _, r := range rows {
		line := findLine(out, r.prefix)
		if got := strings.Join(strings.Fields(line), " "); got != r.fields {
			t.Errorf("row %q = %q, want %q", r.prefix, got, r.fields)
		}
	}
}

func TestPrintStatusLinkUp(t *testing.T) {
	st := &Status{
		GatewayID: "edge-02",
		Time:      fixedNow,
		Ready:     true,
		Link:      LinkReport{State: LinkUp, Up: true, LastAck: timePtr(fixedNow.Add(-3 * time.Second)), RateRecordsPerSecond: 1234},
		Disk:      DiskReport{UsedBytes: 0, BudgetBytes: 1 << 30, UsedPercent: new(float64)},
		Receipts:  &ReceiptsReport{ByDevice: []DevicePending{}},
	}
	var buf bytes.Buffer
	PrintStatus(&buf, st)
	out := buf.String()
	for _, want := range []string{
		"link: up, last Kafka ack 3s ago, draining 1234 records/s",
		"disk: 0B of 1.00GiB (0.0%)",
		"routes: none configured",
		"receipts: none pending",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "DOWN") || strings.Contains(out, "last error") {
		t.Errorf("link-up output mentions a down link:\n%s", out)
	}

	// No ack ever, no receipts source, not ready.
	st = &Status{Time: fixedNow, Link: LinkReport{State: "connecting"}}
	buf.Reset()
	PrintStatus(&buf, st)
	out = buf.String()
	for _, want := range []string{"NOT READY", "link: CONNECTING, no Kafka ack since start", "receipts: not reported", "no budget reported"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestReceiptsCappedAtLargest(t *testing.T) {
	pending := map[string]int{}
	for i := 0; i < 250; i++ {
		pending[fmt.Sprintf("t-%03d", i)] = i // t-000 has 0: not pending
	}
	rep := receiptsReport(pending)
	if rep.PendingDevices != 249 || rep.PendingTotal != 249*250/2 {
		t.Errorf("devices %d total %d, want 249 and %d", rep.PendingDevices, rep.PendingTotal, 249*250/2)
	}
	if len(rep.ByDevice) != maxDevicesListed || !rep.Truncated {
		t.Fatalf("by_device has %d entries (truncated %v), want %d", len(rep.ByDevice), rep.Truncated, maxDevicesListed)
	}
	if rep.ByDevice[0] != (DevicePending{"t-249", 249}) || rep.ByDevice[99] != (DevicePending{"t-150", 150}) {
		t.Errorf("by_device first/last = %+v %+v, want the largest first", rep.ByDevice[0], rep.ByDevice[99])
	}
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second:                    "0s",
		0:                               "0s",
		900 * time.Millisecond:          "0s",
		3 * time.Second:                 "3s",
		59 * time.Second:                "59s",
		4 * time.Minute:                 "4m",
		4*time.Minute + 5*time.Second:   "4m5s",
		2*time.Hour + 13*time.Minute:    "2h13m",
		2*time.Hour + 13*time.Second:    "2h",
		24 * time.Hour:                  "1d",
		4*24*time.Hour + 2*time.Hour:    "4d2h",
		400*24*time.Hour + 59*time.Hour: "402d11h",
	} {
		if got := FormatDuration(d); got != want {
			t.Errorf("FormatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{
		0:         "0B",
		1023:      "1023B",
		1024:      "1.0KiB",
		126143283: "120.3MiB",
		1 << 30:   "1.00GiB",
		5 << 40:   "5.00TiB",
	} {
		if got := FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestDownForOnlyWhenDown(t *testing.T) {
	src := (&fakeSources{}).sources()
	// A bridge that left DownSince set after coming back must not report
	// the link as down for ever.
	src.Link = func() LinkStatus {
		return LinkStatus{State: LinkUp, DownSince: fixedNow.Add(-time.Hour)}
	}
	if st := buildStatus(&src, fixedNow); st.Link.DownForSeconds != 0 || !st.Link.Up {
		t.Errorf("link up with stale DownSince: %+v", st.Link)
	}
	// A clock stepped back: ages are not negative.
	src.Link = func() LinkStatus { return LinkStatus{State: LinkDown, DownSince: fixedNow.Add(time.Hour)} }
	if st := buildStatus(&src, fixedNow); st.Link.DownForSeconds != 0 {
		t.Errorf("DownForSeconds = %v for a DownSince in the future", st.Link.DownForSeconds)
	}
}

// Device-controlled text (device names, Kafka's error texts, route waits)
// reaches the console escaped; /status says which gateway answered.
func TestPrintStatusEscapesAndSaysWhoAnswered(t *testing.T) {
	st := &Status{
		GatewayID: "edge-03",
		Time:      fixedNow,
		Ready:     true,
		DataDir:   "/var/lib/gateway",
		Epoch:     "0f3c",
		PID:       4242,
		Link:      LinkReport{State: LinkDown, LastError: "broker said \x1b]0;owned\x07"},
		Receipts: &ReceiptsReport{PendingTotal: 1, PendingDevices: 1,
			ByDevice: []DevicePending{{Device: "t-1\x1b[2J\x1b[H", Pending: 1}}},
		Routes: []RouteReport{{Name: "payments", Configured: true, Priority: new(int),
			Waiting: &WaitReport{Topic: "x", Reason: "topic_missing", Error: "e\r\nPROBLEM: fake"}}},
		Problems: []string{"id \u202eevil"},
	}
	var buf bytes.Buffer
	PrintStatus(&buf, st)
	out := buf.String()
	if strings.ContainsAny(out, "\x1b\x07\r\u202e") {
		t.Fatalf("control characters reached the output:\n%q", out)
	}
	for _, want := range []string{`t-1\x1b[2J\x1b[H 1`, `broker said \x1b]0;owned\x07`, `e\r\nPROBLEM: fake`, `id \u202eevil`,
		"data dir /var/lib/gateway, epoch 0f3c, pid 4242"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// /status names the gateway that answers: data dir, buffer epoch, process.
func TestStatusSaysWhichGateway(t *testing.T) {
	f := &fakeSources{}
	src := f.sources()
	src.DataDir = "/srv/gw-a"
	src.Epoch = func() string { return "e-1" }
	_, base := startServer(t, src)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := FetchStatus(ctx, strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	if st.DataDir != "/srv/gw-a" || st.Epoch != "e-1" || st.PID != os.Getpid() {
		t.Fatalf("identity: data_dir %q epoch %q pid %d", st.DataDir, st.Epoch, st.PID)
	}
}
