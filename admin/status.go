package admin

import (
	"encoding/json"
	"math"
	"net/http"
	"os"
	"sort"
	"time"
)

// Drop reasons counted per route (CONTRACT §3, §5).
const (
	DropMaxAge     = "max_age"
	DropDropOldest = "drop_oldest"
	DropRejected   = "rejected"
)

// maxDevicesListed caps Receipts.ByDevice so that /status stays small on a
// gateway with thousands of terminals.
const maxDevicesListed = 100

// Status is the JSON document served on GET /status and printed by
// `gateway status`. Field names are part of the outside contract: add, never
// rename or drop.
type Status struct {
	GatewayID string    `json:"gateway_id"`
	Version   string    `json:"version"`
	Time      time.Time `json:"time"` // when the server took this snapshot; ages are relative to it
	Ready     bool      `json:"ready"`
	// DataDir (absolute), Epoch (the buffer's) and PID say which gateway
	// answered: `gateway buffer` and `gateway deadletter` refuse an answer
	// from a gateway that does not own the data dir they were given.
	DataDir string        `json:"data_dir,omitempty"`
	Epoch   string        `json:"epoch,omitempty"`
	PID     int           `json:"pid"`
	Routes  []RouteReport `json:"routes"`
	Link    LinkReport    `json:"link"`
	Disk    DiskReport    `json:"disk"`
	// Receipts is null while the receipts downlink does not report.
	Receipts *ReceiptsReport `json:"receipts"`
	// DeadLettersTotal counts the records in the dead-letter store; per
	// route and reason in Routes[].DeadLetters.
	DeadLettersTotal uint64 `json:"dead_letters_total"`
	// QuarantinedFiles: state files (sessions.db, receipts.db) that could
	// not be opened at start, and where they were moved.
	QuarantinedFiles map[string]string `json:"quarantined_files,omitempty"`
	// Problems an operator must fix.
	Problems []string `json:"problems,omitempty"`
}

// RouteReport is one route's backlog, drops and drain estimate. Configured
// routes come first, in config order; routes that still hold buffered data
// (or counted drops) but are no longer configured follow, by name.
type RouteReport struct {
	Name       string `json:"name"`
	Configured bool   `json:"configured"`
	Match      string `json:"match,omitempty"`
	KafkaTopic string `json:"kafka_topic,omitempty"`
	// Priority is null for a route no longer configured.
	Priority        *int    `json:"priority"`
	MaxAgeSeconds   float64 `json:"max_age_seconds"` // 0 = no limit
	MaxBytes        int64   `json:"max_bytes"`       // 0 = only the global budget applies
	OnFull          string  `json:"on_full,omitempty"`
	BacklogMessages int64   `json:"backlog_messages"`
	BacklogBytes    int64   `json:"backlog_bytes"`
	// OldestReceived is the receive time of the oldest undelivered message;
	// null when the backlog is empty.
	OldestReceived   *time.Time `json:"oldest_received"`
	OldestAgeSeconds float64    `json:"oldest_age_seconds"` // 0 when empty
	Drops            DropCounts `json:"drops"`
	// EstimatedDrainSeconds is how long until this route's backlog has
	// reached Kafka at the recent drain rate, counting the backlog of routes
	// that drain before it. 0 when the route is empty; null when unknown
	// (backlog but nothing drained recently).
	EstimatedDrainSeconds *float64 `json:"estimated_drain_seconds"`
	// DeadLetters counts this route's records in the dead-letter store by
	// reason (too_large, invalid_record, ...).
	DeadLetters map[string]uint64 `json:"dead_letters,omitempty"`
	// Waiting is set while the route waits on its Kafka topic.
	Waiting *WaitReport `json:"waiting,omitempty"`

	// otherDrops are counts under reasons outside the contract's three;
	// exported as metrics only.
	otherDrops map[string]uint64
}

// DropCounts are messages an operator's rule removed from one route, by
// reason, since the gateway started.
type DropCounts struct {
	MaxAge     uint64 `json:"max_age"`
	DropOldest uint64 `json:"drop_oldest"`
	Rejected   uint64 `json:"rejected"`
}

// LinkReport is the uplink's state.
type LinkReport struct {
	State          string     `json:"state"`
	Up             bool       `json:"up"`
	LastAck        *time.Time `json:"last_ack"`   // null: no Kafka ack since start
	DownSince      *time.Time `json:"down_since"` // null while up
	DownForSeconds float64    `json:"down_for_seconds"`
	LastError      string     `json:"last_error,omitempty"`
	// RateRecordsPerSecond is what the drain delivered recently.
	RateRecordsPerSecond float64 `json:"rate_records_per_second"`
	// OutsideWindow: only urgent routes drain until NextWindow (link.windows).
	OutsideWindow bool       `json:"outside_window"`
	NextWindow    *time.Time `json:"next_window,omitempty"`
}

