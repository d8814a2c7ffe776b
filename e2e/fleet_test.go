package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/edgegw/gateway/fleet"
	"github.com/edgegw/gateway/internal/testkit"
)

// The fleet from one place (docs/fleet.md), with real gateway processes
// against one Kafka-protocol cluster: every box's status in `gateway fleet
// ls` and in the exporter, the outage a box reports after its link returns,
// a signed overlay pushed to "*" applied by all, forged overlays refused by
// all, and the applied overlay kept across a restart without Kafka.
//
// FLEET_BOXES sets how many boxes (default 3, the size `make test` runs);
// FLEET_INTERVAL their fleet.status_interval (default 2s). `make
// fleet-scale` runs 200. Timings are logged as figures, never asserted.

const (
	statusTopic = "gateway.status"
	configTopic = "gateway.config"
)

func fleetBoxes(t *testing.T) (int, time.Duration) {
	n, interval := 3, 2*time.Second
	if s := os.Getenv("FLEET_BOXES"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("FLEET_BOXES=%q", s)
		}
		n = v
	}
	if s := os.Getenv("FLEET_INTERVAL"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("FLEET_INTERVAL=%q", s)
		}
		interval = d
	}
	return n, interval
}

// fleetRun runs `gateway fleet ARGS...` and returns its standard output.
func fleetRun(t *testing.T, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(gatewayBin, append([]string{"fleet"}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("gateway fleet %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

type fleetEnv struct {
	t        *testing.T
	k        *testkit.KafkaCluster
	brokers  string
	dir      string
	key      string // signing key
	pub      string
	boxes    []*gatewayProc
	ids      []string
	interval time.Duration
}

func newFleet(t *testing.T, n int, interval time.Duration) *fleetEnv {
	t.Helper()
	topics := []string{"payments", "telemetry", "receipts.delivered"}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("box-%03d", i)
		topics = append(topics, "receipts."+ids[i])
	}
	k := testkit.Kafka(t, testkit.WithProxy(), testkit.Topics(1, topics...),
		testkit.Topics(4, statusTopic), testkit.Topics(16, configTopic))
	f := &fleetEnv{t: t, k: k, brokers: strings.Join(k.Addrs, ","), dir: t.TempDir(), ids: ids, interval: interval}
	f.key = filepath.Join(f.dir, "signing")
	fleetRun(t, "keygen", "--out", f.key)
	f.pub, f.key = f.key+".pub", f.key+".key"
	return f
}

func (f *fleetEnv) fleetYAML() string {
	return fmt.Sprintf("fleet: {status_topic: %s, status_interval: %s, config_topic: %s, config_keys: [%q]}\n",
		statusTopic, f.interval, configTopic, f.pub)
}

// startBoxes starts every box at once and waits until all are ready.
func (f *fleetEnv) startBoxes() {
	t := f.t
	for _, id := range f.ids {
		g := newGateway(t, f.k.Addrs, f.fleetYAML())
		// Ports below the ephemeral range: with hundreds of boxes starting,
		// a port picked free may be taken by a client connection before the
		// box listens on it.
		mqtt, adm := lowPort(t), lowPort(t)
		data, err := os.ReadFile(g.cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		data = bytes.Replace(data, []byte(g.mqttAddr), []byte(mqtt), 1)
		data = bytes.Replace(data, []byte(g.admin), []byte(adm), 1)
		if err := os.WriteFile(g.cfgPath, data, 0o600); err != nil {
			t.Fatal(err)
		}
		g.mqttAddr, g.admin = mqtt, adm
		g.env = []string{"GATEWAY_ID=" + id}
		g.logs = &syncBuffer{}
		g.cmd = exec.Command(gatewayBin, "run", "--config", g.cfgPath)
		g.cmd.Env = append(os.Environ(), g.env...)
		g.cmd.Stdout, g.cmd.Stderr = g.logs, g.logs
		if err := g.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		g.exited = make(chan struct{})
		go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(g.cmd, g.exited)
		f.boxes = append(f.boxes, g)
	}
	testkit.Eventually(t, time.Duration(30+len(f.ids)/2)*time.Second, func() bool {
		for _, g := range f.boxes {
			select {
			case <-g.exited:
				t.Fatalf("a box exited during start:\n%s", tail(g.logs, 40))
			default:
			}
			resp, err := http.Get("http://" + g.admin + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return false
			}
		}
		return true
	}, "%d boxes ready", len(f.boxes))
}

var (
	lowPortsMu sync.Mutex
	lowPorts   = map[int]bool{}
)

// lowPort is a free 127.0.0.1 port below Linux's ephemeral range
// (32768-60999), never handed out twice.
func lowPort(t *testing.T) string {
	t.Helper()
	lowPortsMu.Lock()
	defer lowPortsMu.Unlock()
	for i := 0; i < 1000; i++ {
		p := 20000 + rand.IntN(12000)
		if lowPorts[p] {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		ln.Close()
		lowPorts[p] = true
		return fmt.Sprintf("127.0.0.1:%d", p)
	}
	t.Fatal("no free port below the ephemeral range")
	return ""
}

// statusReader follows the status topic and keeps every record per box.
type statusReader struct {
	c *testkit.Consumer
}

func (f *fleetEnv) statusReader() *statusReader {
	return &statusReader{c: testkit.Consume(f.t, f.k.Addrs, []string{statusTopic})}
}

type seenRecord struct {
	rec fleet.Record
	raw map[string]any
	kr  *kgo.Record
}

func (s *statusReader) byBox(t *testing.T) map[string][]seenRecord {
	t.Helper()
	out := map[string][]seenRecord{}
	for _, r := range s.c.Poll(200 * time.Millisecond) {
		var sr seenRecord
		if err := json.Unmarshal(r.Value, &sr.rec); err != nil {
			t.Fatalf("a status record that is not JSON: %v: %q", err, r.Value)
		}
		if err := json.Unmarshal(r.Value, &sr.raw); err != nil {
			t.Fatal(err)
		}
		sr.kr = r
		out[sr.rec.Gateway] = append(out[sr.rec.Gateway], sr)
	}
	return out
}

// newest is each box's latest record.
func newest(m map[string][]seenRecord) map[string]fleet.Record {
	out := map[string]fleet.Record{}
	for id, rs := range m {
		out[id] = rs[len(rs)-1].rec
	}
	return out
}

func (f *fleetEnv) lsJSON() map[string]fleet.Record {
	out := map[string]fleet.Record{}
	dec := json.NewDecoder(strings.NewReader(fleetRun(f.t, "ls", "--brokers", f.brokers, "--topic", statusTopic, "--json")))
	for {
		var r fleet.Record
		if err := dec.Decode(&r); err == io.EOF {
			return out
		} else if err != nil {
			f.t.Fatalf("fleet ls --json: %v", err)
		}
		out[r.Gateway] = r
	}
}

// startExporter runs `gateway fleet exporter` and returns its address.
func (f *fleetEnv) startExporter() string {
	t := f.t
	addr := fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t))
	cmd := exec.Command(gatewayBin, "fleet", "exporter", "--listen", addr, "--brokers", f.brokers, "--topic", statusTopic)
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("exporter log:\n%s", tail(logs, 30))
		}
	})
	return addr
}

