package broker

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	bbolt "go.etcd.io/bbolt"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/rules"
)

// BenchmarkIngestSessionStore measures durable ingest (20 clients, one QoS 1
// publish in flight each, over TCP) with no session store, with ours (mochi's
// bbolt hook minus inbound acknowledgement tracking), and with mochi's bbolt
// hook as it comes, which writes and fsyncs twice per incoming QoS 1 publish.
//
//	go test -run XXX -bench IngestSessionStore -benchtime 5s ./broker
func BenchmarkIngestSessionStore(b *testing.B) {
	for _, store := range []string{"none", "gateway", "mochi-bolt"} {
		b.Run(store, func(b *testing.B) {
			dir := b.TempDir()
			cfg, err := config.Parse([]byte(baseYAML), []string{"GATEWAY_DATA_DIR=" + dir})
			if err != nil {
				b.Fatal(err)
			}
			buf, err := buffer.Open(buffer.Options{Path: filepath.Join(dir, "buffer.db")})
			if err != nil {
				b.Fatal(err)
			}
			defer buf.Close()
			brk, err := New(Options{Config: cfg, Rules: rules.Compile(cfg), Buffer: buf, NoSessionStore: store != "gateway"})
			if err != nil {
				b.Fatal(err)
			}
			if store == "mochi-bolt" {
				err := brk.server.AddHook(new(bolt.Hook), &bolt.Options{
					Path:    filepath.Join(dir, "mochi-sessions.db"),
					Options: &bbolt.Options{Timeout: 2 * time.Second},
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			if err := brk.Start(); err != nil {
				b.Fatal(err)
			}
			defer brk.Close()
			const clients = 20
			conns := make([]*rawClient, clients)
			for i := range conns {
				conns[i] = dialRaw(b, brk.Addr("tcp"), 4, fmt.Sprintf("term-%d", i), true)
			}
			per := b.N/clients + 1
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for i, c := range conns {
				wg.Add(1)
				go func(i int, c *rawClient) {
					defer wg.Done()
					topic := fmt.Sprintf("terminals/term-%d/telemetry/x", i)
					payload := make([]byte, 200)
					for n := 0; n < per; n++ {
						c.publish(1, uint16(n%60000+1), false, topic, payload)
						c.expectPuback()
					}
				}(i, c)
			}
			wg.Wait()
			b.ReportMetric(float64(per*clients)/time.Since(start).Seconds(), "msg/s")
		})
	}
}
