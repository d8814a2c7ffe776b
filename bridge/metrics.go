package bridge

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the drain's Prometheus series. They exist (unregistered) even
// without a Registerer so the code never checks for nil.
type metrics struct {
	sent     prometheus.Counter
	batches  prometheus.Counter
	errors   *prometheus.CounterVec
	up       prometheus.Gauge
	lastAck  prometheus.Gauge
	inflight prometheus.Gauge

	bytes      prometheus.Counter
	capBytes   prometheus.Gauge
	windowOpen prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gateway_bridge_records_sent_total",
			Help: "Records acknowledged by Kafka (acks=all) and deleted from the buffer.",
		}),
		batches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gateway_bridge_batches_total",
			Help: "Batches read from the buffer and handed to the producer.",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gateway_bridge_errors_total",
			Help: "Drain failures by kind: connect (could not create a producer), produce (a session ended on an error).",
		}, []string{"kind"}),
		up: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gateway_bridge_link_up",
			Help: "Deprecated since 0.3.0, removed in 0.4.0: use gateway_link_up (the same value). 1 while the Kafka link is up, 0 otherwise.",
		}),
		lastAck: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gateway_bridge_last_ack_timestamp_seconds",
			Help: "Deprecated since 0.3.0, removed in 0.4.0: use gateway_last_kafka_ack_timestamp_seconds (the same value). Unix time of the last acknowledgement from Kafka.",
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gateway_bridge_inflight_records",
			Help: "Records handed to the producer and not yet acknowledged or failed.",
		}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gateway_bridge_bytes_sent_total",
			Help: "Bytes handed to the producer, counted as the bandwidth cap counts them: record keys, values and headers before compression.",
		}),
		capBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gateway_bridge_max_bytes_per_second",
			Help: "The bandwidth cap in force (link.max_bytes_per_second); 0 = none.",
		}),
		windowOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gateway_bridge_drain_window_open",
			Help: "1 while every route may drain; 0 outside link.windows, when only urgent routes drain.",
		}),
	}
	m.errors.WithLabelValues("connect")
	m.errors.WithLabelValues("produce")
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.sent, m.batches, m.errors, m.up, m.lastAck, m.inflight, m.bytes, m.capBytes, m.windowOpen} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("bridge: metrics already registered (one bridge per registry): %w", err)
			}
			return nil, fmt.Errorf("bridge: metrics: %w", err)
		}
	}
	return m, nil
}