func scrape(addr string) string {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func boxConfig(t *testing.T, g *gatewayProc) map[string]string {
	t.Helper()
	resp, err := http.Get("http://" + g.admin + "/config")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

func (f *fleetEnv) push(to, overlay string, extra ...string) uint64 {
	f.t.Helper()
	path := filepath.Join(f.dir, fmt.Sprintf("overlay-%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(path, []byte(overlay), 0o600); err != nil {
		f.t.Fatal(err)
	}
	out := fleetRun(f.t, append([]string{"push", "--brokers", f.brokers, "--topic", configTopic, "--to", to, "--key", f.key}, append(extra, path)...)...)
	m := regexp.MustCompile(`version (\d+)`).FindStringSubmatch(out)
	if m == nil {
		f.t.Fatalf("push said %q", out)
	}
	v, _ := strconv.ParseUint(m[1], 10, 64)
	return v
}

// produceRaw writes a config record as an attacker with write access to the
// topic would, partitioned as the boxes read.
func (f *fleetEnv) produceRaw(key string, value []byte, headers map[string]string) {
	t := f.t
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(f.k.Addrs...), kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	r := &kgo.Record{Topic: configTopic, Key: []byte(key), Value: value}
	for k, v := range headers {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: k, Value: []byte(v)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if want := fleet.Partition(key, 16); r.Partition != want {
		t.Fatalf("franz-go put %q in partition %d, the boxes read %d: the partitioners differ", key, r.Partition, want)
	}
}

func signedHeaders(priv ed25519.PrivateKey, key string, v uint64, value []byte) map[string]string {
	return map[string]string{
		fleet.HeaderConfigVersion:   strconv.FormatUint(v, 10),
		fleet.HeaderConfigSignature: fleet.Sign(priv, key, v, value),
	}
}

func TestFleet(t *testing.T) {
	n, interval := fleetBoxes(t)
	f := newFleet(t, n, interval)
	sr := f.statusReader()
	ex := f.startExporter()

	start := time.Now()
	f.startBoxes()
	t.Logf("%d boxes started in %v", n, time.Since(start).Round(time.Millisecond))

	// Every box shows in fleet ls and in the exporter.
	var inLs, inExporter time.Duration
	testkit.Eventually(t, 10*interval+time.Duration(n/4)*time.Second, func() bool {
		if inLs == 0 && len(f.lsJSON()) == n {
			inLs = time.Since(start)
		}
		if inExporter == 0 && strings.Contains(scrape(ex), fmt.Sprintf("gateway_fleet_boxes %d\n", n)) {
			inExporter = time.Since(start)
		}
		return inLs > 0 && inExporter > 0
	}, "all %d boxes in fleet ls and the exporter", n)
	t.Logf("FIGURE time to visible: all %d boxes in fleet ls after %v, in the exporter after %v (status_interval %v, from the first start)",
		n, inLs.Round(time.Millisecond), inExporter.Round(time.Millisecond), interval)
	metrics := scrape(ex)
	for _, id := range f.ids {
		if !strings.Contains(metrics, fmt.Sprintf(`gateway_fleet_link_up{gateway=%q} 1`, id)) {
			t.Fatalf("exporter lacks %s's link state:\n%.2000s", id, metrics)
		}
	}
	board := fleetRun(t, "ls", "--brokers", f.brokers, "--topic", statusTopic)
	if lines := strings.Count(strings.TrimSpace(board), "\n"); lines != n {
		t.Fatalf("fleet ls printed %d box lines, want %d:\n%s", lines, n, board)
	}

	// A config pushed to "*" is applied by every box, and their records
	// say so.
	prev := boxConfig(t, f.boxes[0])
	v1 := f.push("*", "log: {level: info}\n")
	pushed2 := time.Now() // the push command starts: it reads the key's versions, signs, produces
	v2 := f.push("*", "log: {level: info}\nbuffer: {max_disk_bytes: 3GiB}\n")
	pushed := pushed2
	var applied time.Duration
	testkit.Eventually(t, 10*interval+time.Duration(n/4)*time.Second, func() bool {
		recs := newest(sr.byBox(t))
		for _, id := range f.ids {
			if recs[id].Config.FleetVersion != v2 {
				return false
			}
		}
		applied = time.Since(pushed)
		return true
	}, "every box reports version %d", v2)
	// When each box applied it, from its log (the reload path logs it).
	var lastApplied time.Time
	applyRe := regexp.MustCompile(`time=(\S+) level=INFO msg="fleet: signed config overlay applied".*overlays=\S*\*@` + strconv.FormatUint(v2, 10))
	for _, g := range f.boxes {
		m := applyRe.FindStringSubmatch(g.logs.String())
		if m == nil {
			t.Fatalf("a box reports version %d but did not log applying it:\n%s", v2, tail(g.logs, 20))
		}
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			t.Fatal(err)
		}
		if at.After(lastApplied) {
			lastApplied = at
		}
	}
	t.Logf("FIGURE time to applied: the last of %d boxes applied overlay %d %v after `gateway fleet push` started; all status records reported it %v after (%v interval)",
		n, v2, lastApplied.Sub(pushed2).Round(time.Millisecond), applied.Round(time.Millisecond), interval)
	for _, g := range f.boxes {
		c := boxConfig(t, g)
		if c["buffer.max_disk_bytes"] != strconv.FormatInt(3<<30, 10) || c["log.level"] != "info" {
			t.Fatalf("a box reports the version but runs %s, %s", c["buffer.max_disk_bytes"], c["log.level"])
		}
	}
	if prev["buffer.max_disk_bytes"] == strconv.FormatInt(3<<30, 10) {
		t.Fatal("the budget was 3GiB before the push: the test proves nothing")
	}
	for _, id := range f.ids {
		r := newest(sr.byBox(t))[id]
		if r.Config.Source != "file+fleet" || r.Config.Overlays["*"] != v2 {
			t.Fatalf("%s: config %+v", id, r.Config)
		}
	}

	t.Run("ForgedOverlaysRefused", func(t *testing.T) { f.forged(t, sr, v1, v2) })
	t.Run("OutageReportedAfterTheLinkReturns", func(t *testing.T) { f.outage(t, sr) })
	// Last: by now a record has refusals and an outage in it.
	t.Run("SchemaMatchesDocs", func(t *testing.T) { checkSchemaDoc(t, sr, f.ids[0]) })
	t.Run("OverlaySurvivesRestartWithoutKafka", func(t *testing.T) { f.restartOffline(t) })
	t.Run("LocalFileTakesOver", func(t *testing.T) { f.localTakesOver(t, sr) })
}

// forged: no signature, a wrong key, a replayed older version, a section
// outside the allowed ones, an invalid route. Every box refuses each, says
// why in its status, and keeps running what it ran.
func (f *fleetEnv) forged(t *testing.T, sr *statusReader, v1, v2 uint64) {
	_, otherPriv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := fleet.LoadPrivateKey(f.key)
	if err != nil {
		t.Fatal(err)
	}
	before := boxConfig(t, f.boxes[0])

	// The replay: the record of v1, byte for byte, written again.
	replay := []byte("log: {level: info}\n")
	f.produceRaw("*", replay, signedHeaders(priv, "*", v1, replay))

	unsigned := []byte("log: {level: warn}\n")
	f.produceRaw("*", unsigned, map[string]string{fleet.HeaderConfigVersion: strconv.FormatUint(v2+10, 10)})

	wrongKey := []byte("log: {level: error}\n")
	f.produceRaw("*", wrongKey, signedHeaders(otherPriv, "*", v2+11, wrongKey))

	section := []byte("kafka: {brokers: [\"evil.example:9092\"]}\n")
	f.produceRaw("*", section, signedHeaders(priv, "*", v2+12, section))

	invalid := []byte("routes:\n  - {name: bad, match: \"a/#/b\", kafka_topic: t}\n")
	f.produceRaw("*", invalid, signedHeaders(priv, "*", v2+13, invalid))

	// Box-specific too: an unsigned record for the first box's own key.
	f.produceRaw(f.ids[0], unsigned, map[string]string{fleet.HeaderConfigVersion: strconv.FormatUint(v2+14, 10)})

	want := map[string]uint64{fleet.ReasonOlder: v1, fleet.ReasonUnsigned: v2 + 10, fleet.ReasonBadSig: v2 + 11,
		fleet.ReasonSection: v2 + 12, fleet.ReasonInvalid: v2 + 13}
	testkit.Eventually(t, 10*f.interval+time.Duration(len(f.ids)/4)*time.Second, func() bool {
		recs := newest(sr.byBox(t))
		for _, id := range f.ids {
			got := map[string]uint64{}
			for _, r := range recs[id].Config.Refused {
				if r.Key == "*" {
					got[r.Reason] = r.Version
				}
			}
			for reason, v := range want {
				if got[reason] != v {
					return false
				}
			}
		}
		return true
	}, "every box reports the five forged overlays refused")
	recs := newest(sr.byBox(t))
	for _, id := range f.ids {
		r := recs[id]
		if r.Config.FleetVersion != v2 || r.Config.Overlays["*"] != v2 {
			t.Fatalf("%s: a forged overlay changed the applied version: %+v", id, r.Config)
		}
	}
	own := false
	for _, r := range recs[f.ids[0]].Config.Refused {
		own = own || (r.Key == f.ids[0] && r.Reason == fleet.ReasonUnsigned)
	}
	if !own {
		t.Fatalf("%s did not report the unsigned overlay for its own key: %+v", f.ids[0], recs[f.ids[0]].Config.Refused)
	}
	for _, g := range f.boxes {
		after := boxConfig(t, g)
		if after["log.level"] != "info" || after["kafka.brokers"] != before["kafka.brokers"] || after["routes[0].name"] != before["routes[0].name"] {
			t.Fatalf("a forged overlay was applied: log.level %s, brokers %s, routes[0] %s", after["log.level"], after["kafka.brokers"], after["routes[0].name"])
		}
	}
	if m := scrape(f.boxes[0].admin + ""); m == "" {
		t.Fatal("no metrics from the box")
	} else if !regexp.MustCompile(`gateway_remote_config_refused_total\{reason="bad_signature"\} [1-9]`).MatchString(m) {
		t.Fatalf("refusals not counted:\n%s", grepLines(m, "gateway_remote_config"))
	}
	board := fleetRun(t, "ls", "--brokers", f.brokers, "--topic", statusTopic)
	if !strings.Contains(board, "refused") {
		t.Fatalf("fleet ls does not show the refusals:\n%s", board)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// outage: the link is cut while the terminals publish; the first record of
// every box after the link returns describes the outage.
func (f *fleetEnv) outage(t *testing.T, sr *statusReader) {
	f.k.SetMode(t, testkit.Refuse)
	cut := time.Now()
	clients := make([]interface {
		Publish(topic string, qos byte, retained bool, payload any) paho.Token
	}, len(f.boxes))
	for i, g := range f.boxes {
		clients[i] = mqttClient(t, g.mqttAddr, fmt.Sprintf("term-%d", i), false)
	}
	publish := func(from, to int) {
		var wg sync.WaitGroup
		errs := make(chan error, len(f.boxes))
		for i := range f.boxes {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				for j := from; j < to; j++ {
					topic := fmt.Sprintf("terminals/term-%d/payments/p", i)
					if tok := clients[i].Publish(topic, 1, false, fmt.Sprintf("term-%d/%d", i, j)); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
						errs <- fmt.Errorf("publish to box %d: %v", i, tok.Error())
						return
					}
				}
			}(i)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	publish(0, 1) // the drain finds the link down when it tries to send
	testkit.Eventually(t, time.Minute, func() bool {
		for _, g := range f.boxes {
			if linkState(g) != "down" {
				return false
			}
		}
		return true
	}, "every box finds its link down")
	publish(1, 4) // stored while the link is down
	// Down a little longer, so the outage is longer than a status interval.
	time.Sleep(f.interval)
	f.k.SetMode(t, testkit.Pass)
	back := time.Now()
	t.Logf("link cut for %v", back.Sub(cut).Round(time.Millisecond))
	var reported time.Duration
	testkit.Eventually(t, 2*time.Minute, func() bool {
		all := sr.byBox(t)
		for _, id := range f.ids {
			var first *fleet.Record
			for i := range all[id] {
				if all[id][i].rec.At.After(back) {
					first = &all[id][i].rec
					break
				}
			}
			if first == nil {
				return false
			}
			o := first.LastOutage
			if o.Ended == nil || o.Seconds < f.interval.Seconds() || o.Buffered < 3 || o.BacklogAtReturn < 4 {
				for _, r := range all[id] {
					t.Logf("%s at %s link %s outage %+v", id, r.rec.At.Format("15:04:05.000"), r.rec.Link.State, r.rec.LastOutage)
				}
				t.Fatalf("%s: the first record after the link returned (back %s) does not show the outage: %+v", id, back.Format("15:04:05.000"), o)
			}
		}
		reported = time.Since(back)
		return true
	}, "every box's first record after the link returned")
	t.Logf("FIGURE outage reported by all %d boxes %v after the link returned", len(f.ids), reported.Round(time.Millisecond))
}

func linkState(g *gatewayProc) string {
	resp, err := http.Get("http://" + g.admin + "/status")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var st struct {
		Link struct {
			State string `json:"state"`
		} `json:"link"`
	}
	json.NewDecoder(resp.Body).Decode(&st)
	return st.Link.State
}

// restartOffline: a box restarted while Kafka is unreachable runs the
// overlay it applied before (kept in data_dir).
func (f *fleetEnv) restartOffline(t *testing.T) {
	g := f.boxes[0]
	if code := g.stop(); code != 0 {
		t.Fatalf("stop: exit %d", code)
	}
	f.k.SetMode(t, testkit.Refuse)
	defer f.k.SetMode(t, testkit.Pass)
	g.start()
	c := boxConfig(t, g)
	if c["buffer.max_disk_bytes"] != strconv.FormatInt(3<<30, 10) || c["log.level"] != "info" {
		t.Fatalf("after a restart without Kafka the box runs budget %s, log %s: the overlay was not kept", c["buffer.max_disk_bytes"], c["log.level"])
	}
	if linkState(g) == "up" {
		t.Fatal("the link is up: Kafka was reachable, the test proves nothing")
	}
}

// localTakesOver: an operator on board edits the file so that the applied
// overlay no longer fits it; the file runs alone, and the box says why.
func (f *fleetEnv) localTakesOver(t *testing.T, sr *statusReader) {
	g := f.boxes[0]
	data, err := os.ReadFile(g.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(data), "kafka_topic: payments, priority: 0}", "kafka_topic: payments, priority: 0, max_bytes: 5GiB}", 1)
	if edited == string(data) {
		t.Fatal("the file's payments route was not found")
	}
	// 5GiB for payments fits the file's 8GiB, not the overlay's 3GiB.
	edited += "buffer: {max_disk_bytes: 8GiB}\n"
	since := time.Now()
	if err := os.WriteFile(g.cfgPath, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, time.Minute, func() bool {
		return boxConfig(t, g)["buffer.max_disk_bytes"] == strconv.FormatInt(8<<30, 10)
	}, "the edited file running alone")
	if c := boxConfig(t, g); c["routes[0].max_bytes"] != strconv.FormatInt(5<<30, 10) {
		t.Fatalf("payments max_bytes %s", c["routes[0].max_bytes"])
	}
	testkit.Eventually(t, time.Minute, func() bool {
		rs := sr.byBox(t)[f.ids[0]]
		r := rs[len(rs)-1].rec
		if !r.At.After(since) || r.Config.Source != "file" {
			return false
		}
		for _, ref := range r.Config.Refused {
			if ref.Reason == fleet.ReasonInvalid && strings.Contains(ref.Detail, "routes[0].max_bytes") {
				return true
			}
		}
		return false
	}, "the status record says the overlay does not fit the local file")
}

var fieldRowRe = regexp.MustCompile("^\\| `([a-z_.\\[\\]*]+)` \\|")

// checkSchemaDoc: every field the fleet page documents is in a real
// status record, and every field of a real record is documented.
func checkSchemaDoc(t *testing.T, sr *statusReader, id string) {
	doc, err := os.ReadFile("../docs/fleet.md")
	if err != nil {
		t.Fatal(err)
	}
	var fields []string
	in := false
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(line, "## ") {
			in = strings.HasPrefix(line, "## The status record")
		}
		if m := fieldRowRe.FindStringSubmatch(line); in && m != nil {
			fields = append(fields, m[1])
		}
	}
	if len(fields) < 30 {
		t.Fatalf("only %d fields parsed from docs/fleet.md: the table format changed?", len(fields))
	}
	rs := sr.byBox(t)[id]
	if len(rs) == 0 {
		t.Fatal("no status record")
	}
	rec := rs[len(rs)-1]
	if h, _ := header(rec.kr, "gw.type"); h != "status" || string(rec.kr.Key) != id {
		t.Fatalf("record key %q, gw.type %q", rec.kr.Key, h)
	}
	documented := map[string]bool{}
	for _, f := range fields {
		documented[f] = true
		if !hasPath(rec.raw, strings.Split(f, ".")) {
			t.Errorf("docs/fleet.md documents %s, which a real status record lacks", f)
		}
	}
	var undocumented []string
	for _, p := range paths(rec.raw, "") {
		if !documented[p] {
			undocumented = append(undocumented, p)
		}
	}
	sort.Strings(undocumented)
	if len(undocumented) > 0 {
		t.Errorf("a real status record has fields docs/fleet.md does not document: %s", strings.Join(undocumented, ", "))
	}
	if rec.rec.Schema != fleet.SchemaVersion {
		t.Errorf("schema %d", rec.rec.Schema)
	}
}

// hasPath walks a decoded record: "routes[].name" looks in the first
// element of routes; "drops.*" means a map (any keys).
func hasPath(v any, path []string) bool {
	if len(path) == 0 {
		return true
	}
	m, ok := v.(map[string]any)
	if !ok {
		return false
	}
	p := path[0]
	if p == "*" {
		return true
	}
	if name, isList := strings.CutSuffix(p, "[]"); isList {
		l, ok := m[name].([]any)
		if !ok {
			return false
		}
		if len(l) == 0 {
			return len(path) == 1
		}
		return hasPath(l[0], path[1:])
	}
	next, ok := m[p]
	if !ok {
		return false
	}
	return hasPath(next, path[1:])
}

// paths lists a record's field paths as the docs name them: objects whose
// keys are data (per-reason counts, overlays by key) end in ".*".
func paths(v any, prefix string) []string {
	m, ok := v.(map[string]any)
	if !ok {
		return nil
	}
	var out []string
	for k, sub := range m {
		p := k
		if prefix != "" {
			p = prefix + "." + k
		}
		if dataKeyed[p] {
			out = append(out, p, p+".*")
			continue
		}
		out = append(out, p)
		switch s := sub.(type) {
		case map[string]any:
			out = append(out, paths(s, p)...)
		case []any:
			if len(s) > 0 {
				out = append(out, paths(s[0], p+"[]")...)
			}
		}
	}
	return out
}

// dataKeyed are the record's maps keyed by data, not by field name.
var dataKeyed = map[string]bool{
	"config.overlays": true, "routes[].drops": true, "routes[].thinned": true, "routes[].dead_letters": true,
	"last_outage.dropped": true, "last_outage.thinned": true, "quarantined": true,
}
