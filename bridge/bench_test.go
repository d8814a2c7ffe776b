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
