package e2e

import (
	"strings"
	"testing"

	"github.com/edgegw/gateway/internal/testkit"
)

// What an operator sees on a first start and a clean stop of the real
// binary: no ERROR line (mochi's session store used to log "failed to get
// data ... key=SYS" every first start), and no key repeated on a line
// ("component=bridge component=bridge").
func TestFirstStartLogIsClean(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	g := newGateway(t, k.Addrs, "")
	g.start()
	if code := g.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	logs := g.logs.String()
	if !strings.Contains(logs, "gateway started") || !strings.Contains(logs, "stopped cleanly") {
		t.Fatalf("unexpected log:\n%s", logs)
	}
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "level=ERROR") {
			t.Errorf("ERROR on a clean first start: %s", line)
		}
		seen := map[string]bool{}
		for _, f := range strings.Fields(line) {
			key, _, ok := strings.Cut(f, "=")
			if !ok || strings.ContainsAny(key, `"`) {
				continue
			}
			if seen[key] && key != "" {
				t.Errorf("key %q repeated: %s", key, line)
				break
			}
			seen[key] = true
		}
	}
}
