package fleet

import (
	"encoding/json"
	"sort"
	"time"

	"github.com/edgegw/gateway/admin"
)

// SchemaVersion is the status record's `schema`. A field may be added
// without changing it; a field renamed, dropped or given another meaning
// raises it.
const SchemaVersion = 1

// Record is the status record a box produces (docs/fleet.md documents every
// field; a test fails when a documented field is missing from a real one).
type Record struct {
	Schema  int       `json:"schema"`
	Gateway string    `json:"gateway"`
	Version string    `json:"version"`
	At      time.Time `json:"at"`
	UptimeS int64     `json:"uptime_s"`
	// IntervalS is the box's fleet.status_interval: a box not heard from
	// for a few of them is silent (link down, or worse).
	IntervalS  float64       `json:"interval_s"`
	Config     ConfigState   `json:"config"`
	Link       LinkState     `json:"link"`
	Routes     []RouteState  `json:"routes"`
	Disk       DiskState     `json:"disk"`
	Flash      FlashState    `json:"flash"`
	Clients    ClientsState  `json:"clients"`
	Receipts   ReceiptsState `json:"receipts"`
	LastOutage Outage        `json:"last_outage"`
	// Problems are what /status lists for an operator to fix.
	Problems []string `json:"problems"`
	// Quarantined: state files set aside at start, by file, and where
	// they went (the buffer's under "buffer.db").
	Quarantined map[string]string `json:"quarantined"`
}

// ConfigState is which configuration the box runs.
type ConfigState struct {
	// Hash identifies the configuration in force (file, overlays and
	// environment together): 16 hex digits of a SHA-256 over its keys.
	Hash string `json:"hash"`
	// Source is "file", or "file+fleet" when an overlay is applied.
	Source string `json:"source"`
	// FleetVersion is the newest version applied of the two keys the box
	// reads; 0 when none is.
	FleetVersion uint64 `json:"fleet_version"`
	// Overlays are the versions applied, by key ("*" and the box's id).
	Overlays map[string]uint64 `json:"overlays"`
	// PendingRestart lists keys an applied overlay changed that take
	// effect at the next start (receipts).
	PendingRestart []string `json:"pending_restart"`
	// Refused are the overlays refused since the last one was applied
	// (at most the newest 8); RefusedTotal counts all since start.
	Refused      []Refusal `json:"refused"`
	RefusedTotal uint64    `json:"refused_total"`
}

// LinkState is the uplink as the drain sees it.
type LinkState struct {
	State     string     `json:"state"`
	DownSince *time.Time `json:"down_since"`
	LastAck   *time.Time `json:"last_ack"`
}

// RouteState is one route's backlog and losses.
type RouteState struct {
	Name            string            `json:"name"`
	BacklogMessages int64             `json:"backlog_messages"`
	BacklogBytes    int64             `json:"backlog_bytes"`
	OldestAgeS      float64           `json:"oldest_age_s"`
	Drops           map[string]uint64 `json:"drops"`
	// Thinned is /status's per-route thinning counts, passed through as
	// they are there; {} where /status has none.
	Thinned     json.RawMessage   `json:"thinned"`
	DeadLetters map[string]uint64 `json:"dead_letters"`
}

// DiskState is the buffer's disk use against its budget.
type DiskState struct {
	UsedBytes   int64 `json:"used_bytes"`
	BudgetBytes int64 `json:"budget_bytes"`
}

// FlashState is the box's write rate to storage: its flash wear.
type FlashState struct {
	// BytesWrittenPerDay is the rate over the last WindowS seconds, as a
	// day; 0 where the platform does not report it.
	BytesWrittenPerDay float64 `json:"bytes_written_per_day"`
	WindowS            float64 `json:"window_s"`
}

// ClientsState is the MQTT side.
type ClientsState struct {
	Connected int `json:"connected"`
	// Sessions counts the clients the broker knows: connected, or offline
	// with a persistent session.
	Sessions int `json:"sessions"`
}

// ReceiptsState is the downlink.
type ReceiptsState struct {
	Pending int64 `json:"pending"`
}

// Outage summarises the last time the link was down, sent in the first
// record after it returned (and in every record until the next outage).
type Outage struct {
	// Ended is when the link came back; null: no outage since start.
	Ended   *time.Time `json:"ended"`
	Seconds float64    `json:"seconds"`
	// Buffered counts the publishes stored while the link was down;
	// BacklogAtReturn the undelivered messages when it came back (those and
	// what was still waiting when it went down).
	Buffered        uint64 `json:"buffered"`
	BacklogAtReturn int64  `json:"backlog_at_return"`
	// Dropped and Thinned count what the operator's rules removed while
	// it was down, by reason (max_age, drop_oldest, rejected, ...) and by
	// thinning step.
	Dropped map[string]uint64 `json:"dropped"`
	Thinned map[string]uint64 `json:"thinned"`
}

