package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/edgegw/gateway/internal/testkit"
)

// Priority: 20,000 telemetry then 500 payments are buffered while Kafka is
// down; when it returns, all payments are in Kafka before half of the
// telemetry is.
func TestPaymentsDrainBeforeTelemetryBacklog(t *testing.T) {
	port := testkit.FreePort(t)
	g := newGateway(t, []string{fmt.Sprintf("127.0.0.1:%d", port)}, "")
	g.start()

	const telemetry, payments, clients = 20000, 500, 20
	publish := func(kind string, total int) {
		var wg sync.WaitGroup
		for c := 0; c < clients; c++ {
			id := fmt.Sprintf("prio-%02d", c)
			cl := mqttClient(t, g.mqttAddr, id+"-"+kind, false)
			wg.Add(1)
			go func() {
				defer wg.Done()
				window := make(chan struct{}, 32)
				var inner sync.WaitGroup
				for i := 0; i < total/clients; i++ {
					window <- struct{}{}
					tok := cl.Publish(fmt.Sprintf("terminals/%s-%s/%s/x", id, kind, kind), 1, false, fmt.Sprintf("%s/%d", id, i))
					inner.Add(1)
					go func() {
						defer inner.Done()
						defer func() { <-window }()
						if !tok.WaitTimeout(60*time.Second) || tok.Error() != nil {
							t.Errorf("publish: %v", tok.Error())
						}
					}()
				}
				inner.Wait()
			}()
		}
		wg.Wait()
	}
	// the ACL lets each client publish under its own id only
	publish("telemetry", telemetry)
	publish("payments", payments)
	if t.Failed() {
		return
	}
	st := fetchStatus(t, g.admin)
	if st.backlog("telemetry") != telemetry || st.backlog("payments") != payments {
		t.Fatalf("backlog before Kafka returns: %+v", st.Routes)
	}

	kafka := testkit.Kafka(t, testkit.Ports(port), testkit.Topics(3, "payments", "telemetry"))
	cons := testkit.Consume(t, kafka.Addrs, []string{"payments", "telemetry"})
	var pay, tele int
	testkit.Eventually(t, 120*time.Second, func() bool {
		pay, tele = 0, 0
		for _, r := range cons.Poll(200 * time.Millisecond) {
			if r.Topic == "payments" {
				pay++
			} else {
				tele++
			}
		}
		return pay >= payments
	}, "all payments in Kafka")
	t.Logf("when the %d payments were in Kafka, %d of %d telemetry were", pay, tele, telemetry)
	if tele >= telemetry/2 {
		t.Fatalf("payments not first: %d telemetry already in Kafka", tele)
	}
	testkit.Eventually(t, 120*time.Second, func() bool { return fetchStatus(t, g.admin).backlog("telemetry") == 0 }, "telemetry drained")
}

type statusDoc struct {
	PID    int `json:"pid"`
	Routes []struct {
		Name            string            `json:"name"`
		BacklogMessages int64             `json:"backlog_messages"`
		Drops           map[string]uint64 `json:"drops"`
	} `json:"routes"`
	Disk struct {
		UsedBytes   int64  `json:"used_bytes"`
		FileBytes   int64  `json:"file_bytes"`
		Quarantined string `json:"quarantined_file"`
	} `json:"disk"`
}

func (s statusDoc) backlog(route string) int64 {
	for _, r := range s.Routes {
		if r.Name == route {
			return r.BacklogMessages
		}
	}
	return -1
}

func fetchStatus(t *testing.T, addr string) statusDoc {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st statusDoc
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// A corrupt buffer file is moved aside and the gateway serves with a fresh
// one; /status shows it.
func TestCorruptBufferIsQuarantined(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	dataDir := filepath.Join(g.dir, "data")
	os.MkdirAll(dataDir, 0o750)
	junk := make([]byte, 64<<10)
	for i := range junk {
		junk[i] = byte(i * 7)
	}
	os.WriteFile(filepath.Join(dataDir, "buffer.db"), junk, 0o600)
	g.start()
	cl := mqttClient(t, g.mqttAddr, "term-q", false)
	if tok := cl.Publish("terminals/term-q/payments/1", 1, false, "term-q/1"); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	testkit.Consume(t, kafka.Addrs, []string{"payments"}).WaitN(t, 1, 60*time.Second)
	matches, _ := filepath.Glob(filepath.Join(dataDir, "buffer.db.corrupt-*"))
	if len(matches) != 1 {
		t.Fatalf("corrupt file not kept aside: %v", matches)
	}
	if q := fetchStatus(t, g.admin).Disk.Quarantined; q == "" {
		t.Fatal("/status does not show the quarantined file")
	}
}