// DiskReport is the buffer's disk use against its budget.
type DiskReport struct {
	UsedBytes   int64 `json:"used_bytes"`   // undelivered data
	BudgetBytes int64 `json:"budget_bytes"` // buffer.max_disk_bytes; 0 = not reported
	FileBytes   int64 `json:"file_bytes"`   // the buffer file, which never shrinks by itself
	// UsedPercent is used/budget*100; null without a budget.
	UsedPercent *float64 `json:"used_percent"`
	// QuarantinedFile is where a corrupt buffer file was moved at start
	// (kept for inspection); empty if none.
	QuarantinedFile string `json:"quarantined_file,omitempty"`
}

// ReceiptsReport is the downlink's outboxes: receipts waiting for a terminal.
type ReceiptsReport struct {
	PendingTotal   int64 `json:"pending_total"`
	PendingDevices int   `json:"pending_devices"` // devices with at least one pending receipt
	// ByDevice lists the devices with the most pending receipts, largest
	// first, at most 100 of them; Truncated says some were left out.
	ByDevice  []DevicePending `json:"by_device"`
	Truncated bool            `json:"truncated,omitempty"`
	// Dropped counts receipts dropped undelivered since start, by reason
	// ("max_age", "invalid_device"); DroppedTotal is their sum.
	Dropped      map[string]uint64 `json:"dropped,omitempty"`
	DroppedTotal uint64            `json:"dropped_total"`
}

// DevicePending is one device's count of pending receipts.
type DevicePending struct {
	Device  string `json:"device"`
	Pending int    `json:"pending"`
}

func (s *Server) status(w http.ResponseWriter, _ *http.Request) {
	st := buildStatus(&s.src, s.now())
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ") // read by people with curl too
	if err := enc.Encode(st); err != nil {
		s.log.Debug("admin: write status", "err", err)
	}
}

// BuildStatus is the snapshot GET /status serves, read from src at time now.
// The fleet's status records are made from it, so a record and /status never
// disagree, and a field added here reaches both.
func BuildStatus(src *Sources, now time.Time) *Status { return buildStatus(src, now) }

// buildStatus reads every source once and derives the report at time now.
func buildStatus(src *Sources, now time.Time) *Status {
	st := &Status{
		GatewayID: src.GatewayID,
		Version:   src.Version,
		Time:      now,
		Ready:     src.Ready(),
		DataDir:   src.DataDir,
		PID:       os.Getpid(),
	}
	if src.Epoch != nil {
		st.Epoch = src.Epoch()
	}

	link := src.Link()
	st.Link = LinkReport{
		State:                link.State,
		Up:                   link.State == LinkUp,
		LastAck:              timePtr(link.LastAck),
		LastError:            link.LastError,
		RateRecordsPerSecond: link.RecentRate,
		OutsideWindow:        link.OutsideWindow,
	}
	if link.OutsideWindow {
		st.Link.NextWindow = timePtr(link.NextWindow)
	}
	// A DownSince left over after the link came back is not reported: up
	// means not down, whatever the bridge forgot to clear.
	if !st.Link.Up && !link.DownSince.IsZero() {
		st.Link.DownSince = timePtr(link.DownSince)
		st.Link.DownForSeconds = nonNegative(now.Sub(link.DownSince).Seconds())
	}

	st.Routes = routeReports(src, now, link.RecentRate)

	st.Disk.BudgetBytes = src.DiskBudget
	if src.DiskBudgetNow != nil {
		st.Disk.BudgetBytes = src.DiskBudgetNow()
	}
	if src.DiskUsed != nil {
		st.Disk.UsedBytes = src.DiskUsed()
	}
	if src.DiskFile != nil {
		st.Disk.FileBytes = src.DiskFile()
	}
	if src.Quarantined != nil {
		st.Disk.QuarantinedFile = src.Quarantined()
	}
	if st.Disk.BudgetBytes > 0 {
		p := float64(st.Disk.UsedBytes) / float64(st.Disk.BudgetBytes) * 100
		st.Disk.UsedPercent = &p
	}

	if src.ReceiptsPending != nil {
		st.Receipts = receiptsReport(src.ReceiptsPending())
	}
	if src.ReceiptsDropped != nil {
		if st.Receipts == nil {
			st.Receipts = receiptsReport(nil)
		}
		st.Receipts.Dropped = map[string]uint64{}
		for reason, n := range src.ReceiptsDropped() {
			st.Receipts.Dropped[reason] = n
			st.Receipts.DroppedTotal += n
		}
	}
	edgeReports(src, st, now)
	return st
}

