package faults

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/edgegw/gateway/internal/testkit"
)

// upgradeFiles are the data_dir files a release leaves behind; the buffer's
// journal files came with format 3 (a sample of an earlier release has none).
var upgradeFiles = []string{"buffer.db", "buffer.db.journal-0", "buffer.db.journal-1", "sessions.db", "receipts.db"}

// optionalUpgradeFile: a file not every release writes.
func optionalUpgradeFile(name string) bool { return strings.Contains(name, ".journal-") }

// TestWriteUpgradeSamples writes, with FAULTS_WRITE_UPGRADE=dir, the files
// this release leaves in data_dir: 5 payments buffered while Kafka refused,
// the persistent session of dev-1 (subscribed to its receipts) and one
// receipt waiting in its outbox. TestUpgrade opens them with a later build.
func TestWriteUpgradeSamples(t *testing.T) {
	out := os.Getenv("FAULTS_WRITE_UPGRADE")
	if out == "" {
		t.Skip("set FAULTS_WRITE_UPGRADE=dir to write the upgrade samples")
	}
	dir := t.TempDir()
	kafka := testkit.Kafka(t, testkit.Topics(3, "payments", "telemetry", receiptsTopic, "receipts.delivered"))
	g := newGateway(t, dir, filepath.Join(dir, "data"), kafka.Addrs)
	g.start()
	defer g.kill()

	// dev-1: a persistent session subscribed to its receipts, then gone
	c, err := dial5(g.mqttAddr, "dev-1", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "terminals/dev-1/receipts", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	c.Disconnect(&paho.Disconnect{})
	// a receipt for it while it is offline: stored in the outbox
	cl, err := kgo.NewClient(kgo.SeedBrokers(kafka.Addrs...), kgo.DefaultProduceTopic(receiptsTopic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(ctx, &kgo.Record{Key: []byte("dev-1"), Value: []byte("receipt/upgrade/1")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() bool { return g.statusField("receipts.pending_total") == "1" },
		"receipt stored: %s", g.statusField("receipts"))
	// payments buffered while Kafka is gone
	kafka.Close()
	p, err := dial5(g.mqttAddr, "term-u", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if _, err := p.Publish(ctx, &paho.Publish{QoS: 1, Topic: "terminals/term-u/payments/x", Payload: []byte("upgrade/" + string(rune('0'+i)))}); err != nil {
			t.Fatal(err)
		}
	}
	p.Disconnect(&paho.Disconnect{})
	if code := g.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	rev, _ := exec.Command("git", "describe", "--tags", "--always").Output()
	dst := filepath.Join(out, strings.TrimSpace(string(rev)))
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range upgradeFiles {
		if _, err := os.Stat(filepath.Join(dir, "data", f)); err != nil && optionalUpgradeFile(f) {
			continue
		}
		copyFile(t, filepath.Join(dir, "data", f), filepath.Join(dst, f))
	}
	t.Logf("wrote %v to %s", upgradeFiles, dst)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// Files written by an earlier release (testdata/upgrade/<version>, made by
// TestWriteUpgradeSamples) open in this one: the buffered payments drain,
// and dev-1's session comes back with its subscription, so its stored
// receipt arrives without it subscribing again.
func TestUpgrade(t *testing.T) {
	releases, _ := filepath.Glob("testdata/upgrade/*")
	if len(releases) == 0 {
		t.Skip("no upgrade samples under testdata/upgrade")
	}
	for _, rel := range releases {
		t.Run(filepath.Base(rel), func(t *testing.T) {
			dir := t.TempDir()
			data := filepath.Join(dir, "data")
			if err := os.MkdirAll(data, 0o750); err != nil {
				t.Fatal(err)
			}
			for _, f := range upgradeFiles {
				if _, err := os.Stat(filepath.Join(rel, f)); err != nil && optionalUpgradeFile(f) {
					continue
				}
				copyFile(t, filepath.Join(rel, f), filepath.Join(data, f))
			}
			kafka := testkit.Kafka(t, testkit.Topics(3, "payments", "telemetry", receiptsTopic, "receipts.delivered"))
			g := newGateway(t, dir, data, kafka.Addrs)
			g.start()
			defer g.stop()
			var mu sync.Mutex
			var got []string
			c, err := dial5(g.mqttAddr, "dev-1", false, func(p *paho.Publish) {
				mu.Lock()
				got = append(got, string(p.Payload))
				mu.Unlock()
			})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Disconnect(&paho.Disconnect{})
			testkit.Eventually(t, 30*time.Second, func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(got) > 0
			}, "dev-1 got no receipt from the old outbox and session")
			recs := testkit.Consume(t, kafka.Addrs, []string{"payments"}).WaitN(t, 5, 60*time.Second)
			if len(recs) != 5 {
				t.Fatalf("%d payments drained from the old buffer, want 5", len(recs))
			}
		})
	}
}
