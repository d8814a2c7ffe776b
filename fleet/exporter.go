package fleet

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Exporter is one Prometheus scrape target for the whole fleet: it keeps
// the newest status record of every box (fed by a reader of the status
// topic) and, on each scrape, emits const metrics labelled gateway="<id>".
// No registry per box; a box not heard from for Forget is dropped.
type Exporter struct {
	mu      sync.Mutex
	boxes   map[string]Box
	records uint64
	invalid uint64
	// Forget drops a box silent for longer (0 keeps every box).
	Forget time.Duration
	now    func() time.Time
}

// NewExporter returns an empty exporter.
func NewExporter() *Exporter {
	return &Exporter{boxes: map[string]Box{}, now: time.Now}
}

// Observe keeps b if it is the newest record of its box.
func (e *Exporter) Observe(b Box) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.records++
	if cur, ok := e.boxes[b.Record.Gateway]; ok && cur.Record.At.After(b.Record.At) {
		return
	}
	e.boxes[b.Record.Gateway] = b
}

// Invalid counts a record that could not be read.
func (e *Exporter) Invalid(error) {
	e.mu.Lock()
	e.invalid++
	e.mu.Unlock()
}

// Boxes returns the newest record of every box.
func (e *Exporter) Boxes() map[string]Box {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]Box, len(e.boxes))
	for k, b := range e.boxes {
		out[k] = b
	}
	return out
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, append([]string{"gateway"}, labels...), nil)
}

// The exporter's metrics; docs/metrics.md lists them under "The fleet
// exporter".
var (
	dBoxes      = prometheus.NewDesc("gateway_fleet_boxes", "Boxes the exporter has a status record of.", nil, nil)
	dRecords    = prometheus.NewDesc("gateway_fleet_status_records_total", "Status records the exporter read.", nil, nil)
	dInvalid    = prometheus.NewDesc("gateway_fleet_status_invalid_total", "Records on the status topic that were not status records the exporter could read.", nil, nil)
	dInfo       = desc("gateway_fleet_info", "1 per box, with its release and the hash of the configuration in force.", "version", "config_hash", "config_source")
	dSeen       = desc("gateway_fleet_last_seen_timestamp_seconds", "When the box made its newest status record.")
	dSilent     = desc("gateway_fleet_silent_seconds", "Seconds since the box's newest status record was made: a box whose link is down grows here.")
	dInterval   = desc("gateway_fleet_status_interval_seconds", "The box's fleet.status_interval.")
	dUptime     = desc("gateway_fleet_uptime_seconds", "The box's process uptime at its newest record.")
	dLinkUp     = desc("gateway_fleet_link_up", "1 if the box's newest record says its link is up.")
	dOutage     = desc("gateway_fleet_last_outage_seconds", "How long the box's last outage lasted (0: none since its start).")
	dOutageBuf  = desc("gateway_fleet_last_outage_buffered", "Publishes the box stored during its last outage.")
	dBacklog    = desc("gateway_fleet_backlog_messages", "Undelivered messages per route, as of the box's newest record.", "route")
	dBacklogB   = desc("gateway_fleet_backlog_bytes", "Undelivered bytes per route, as of the box's newest record.", "route")
	dOldest     = desc("gateway_fleet_oldest_undelivered_seconds", "Age of the oldest undelivered message per route, as of the box's newest record.", "route")
	dDropped    = desc("gateway_fleet_dropped_total", "Messages the box's rules removed per route and reason since its start.", "route", "reason")
	dThinned    = desc("gateway_fleet_thinned_total", "Messages the box's thinning steps kept out or removed per route and step since its start.", "route", "keep")
	dDead       = desc("gateway_fleet_dead_letters", "Records in the box's dead-letter store per route and reason.", "route", "reason")
	dDiskUsed   = desc("gateway_fleet_disk_used_bytes", "The box's buffer use.")
	dDiskBudget = desc("gateway_fleet_disk_budget_bytes", "The box's buffer.max_disk_bytes.")
	dFlash      = desc("gateway_fleet_flash_written_bytes_per_day", "The box's write rate to storage (its flash wear), as bytes a day.")
	dClients    = desc("gateway_fleet_clients_connected", "MQTT clients connected to the box.")
	dSessions   = desc("gateway_fleet_sessions", "MQTT clients the box knows (connected, or offline with a session).")
	dReceipts   = desc("gateway_fleet_receipts_pending", "Receipts waiting in the box's outboxes.")
	dCfgVersion = desc("gateway_fleet_config_version", "The newest fleet overlay version the box applied (0: none).")
	dRefused    = desc("gateway_fleet_config_refused", "Overlays the box refused since its config in force.")
	dProblems   = desc("gateway_fleet_problems", "Problems the box reports for an operator to fix.")
)