// Extra is what the record needs beyond the /status snapshot.
type Extra struct {
	Started   time.Time
	Interval  time.Duration
	Config    ConfigState
	Clients   ClientsState
	Flash     FlashState
	Outage    Outage
	LinkState string // overrides the snapshot's (tests); "" keeps it
}

var emptyObject = json.RawMessage("{}")

// BuildRecord makes the status record from a /status snapshot.
func BuildRecord(st *admin.Status, x Extra) *Record {
	r := &Record{
		Schema:      SchemaVersion,
		Gateway:     st.GatewayID,
		Version:     st.Version,
		At:          st.Time.UTC().Truncate(time.Millisecond),
		IntervalS:   x.Interval.Seconds(),
		Config:      x.Config,
		Link:        LinkState{State: st.Link.State, DownSince: utc(st.Link.DownSince), LastAck: utc(st.Link.LastAck)},
		Routes:      make([]RouteState, 0, len(st.Routes)),
		Disk:        DiskState{UsedBytes: st.Disk.UsedBytes, BudgetBytes: st.Disk.BudgetBytes},
		Flash:       x.Flash,
		Clients:     x.Clients,
		LastOutage:  x.Outage,
		Problems:    append([]string{}, st.Problems...),
		Quarantined: map[string]string{},
	}
	if !x.Started.IsZero() {
		r.UptimeS = int64(st.Time.Sub(x.Started).Seconds())
	}
	if r.Config.Overlays == nil {
		r.Config.Overlays = map[string]uint64{}
	}
	if r.Config.Refused == nil {
		r.Config.Refused = []Refusal{}
	}
	if r.Config.PendingRestart == nil {
		r.Config.PendingRestart = []string{}
	}
	if r.LastOutage.Dropped == nil {
		r.LastOutage.Dropped = map[string]uint64{}
	}
	if r.LastOutage.Thinned == nil {
		r.LastOutage.Thinned = map[string]uint64{}
	}
	for f, to := range st.QuarantinedFiles {
		r.Quarantined[f] = to
	}
	if st.Disk.QuarantinedFile != "" {
		r.Quarantined["buffer.db"] = st.Disk.QuarantinedFile
	}
	if st.Receipts != nil {
		r.Receipts.Pending = st.Receipts.PendingTotal
	}
	for i := range st.Routes {
		r.Routes = append(r.Routes, routeState(&st.Routes[i]))
	}
	return r
}

// routeState reads a route's report through its JSON, so counts /status
// gains (drop reasons, thinning) reach the record without a change here.
func routeState(rr *admin.RouteReport) RouteState {
	rs := RouteState{
		Name:            rr.Name,
		BacklogMessages: rr.BacklogMessages,
		BacklogBytes:    rr.BacklogBytes,
		OldestAgeS:      rr.OldestAgeSeconds,
		Drops:           map[string]uint64{},
		Thinned:         emptyObject,
		DeadLetters:     map[string]uint64{},
	}
	for reason, n := range rr.DeadLetters {
		rs.DeadLetters[reason] = n
	}
	var aux struct {
		Drops   map[string]json.RawMessage `json:"drops"`
		Thinned json.RawMessage            `json:"thinned"`
	}
	if data, err := json.Marshal(rr); err == nil && json.Unmarshal(data, &aux) == nil {
		for reason, raw := range aux.Drops {
			var n uint64
			if json.Unmarshal(raw, &n) == nil {
				rs.Drops[reason] = n
			}
		}
		if len(aux.Thinned) > 0 && string(aux.Thinned) != "null" {
			rs.Thinned = aux.Thinned
		}
	}
	return rs
}

// Counts are the per-reason totals over all routes of a snapshot, to
// measure what an outage removed.
type Counts struct {
	Dropped map[string]uint64
	Thinned map[string]uint64
}

// CountsOf sums drops by reason and thinning by step over every route.
func CountsOf(st *admin.Status) Counts {
	c := Counts{Dropped: map[string]uint64{}, Thinned: map[string]uint64{}}
	for i := range st.Routes {
		rs := routeState(&st.Routes[i])
		for reason, n := range rs.Drops {
			c.Dropped[reason] += n
		}
		for step, n := range numericMap(rs.Thinned) {
			c.Thinned[step] += n
		}
	}
	return c
}

// numericMap reads {"name": number, ...}; anything else is no counts.
func numericMap(raw json.RawMessage) map[string]uint64 {
	var m map[string]uint64
	if json.Unmarshal(raw, &m) != nil {
		return nil
	}
	return m
}

// Since is what grew from before to c, by name; names that did not grow
// are left out.
func (c Counts) Since(before Counts) (dropped, thinned map[string]uint64) {
	return grew(c.Dropped, before.Dropped), grew(c.Thinned, before.Thinned)
}

func grew(now, before map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, n := range now {
		if n > before[k] {
			out[k] = n - before[k]
		}
	}
	return out
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC().Truncate(time.Millisecond)
	return &u
}

// sortedKeys is for stable output.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
