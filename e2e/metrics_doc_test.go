package e2e

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/gateway/internal/testkit"
)

var metricRowRe = regexp.MustCompile("^\\| `(gateway_[a-z_]+)` \\| (counter|gauge|histogram|summary) \\|(.*)$")

// The metrics reference (docs/metrics.md) and a live /metrics of the real
// binary name the same gateway_ series with the same types. A series the
// reference says "appears with the first ..." may be absent from a fresh
// gateway; every other one must be served.
func TestMetricsReferenceMatchesLiveMetrics(t *testing.T) {
	doc, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		typ     string
		onEvent bool
	}
	documented := map[string]row{}
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(line, "## The fleet exporter") {
			break // served by `gateway fleet exporter`, checked in fleet/
		}
		if m := metricRowRe.FindStringSubmatch(line); m != nil {
			if _, dup := documented[m[1]]; dup {
				t.Errorf("docs/metrics.md lists %s twice", m[1])
			}
			documented[m[1]] = row{m[2], strings.Contains(m[3], "Appears with the first")}
		}
	}
	if len(documented) < 30 {
		t.Fatalf("only %d metrics parsed from docs/metrics.md: the table format changed?", len(documented))
	}

	k := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	g := newGateway(t, k.Addrs, "")
	g.start()
	// A stored publish and a refused one, so the per-route counters appear.
	c := mqttClient(t, g.mqttAddr, "term-1", false)
	if tok := c.Publish("terminals/term-1/payments/p1", 1, false, "{}"); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	c.Publish("terminals/term-1/unrouted", 1, false, "{}").WaitTimeout(2 * time.Second) // refused: no route

	var live map[string]string
	testkit.Eventually(t, 30*time.Second, func() bool {
		live = liveMetricTypes(t, "http://"+g.admin+"/metrics")
		_, stored := live["gateway_ingest_messages_total"]
		_, refused := live["gateway_ingest_refused_total"]
		return stored && refused
	}, "ingest counters on /metrics")

	var undocumented, wrongType, missing []string
	for name, typ := range live {
		r, ok := documented[name]
		switch {
		case !ok:
			undocumented = append(undocumented, name+" ("+typ+")")
		case r.typ != typ:
			wrongType = append(wrongType, name+": documented "+r.typ+", served "+typ)
		}
	}
	for name, r := range documented {
		if _, ok := live[name]; !ok && !r.onEvent {
			missing = append(missing, name)
		}
	}
	sort.Strings(undocumented)
	sort.Strings(wrongType)
	sort.Strings(missing)
	if len(undocumented) > 0 {
		t.Errorf("served but not in docs/metrics.md (add a row each): %s", strings.Join(undocumented, ", "))
	}
	if len(wrongType) > 0 {
		t.Errorf("types differ: %s", strings.Join(wrongType, "; "))
	}
	if len(missing) > 0 {
		t.Errorf("in docs/metrics.md but not served (remove the row, or say when it appears): %s", strings.Join(missing, ", "))
	}
}

// liveMetricTypes reads a Prometheus text page: gateway_ family -> type.
func liveMetricTypes(t *testing.T, url string) map[string]string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 4 && f[0] == "#" && f[1] == "TYPE" && strings.HasPrefix(f[2], "gateway_") {
			out[f[2]] = f[3]
		}
	}
	return out
}
