package fleet

import (
	"encoding/json"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/edgegw/gateway/admin"
)

func sampleRecord(id string, at time.Time) *Record {
	st := &admin.Status{GatewayID: id, Version: "1.2.3", Time: at,
		Routes: []admin.RouteReport{{Name: "payments", BacklogMessages: 5, BacklogBytes: 500, OldestAgeSeconds: 42,
			Drops: admin.DropCounts{MaxAge: 1}, DeadLetters: map[string]uint64{"too_large": 2}}},
		Link:     admin.LinkReport{State: "up"},
		Disk:     admin.DiskReport{UsedBytes: 500, BudgetBytes: 1 << 30},
		Receipts: &admin.ReceiptsReport{PendingTotal: 3},
		Problems: []string{"something"},
	}
	r := BuildRecord(st, Extra{Started: at.Add(-time.Hour), Interval: time.Minute, Clients: ClientsState{Connected: 4, Sessions: 9}})
	r.Routes[0].Thinned = json.RawMessage(`{"latest 5m": 7}`)
	return r
}

// The exporter serves exactly the series docs/metrics.md lists under "The
// fleet exporter", with the documented types and labels, one per box.
func TestExporterMetricsMatchDocs(t *testing.T) {
	ex := NewExporter()
	now := time.Now()
	ex.Observe(Box{Record: sampleRecord("ship-1", now.Add(-10*time.Second))})
	ex.Observe(Box{Record: sampleRecord("ship-2", now)})
	older := sampleRecord("ship-2", now.Add(-time.Hour))
	older.Version = "old"
	ex.Observe(Box{Record: older}) // an older record read later is not the newest
	reg := prometheus.NewRegistry()
	reg.MustRegister(ex)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	served := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		served[mf.GetName()] = mf
	}

	doc, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	section := string(doc)[strings.Index(string(doc), "## The fleet exporter"):]
	section = section[:strings.Index(section[3:], "\n## ")+3]
	row := regexp.MustCompile("(?m)^\\| `(gateway_fleet_[a-z_]+)` \\| (counter|gauge) \\| ([^|]*)\\|")
	documented := map[string]bool{}
	for _, m := range row.FindAllStringSubmatch(section, -1) {
		name, typ := m[1], m[2]
		documented[name] = true
		mf := served[name]
		if mf == nil {
			t.Errorf("documented but not served: %s", name)
			continue
		}
		if strings.ToLower(mf.GetType().String()) != typ {
			t.Errorf("%s: documented %s, served %s", name, typ, mf.GetType())
		}
		var want []string
		for _, l := range strings.Split(m[3], ",") {
			if l = strings.Trim(strings.TrimSpace(l), "`"); l != "" {
				want = append(want, l)
			}
		}
		var got []string
		for _, lp := range mf.GetMetric()[0].GetLabel() {
			got = append(got, lp.GetName())
		}
		sort.Strings(want)
		sort.Strings(got)
		if strings.Join(want, ",") != strings.Join(got, ",") {
			t.Errorf("%s: documented labels %v, served %v", name, want, got)
		}
	}
	if len(documented) < 20 {
		t.Fatalf("only %d rows parsed: the table format changed?", len(documented))
	}
	for name := range served {
		if !documented[name] {
			t.Errorf("served but not documented: %s", name)
		}
	}
	// Values come from each box's newest record.
	for _, m := range served["gateway_fleet_info"].GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == "version" && lp.GetValue() != "1.2.3" {
				t.Errorf("an older record replaced the newest: %v", m)
			}
		}
	}
	if n := served["gateway_fleet_boxes"].GetMetric()[0].GetGauge().GetValue(); n != 2 {
		t.Errorf("boxes %v", n)
	}
	thinned := served["gateway_fleet_thinned_total"].GetMetric()
	if len(thinned) != 2 || thinned[0].GetCounter().GetValue() != 7 {
		t.Errorf("thinning passed through from /status: %v", thinned)
	}
	ex.Forget = time.Minute
	ex.now = func() time.Time { return now.Add(2 * time.Minute) }
	mfs, _ = reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "gateway_fleet_boxes" && mf.GetMetric()[0].GetGauge().GetValue() != 0 {
			t.Errorf("boxes silent longer than Forget are still exported")
		}
	}
}

// The record carries /status's counts: drops by every reason, dead
// letters, and thinning as /status reports it.
func TestRecordFromStatus(t *testing.T) {
	r := sampleRecord("ship-1", time.Now())
	if r.Schema != SchemaVersion || r.UptimeS != 3600 || r.IntervalS != 60 || r.Receipts.Pending != 3 || r.Clients.Sessions != 9 {
		t.Fatalf("record: %+v", r)
	}
	rt := r.Routes[0]
	if rt.Drops["max_age"] != 1 || rt.Drops["drop_oldest"] != 0 || rt.DeadLetters["too_large"] != 2 || rt.OldestAgeS != 42 {
		t.Fatalf("route: %+v", rt)
	}
	c := CountsOf(&admin.Status{Routes: []admin.RouteReport{{Name: "a", Drops: admin.DropCounts{MaxAge: 5, Rejected: 1}}}})
	d, _ := c.Since(Counts{Dropped: map[string]uint64{"max_age": 2, "rejected": 1}})
	if len(d) != 1 || d["max_age"] != 3 {
		t.Fatalf("drops during an outage: %v", d)
	}
}

func TestTroubleOrder(t *testing.T) {
	now := time.Now()
	fine := sampleRecord("fine", now)
	fine.Problems, fine.Routes[0].OldestAgeS, fine.Routes[0].Drops, fine.Routes[0].DeadLetters = nil, 0, map[string]uint64{}, map[string]uint64{}
	silent := sampleRecord("silent", now.Add(-10*time.Minute))
	backlog := sampleRecord("backlog", now)
	backlog.Problems, backlog.Routes[0].OldestAgeS = nil, 3600
	refused := sampleRecord("refused", now)
	refused.Problems = nil
	refused.Config.Refused = []Refusal{{Key: "*", Version: 3, Reason: ReasonBadSig}}
	var ss []Summary
	for _, r := range []*Record{fine, backlog, refused, silent} {
		ss = append(ss, Summarize(r, now))
	}
	SortByTrouble(ss)
	var order []string
	for _, s := range ss {
		order = append(order, s.Gateway)
	}
	if strings.Join(order, " ") != "silent refused backlog fine" {
		t.Fatalf("order %v", order)
	}
	var b strings.Builder
	PrintBoard(&b, ss)
	if !strings.Contains(b.String(), "config *@3 refused: bad_signature") || !strings.Contains(b.String(), "silent for 10m") {
		t.Fatalf("board:\n%s", b.String())
	}
	if Printable("a\x1b[2Jb") != `a\x1b[2Jb` {
		t.Fatal("terminal escapes are not neutralised")
	}
}