func routeReports(src *Sources, now time.Time, rate float64) []RouteReport {
	routes := src.Routes()
	backlog := src.Backlog()
	var drops map[string]map[string]uint64
	if src.Drops != nil {
		drops = src.Drops()
	}

	out := make([]RouteReport, 0, len(routes))
	seen := make(map[string]bool, len(routes))
	for _, r := range routes {
		if seen[r.Name] {
			continue // config validation forbids this; never report a route twice
		}
		seen[r.Name] = true
		p := r.Priority
		out = append(out, RouteReport{
			Name:          r.Name,
			Configured:    true,
			Match:         r.Match,
			KafkaTopic:    r.KafkaTopic,
			Priority:      &p,
			MaxAgeSeconds: r.MaxAge.Seconds(),
			MaxBytes:      r.MaxBytes,
			OnFull:        r.OnFull,
		})
	}
	// Routes removed from the config still drain what they buffered (their
	// topic and key were fixed at ingest), so the operator must see them.
	var gone []string
	for name, bs := range backlog {
		if !seen[name] && bs.Messages > 0 {
			gone = append(gone, name)
			seen[name] = true
		}
	}
	for name, byReason := range drops {
		if seen[name] {
			continue
		}
		for _, n := range byReason {
			if n > 0 {
				gone = append(gone, name)
				seen[name] = true
				break
			}
		}
	}
	sort.Strings(gone)
	for _, name := range gone {
		out = append(out, RouteReport{Name: name})
	}

	for i := range out {
		r := &out[i]
		bs := backlog[r.Name]
		r.BacklogMessages = bs.Messages
		r.BacklogBytes = bs.Bytes
		if bs.Messages > 0 && !bs.Oldest.IsZero() {
			r.OldestReceived = timePtr(bs.Oldest)
			r.OldestAgeSeconds = nonNegative(now.Sub(bs.Oldest).Seconds())
		}
		d := drops[r.Name]
		r.Drops = DropCounts{MaxAge: d[DropMaxAge], DropOldest: d[DropDropOldest], Rejected: d[DropRejected]}
		for reason, n := range d {
			if reason != DropMaxAge && reason != DropDropOldest && reason != DropRejected {
				if r.otherDrops == nil {
					r.otherDrops = make(map[string]uint64)
				}
				r.otherDrops[reason] = n
			}
		}
	}
	estimateDrain(out, rate)
	return out
}

// estimateDrain fills EstimatedDrainSeconds. The drain reads strictly by
// priority (then FIFO, so routes of equal priority drain interleaved): a
// route is through once its own backlog and that of every route with the
// same or a more urgent priority has gone. Routes no longer configured drain
// first (their records are older than their clients' newer ones). The estimate counts messages, since RecentRate is
// in records per second.
func estimateDrain(routes []RouteReport, rate float64) {
	for i := range routes {
		r := &routes[i]
		if r.BacklogMessages <= 0 {
			zero := 0.0
			r.EstimatedDrainSeconds = &zero
			continue
		}
		if !(rate > 0) || math.IsInf(rate, 0) {
			r.EstimatedDrainSeconds = nil // unknown
			continue
		}
		var ahead int64
		for j := range routes {
			if drainsNoLaterThan(&routes[j], r) {
				ahead += routes[j].BacklogMessages
			}
		}
		eta := float64(ahead) / rate
		r.EstimatedDrainSeconds = &eta
	}
}

// drainsNoLaterThan reports whether a's backlog is drained before, or
// together with, b's.
func drainsNoLaterThan(a, b *RouteReport) bool {
	if a.Priority == nil {
		return true // a is no longer configured: it drains first
	}
	if b.Priority == nil {
		return false
	}
	return *a.Priority <= *b.Priority
}

func receiptsReport(pending map[string]int) *ReceiptsReport {
	rep := &ReceiptsReport{ByDevice: []DevicePending{}}
	for dev, n := range pending {
		if n <= 0 {
			continue
		}
		rep.PendingTotal += int64(n)
		rep.PendingDevices++
		rep.ByDevice = append(rep.ByDevice, DevicePending{Device: dev, Pending: n})
	}
	sort.Slice(rep.ByDevice, func(i, j int) bool {
		a, b := rep.ByDevice[i], rep.ByDevice[j]
		if a.Pending != b.Pending {
			return a.Pending > b.Pending
		}
		return a.Device < b.Device
	})
	if len(rep.ByDevice) > maxDevicesListed {
		rep.ByDevice = rep.ByDevice[:maxDevicesListed]
		rep.Truncated = true
	}
	return rep
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func nonNegative(f float64) float64 {
	if f < 0 {
		return 0 // a clock stepped backwards: an age is never negative
	}
	return f
}
