package bridge

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/internal/testkit"
)

// BenchmarkDrain measures draining a pre-filled backlog of 200-byte
// records to an in-process cluster: b.N records, reported as records/s.
func BenchmarkDrain(b *testing.B) {
	for _, batch := range []int{1000, DefaultMaxBatchRecords} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			k := testkit.Kafka(b, testkit.Topics(6, "telemetry"))
			buf := openBuffer(b)
			payload := make([]byte, 200)
			var wg sync.WaitGroup
			var failed atomic.Value
			for i := 0; i < b.N; i++ {
				client := fmt.Sprintf("term-%03d", i%100)
				wg.Add(1)
				err := buf.Append(&buffer.Append{
					Record: buffer.Record{Route: "telemetry", Received: time.Now(), KafkaTopic: "telemetry",
						Key: []byte(client), MQTTTopic: "terminals/" + client + "/telemetry", ClientID: client, Payload: payload},
					Done: func(r buffer.Result) {
						if r.Err != nil {
							failed.Store(r.Err)
						}
						wg.Done()
					},
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			wg.Wait()
			if err := failed.Load(); err != nil {
				b.Fatal(err)
			}
			testkit.Eventually(b, time.Minute, func() bool { n, _ := buf.Total(); return n == int64(b.N) }, "appends not committed")
			b.ResetTimer()
			start := time.Now()
			startBridge(b, buf, k.Addrs, func(o *Options) { o.MaxBatchRecords = batch; o.Logger = nil })
			testkit.Eventually(b, 10*time.Minute, func() bool { n, _ := buf.Total(); return n == 0 }, "not drained")
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
		})
	}
}

// BenchmarkDrainBandwidth drains b.N records of 2,000 bytes with the
// bandwidth cap off and at 1 MiB/s, reporting the bytes per second the cap
// counts (key, value, headers). Run with e.g. -benchtime=3000x.
func BenchmarkDrainBandwidth(b *testing.B) {
	for _, capBps := range []int64{0, 1 << 20} {
		name := "cap=off"
		if capBps > 0 {
			name = fmt.Sprintf("cap=%dB/s", capBps)
		}
		b.Run(name, func(b *testing.B) {
			k := testkit.Kafka(b, testkit.Topics(6, "bulk"))
			buf := openBuffer(b)
			fillBulk(b, buf, b.N, 2000)
			b.ResetTimer()
			start := time.Now()
			br := startBridge(b, buf, k.Addrs, func(o *Options) {
				o.Logger = nil
				o.Kafka.Compression = "none"
				o.Link.MaxBytesPerSecond = capBps
			})
			testkit.Eventually(b, 10*time.Minute, func() bool { n, _ := buf.Total(); return n == 0 }, "not drained")
			b.StopTimer()
			secs := time.Since(start).Seconds()
			b.ReportMetric(testutilCounter(br)/secs, "B/s")
			b.ReportMetric(float64(b.N)/secs, "records/s")
		})
	}
}
