package admin

import (
	"fmt"
	"sort"

	"github.com/prometheus/client_golang/prometheus"
)

// collector turns one status snapshot per scrape into gauges, so /metrics
// and /status are computed the same way from the same sources.
type collector struct{ s *Server }

var (
	descInfo = prometheus.NewDesc("gateway_info",
		"Always 1; labels carry the gateway id and version.", []string{"gateway_id", "version"}, nil)
	descReady = prometheus.NewDesc("gateway_ready",
		"1 when MQTT listens and the buffer is open.", nil, nil)
	descBacklogMessages = prometheus.NewDesc("gateway_backlog_messages",
		"Undelivered messages in the buffer, per route.", []string{"route"}, nil)
	descBacklogBytes = prometheus.NewDesc("gateway_backlog_bytes",
		"Undelivered bytes in the buffer, per route.", []string{"route"}, nil)
	descOldestAge = prometheus.NewDesc("gateway_oldest_undelivered_age_seconds",
		"Age of the oldest undelivered message, per route; 0 when empty.", []string{"route"}, nil)
	descDrops = prometheus.NewDesc("gateway_drops_total",
		"Messages removed by an operator's rule, per route and reason (max_age, drop_oldest, rejected).",
		[]string{"route", "reason"}, nil)
	descDrain = prometheus.NewDesc("gateway_estimated_drain_seconds",
		"Estimated time until the route's backlog reached Kafka at the recent drain rate; absent when unknown.",
		[]string{"route"}, nil)
	descLinkUp = prometheus.NewDesc("gateway_link_up",
		"1 when the uplink to Kafka is up.", nil, nil)
	descLastAck = prometheus.NewDesc("gateway_last_kafka_ack_timestamp_seconds",
		"Unix time of the last Kafka acknowledgement; 0 if none since start.", nil, nil)
	descDownFor = prometheus.NewDesc("gateway_link_down_seconds",
		"How long the uplink has been down; 0 while up.", nil, nil)
	descRate = prometheus.NewDesc("gateway_link_drain_rate_records_per_second",
		"Records per second the drain delivered recently.", nil, nil)
	descDiskUsed = prometheus.NewDesc("gateway_disk_used_bytes",
		"Bytes of undelivered data in the buffer.", nil, nil)
	descDiskBudget = prometheus.NewDesc("gateway_disk_budget_bytes",
		"The buffer's disk budget (buffer.max_disk_bytes).", nil, nil)
	descFile = prometheus.NewDesc("gateway_buffer_file_bytes",
		"Size of the buffer file on disk.", nil, nil)
	descReceipts = prometheus.NewDesc("gateway_receipts_pending",
		"Receipts waiting in device outboxes, over all devices.", nil, nil)
	descReceiptDevices = prometheus.NewDesc("gateway_receipts_pending_devices",
		"Devices with at least one pending receipt.", nil, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInfo, descReady, descBacklogMessages, descBacklogBytes,
		descOldestAge, descDrops, descDrain, descLinkUp, descLastAck, descDownFor, descRate,
		descDiskUsed, descDiskBudget, descFile, descReceipts, descReceiptDevices} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	// The registry runs collectors in their own goroutines, where a panic in
	// a source would take the whole gateway down; a scrape is not worth that.
	defer func() {
		if r := recover(); r != nil {
			c.s.log.Error("admin: metrics source panicked", "panic", fmt.Sprint(r))
			ch <- prometheus.NewInvalidMetric(descInfo, fmt.Errorf("source panicked: %v", r))
		}
	}()
	st := buildStatus(&c.s.src, c.s.now())
	emit := func(d *prometheus.Desc, vt prometheus.ValueType, v float64, labels ...string) {
		m, err := prometheus.NewConstMetric(d, vt, v, labels...)
		if err != nil {
			// e.g. a route name that is not UTF-8: report it, keep the rest.
			m = prometheus.NewInvalidMetric(d, err)
		}
		ch <- m
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		emit(d, prometheus.GaugeValue, v, labels...)
	}

	gauge(descInfo, 1, st.GatewayID, st.Version)
	gauge(descReady, boolFloat(st.Ready))

	for _, r := range st.Routes {
		gauge(descBacklogMessages, float64(r.BacklogMessages), r.Name)
		gauge(descBacklogBytes, float64(r.BacklogBytes), r.Name)
		gauge(descOldestAge, r.OldestAgeSeconds, r.Name)
		if r.EstimatedDrainSeconds != nil {
			gauge(descDrain, *r.EstimatedDrainSeconds, r.Name)
		}
		// The three contract reasons always exist (at 0) so that rate()
		// works from the first scrape; any other reason a component
		// counts is passed through.
		counts := map[string]uint64{
			DropMaxAge:     r.Drops.MaxAge,
			DropDropOldest: r.Drops.DropOldest,
			DropRejected:   r.Drops.Rejected,
		}
		for reason, n := range r.otherDrops {
			counts[reason] = n
		}
		reasons := make([]string, 0, len(counts))
		for reason := range counts {
			reasons = append(reasons, reason)
		}
		sort.Strings(reasons)
		for _, reason := range reasons {
			emit(descDrops, prometheus.CounterValue, float64(counts[reason]), r.Name, reason)
		}
	}

	gauge(descLinkUp, boolFloat(st.Link.Up))
	lastAck := 0.0
	if st.Link.LastAck != nil {
		lastAck = float64(st.Link.LastAck.UnixNano()) / 1e9
	}
	gauge(descLastAck, lastAck)
	gauge(descDownFor, st.Link.DownForSeconds)
	gauge(descRate, st.Link.RateRecordsPerSecond)

	gauge(descDiskUsed, float64(st.Disk.UsedBytes))
	gauge(descDiskBudget, float64(st.Disk.BudgetBytes))
	gauge(descFile, float64(st.Disk.FileBytes))

	if st.Receipts != nil {
		gauge(descReceipts, float64(st.Receipts.PendingTotal))
		gauge(descReceiptDevices, float64(st.Receipts.PendingDevices))
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