// Describe sends every metric's description.
func (e *Exporter) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{dBoxes, dRecords, dInvalid, dInfo, dSeen, dSilent, dInterval, dUptime, dLinkUp, dOutage, dOutageBuf,
		dBacklog, dBacklogB, dOldest, dDropped, dThinned, dDead, dDiskUsed, dDiskBudget, dFlash, dClients, dSessions, dReceipts, dCfgVersion, dRefused, dProblems} {
		ch <- d
	}
}

// Collect emits every box's metrics from its newest record.
func (e *Exporter) Collect(ch chan<- prometheus.Metric) {
	now := e.now()
	e.mu.Lock()
	if e.Forget > 0 {
		for id, b := range e.boxes {
			if now.Sub(b.Record.At) > e.Forget {
				delete(e.boxes, id)
			}
		}
	}
	boxes := make([]*Record, 0, len(e.boxes))
	for _, b := range e.boxes {
		boxes = append(boxes, b.Record)
	}
	records, invalid := e.records, e.invalid
	e.mu.Unlock()

	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	ch <- prometheus.MustNewConstMetric(dBoxes, prometheus.GaugeValue, float64(len(boxes)))
	ch <- prometheus.MustNewConstMetric(dRecords, prometheus.CounterValue, float64(records))
	ch <- prometheus.MustNewConstMetric(dInvalid, prometheus.CounterValue, float64(invalid))
	for _, r := range boxes {
		id := r.Gateway
		g(dInfo, 1, id, r.Version, r.Config.Hash, r.Config.Source)
		g(dSeen, float64(r.At.UnixMilli())/1000, id)
		g(dSilent, max(now.Sub(r.At).Seconds(), 0), id)
		g(dInterval, r.IntervalS, id)
		g(dUptime, float64(r.UptimeS), id)
		up := 0.0
		if r.Link.State == "up" {
			up = 1
		}
		g(dLinkUp, up, id)
		g(dOutage, r.LastOutage.Seconds, id)
		g(dOutageBuf, float64(r.LastOutage.Buffered), id)
		for _, rt := range r.Routes {
			g(dBacklog, float64(rt.BacklogMessages), id, rt.Name)
			g(dBacklogB, float64(rt.BacklogBytes), id, rt.Name)
			g(dOldest, rt.OldestAgeS, id, rt.Name)
			for _, reason := range sortedKeys(rt.Drops) {
				ch <- prometheus.MustNewConstMetric(dDropped, prometheus.CounterValue, float64(rt.Drops[reason]), id, rt.Name, reason)
			}
			thinned := numericMap(rt.Thinned)
			for _, keep := range sortedKeys(thinned) {
				ch <- prometheus.MustNewConstMetric(dThinned, prometheus.CounterValue, float64(thinned[keep]), id, rt.Name, keep)
			}
			for _, reason := range sortedKeys(rt.DeadLetters) {
				g(dDead, float64(rt.DeadLetters[reason]), id, rt.Name, reason)
			}
		}
		g(dDiskUsed, float64(r.Disk.UsedBytes), id)
		g(dDiskBudget, float64(r.Disk.BudgetBytes), id)
		g(dFlash, r.Flash.BytesWrittenPerDay, id)
		g(dClients, float64(r.Clients.Connected), id)
		g(dSessions, float64(r.Clients.Sessions), id)
		g(dReceipts, float64(r.Receipts.Pending), id)
		g(dCfgVersion, float64(r.Config.FleetVersion), id)
		g(dRefused, float64(len(r.Config.Refused)), id)
		g(dProblems, float64(len(r.Problems)), id)
	}
}
