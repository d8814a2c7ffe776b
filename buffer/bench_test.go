package buffer

import (
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkAppendConcurrent: 100 writers with one append in flight each, the
// shape of 100 terminals at QoS 1 with one publish in flight.
func BenchmarkAppendConcurrent(b *testing.B) {
	for _, dedup := range []bool{false, true} {
		b.Run(fmt.Sprintf("dedup=%v", dedup), func(b *testing.B) {
			var commits, inTx atomic.Int64
			var t0 atomic.Int64
			buf := open(b, filepath.Join(b.TempDir(), "b.db"), Options{
				BeforeCommit: func([]uint64) error { t0.Store(time.Now().UnixNano()); return nil },
				AfterCommit:  func([]uint64) { commits.Add(1); inTx.Add(time.Now().UnixNano() - t0.Load()) },
			})
			payload := make([]byte, 200)
			var wg sync.WaitGroup
			per := b.N/100 + 1
			b.ResetTimer()
			start := time.Now()
			for c := 0; c < 100; c++ {
				wg.Add(1)
				go func(c int) {
					defer wg.Done()
					id := fmt.Sprint("term-", c)
					done := make(chan Result, 1)
					for i := 0; i < per; i++ {
						a := &Append{Record: Record{Route: "telemetry", Received: time.Now(), KafkaTopic: "telemetry",
							Key: []byte(id), MQTTTopic: "terminals/" + id + "/telemetry", ClientID: id, Payload: payload},
							Done: func(r Result) { done <- r }}
						if dedup {
							a.Dedup = DedupKey{ClientID: id, PacketID: uint16(i)}
						}
						buf.Append(a)
						<-done
					}
				}(c)
			}
			wg.Wait()
			el := time.Since(start)
			b.ReportMetric(float64(per*100)/el.Seconds(), "records/s")
			b.ReportMetric(float64(per*100)/float64(commits.Load()), "records/commit")
			b.ReportMetric(float64(inTx.Load())/float64(commits.Load())/1e3, "µs-commit")
			b.ReportMetric(float64(el.Nanoseconds())/float64(commits.Load())/1e3, "µs-cycle")
		})
	}
}
