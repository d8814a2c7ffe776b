package docs

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// The dashboard has the fleet board: boxes by oldest undelivered, silent
// (link down) longest, and drops, from the fleet exporter's metrics (which
// TestGrafanaDashboardUsesDocumentedMetrics checks against the reference).
func TestGrafanaFleetBoard(t *testing.T) {
	data, err := os.ReadFile("../deploy/grafana/gateway.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	inFleet := false
	found := map[string]bool{}
	for _, p := range dash.Panels {
		if p.Type == "row" {
			inFleet = strings.HasPrefix(p.Title, "Fleet")
			continue
		}
		if !inFleet {
			continue
		}
		for _, tg := range p.Targets {
			for _, m := range []string{"gateway_fleet_oldest_undelivered_seconds", "gateway_fleet_silent_seconds", "gateway_fleet_dropped_total"} {
				if strings.Contains(tg.Expr, m) && strings.Contains(tg.Expr, "gateway") {
					found[m] = true
				}
			}
		}
	}
	if len(found) != 3 {
		t.Fatalf("the Fleet row lacks a board by oldest undelivered, silent longest or drops: found %v", found)
	}
}
