package admin

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// Dead letters, a waiting route, quarantined state files and problems reach
// /status (JSON) and the `gateway status` printout; a route that only has
// dead letters (no longer configured, nothing buffered) is still listed.
func TestStatusReportsTheEdges(t *testing.T) {
	src := (&fakeSources{routes: []RouteInfo{{Name: "payments"}, {Name: "audit"}}}).sources()
	since := fixedNow.Add(-90 * time.Second)
	src.DeadLetterCounts = func() map[string]map[string]uint64 {
		return map[string]map[string]uint64{"payments": {"too_large": 2}, "old": {"corrupt": 1}}
	}
	src.Waiting = func() map[string]RouteWait {
		return map[string]RouteWait{"audit": {Topic: "audit", Reason: "topic_missing", Error: "unknown topic", Since: since, Retry: fixedNow.Add(time.Minute)}}
	}
	src.QuarantinedFiles = func() map[string]string { return map[string]string{"sessions.db": "/d/sessions.db.corrupt-x"} }
	src.Problems = func() []string { return []string{"another gateway uses the id"} }

	st := buildStatus(&src, fixedNow)
	raw, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var back Status
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	byName := map[string]RouteReport{}
	for _, r := range back.Routes {
		byName[r.Name] = r
	}
	if back.DeadLettersTotal != 3 || byName["payments"].DeadLetters["too_large"] != 2 || byName["old"].DeadLetters["corrupt"] != 1 {
		t.Fatalf("dead letters: total %d, routes %+v", back.DeadLettersTotal, back.Routes)
	}
	if w := byName["audit"].Waiting; w == nil || w.Reason != "topic_missing" || w.WaitingForSeconds != 90 {
		t.Fatalf("audit waiting: %+v", w)
	}
	if back.QuarantinedFiles["sessions.db"] == "" || len(back.Problems) != 1 {
		t.Fatalf("quarantined %v, problems %v", back.QuarantinedFiles, back.Problems)
	}
	var out bytes.Buffer
	PrintStatus(&out, &back)
	for _, want := range []string{"PROBLEM: another gateway", "quarantined: sessions.db", "route audit WAITING on topic audit (topic_missing)", "dead letters: 3 (old/corrupt 1, payments/too_large 2)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("gateway status lacks %q:\n%s", want, out.String())
		}
	}
}
