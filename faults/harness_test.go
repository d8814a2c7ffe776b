package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/edgegw/gateway/internal/lossyfs"
	"github.com/edgegw/gateway/internal/testkit"
)

var gatewayBin string

// full is the long suite (`make faults`): FAULTS=full.
var full = os.Getenv("FAULTS") == "full"

func TestMain(m *testing.M) {
	if os.Getenv(stormAddrEnv) != "" {
		os.Exit(stormChild())
	}
	dir, err := os.MkdirTemp("", "gateway-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	gatewayBin = filepath.Join(dir, "gateway")
	// Failpoints compiled in: the timed cuts arm them by environment. No
	// -race: the suite is about storage, and a race build is 5-10x slower
	// on these two cores.
	cmd := exec.Command("go", "build", "-tags", "failpoints", "-o", gatewayBin, "../cmd/gateway")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "faults: building the gateway failed:", err)
		os.Exit(1)
	}
	code := m.Run()
	printTable()
	os.RemoveAll(dir)
	os.Exit(code)
}

// row is one line of the table.
type row struct {
	Fault             string
	Runs              int
	Acked, Lost, Dups int64
	Recover           time.Duration // longest restart-to-ready (or to ingest resuming)
	Note              string
}

var (
	tableMu sync.Mutex
	table   []row
)

func report(t *testing.T, r row) {
	t.Helper()
	tableMu.Lock()
	table = append(table, r)
	tableMu.Unlock()
	t.Logf("%s", formatRow(r))
}

func formatRow(r row) string {
	return fmt.Sprintf("%-34s %5d %10d %6d %6d %10s  %s", r.Fault, r.Runs, r.Acked, r.Lost, r.Dups,
		r.Recover.Round(time.Millisecond), r.Note)
}

func printTable() {
	tableMu.Lock()
	defer tableMu.Unlock()
	if len(table) == 0 {
		return
	}
	fmt.Printf("\n%-34s %5s %10s %6s %6s %10s  %s\n", "fault", "runs", "acked", "lost", "dups", "recover", "notes")
	for _, r := range table {
		fmt.Println(formatRow(r))
	}
}

const gatewayID = "faults-gw"

const receiptsTopic = "receipts." + gatewayID

// rig is one fault scenario's world: a lossy mount holding data_dir, a Kafka
// cluster, and a gateway process.
type rig struct {
	t     *testing.T
	fs    *lossyfs.FS
	kafka *testkit.KafkaCluster
	gw    *gateway
}

// newRig mounts the lossy filesystem and starts Kafka; the gateway is
// configured but not started. It skips when FUSE is unavailable.
func newRig(t *testing.T, kopts ...testkit.KafkaOpt) *rig {
	t.Helper()
	if ok, why := lossyfs.Available(); !ok {
		t.Skipf("skipping the fault suite: %s", why)
	}
	dir := t.TempDir()
	backing, mnt := filepath.Join(dir, "backing"), filepath.Join(dir, "mnt")
	for _, d := range []string{backing, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	fs, err := lossyfs.Mount(backing, mnt, lossyfs.Options{})
	if err != nil {
		t.Skipf("skipping the fault suite: cannot mount FUSE: %v", err)
	}
	r := &rig{t: t, fs: fs}
	t.Cleanup(func() {
		r.gw.kill() // nothing may hold the mount
		if err := fs.Close(); err != nil {
			t.Errorf("lossyfs: %v", err)
		}
	})
	kopts = append([]testkit.KafkaOpt{testkit.Topics(3, "payments", "telemetry", receiptsTopic, "receipts.delivered")}, kopts...)
	r.kafka = testkit.Kafka(t, kopts...)
	r.gw = newGateway(t, dir, filepath.Join(mnt, "data"), r.kafka.Addrs)
	return r
}

// powerCut kills the gateway (SIGKILL) and cuts the power of the storage.
func (r *rig) powerCut(mode lossyfs.Mode) {
	r.t.Helper()
	r.gw.kill()
	if err := r.fs.PowerCut(mode); err != nil {
		r.t.Fatalf("power cut: %v", err)
	}
}

// gateway is one gateway process with fixed ports, so it can be killed and
// started again on the same data dir.
type gateway struct {
	t        *testing.T
	cfgPath  string
	mqttAddr string
	admin    string
	env      []string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	logs   *logBuffer
}

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newGateway(t *testing.T, dir, dataDir string, brokers []string) *gateway {
	g := &gateway{
		t:        t,
		cfgPath:  filepath.Join(dir, "gateway.yaml"),
		mqttAddr: fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t)),
		admin:    fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t)),
		logs:     &logBuffer{},
	}
	q := make([]string, len(brokers))
	for i, b := range brokers {
		q[i] = strconv.Quote(b)
	}
	cfg := fmt.Sprintf(`id: %s
data_dir: %q
mqtt: {address: %q, max_inflight: 64}
kafka: {brokers: [%s]}
admin: {address: %q}
log: {level: info}
buffer: {max_disk_bytes: 256MiB, purge_interval: 500ms}
routes:
  - {name: payments, match: "terminals/+/payments/#", kafka_topic: payments, priority: 0}
  - {name: telemetry, match: "terminals/+/telemetry/#", kafka_topic: telemetry, priority: 5}
`, gatewayID, dataDir, g.mqttAddr, strings.Join(q, ", "), g.admin)
	if err := os.WriteFile(g.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// nothing panics (DESIGN): a storage fault must become an error
		if i := strings.Index(g.logs.String(), "\npanic: "); i >= 0 {
			line, _, _ := strings.Cut(g.logs.String()[i+1:], "\n")
			fail(t, "the gateway panicked %d time(s): %s", strings.Count(g.logs.String(), "\npanic: "), line)
		}
		if t.Failed() {
			t.Logf("gateway log (tail):\n%s", g.tail(80))
		}
		// FAULTS_LOGS=dir keeps every scenario's gateway log for reading
		if dir := os.Getenv("FAULTS_LOGS"); dir != "" {
			name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()) + ".log"
			_ = os.MkdirAll(dir, 0o755)
			_ = os.WriteFile(filepath.Join(dir, name), []byte(g.logs.String()), 0o644)
		}
	})
	return g
}

func (g *gateway) tail(n int) string {
	lines := strings.Split(g.logs.String(), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// launch starts the process without waiting for it.
func (g *gateway) launch(extraEnv ...string) {
	g.t.Helper()
	cmd := exec.Command(gatewayBin, "run", "--config", g.cfgPath)
	cmd.Env = append(append(os.Environ(), g.env...), extraEnv...)
	fmt.Fprintf(g.logs, "---- start %s\n", time.Now().Format(time.RFC3339Nano))
	cmd.Stdout, cmd.Stderr = g.logs, g.logs
	if err := cmd.Start(); err != nil {
		g.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	g.mu.Lock()
	g.cmd, g.exited = cmd, exited
	g.mu.Unlock()
}

// start launches the process and waits until /readyz answers 200; it
// returns how long that took.
func (g *gateway) start(extraEnv ...string) time.Duration {
	g.t.Helper()
	t0 := time.Now()
	g.launch(extraEnv...)
	testkit.Eventually(g.t, 60*time.Second, func() bool {
		if g.hasExited() {
			g.t.Fatalf("gateway exited during start (%s):\n%s", g.exitStatus(), g.tail(40))
		}
		return g.readyz() == 200
	}, "gateway ready")
	return time.Since(t0)
}

func (g *gateway) hasExited() bool {
	g.mu.Lock()
	ch := g.exited
	g.mu.Unlock()
	if ch == nil {
		return true
	}
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// waitExit waits up to d for the process to end.
func (g *gateway) waitExit(d time.Duration) bool {
	return testkit.Poll(d, g.hasExited)
}

func (g *gateway) exitStatus() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cmd == nil || g.cmd.ProcessState == nil {
		return "running"
	}
	return g.cmd.ProcessState.String()
}

func (g *gateway) exitCode() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cmd == nil || g.cmd.ProcessState == nil {
		return -1
	}
	return g.cmd.ProcessState.ExitCode()
}

func (g *gateway) pid() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cmd == nil || g.cmd.Process == nil {
		return 0
	}
	return g.cmd.Process.Pid
}

// kill sends SIGKILL and waits for the process to be gone; safe when not
// running.
func (g *gateway) kill() {
	if g == nil {
		return
	}
	g.mu.Lock()
	cmd, ch := g.cmd, g.exited
	g.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-ch
}

// stop sends SIGTERM and returns the exit code.
func (g *gateway) stop() int {
	g.mu.Lock()
	cmd, ch := g.cmd, g.exited
	g.mu.Unlock()
	if cmd == nil {
		return -1
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		g.t.Errorf("gateway did not stop within 30s of SIGTERM")
		_ = cmd.Process.Kill()
		<-ch
	}
	return cmd.ProcessState.ExitCode()
}

var httpc = &http.Client{Timeout: 2 * time.Second}

func (g *gateway) readyz() int {
	resp, err := httpc.Get("http://" + g.admin + "/readyz")
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// status returns /status as raw JSON ("" if unreachable).
func (g *gateway) status() string {
	resp, err := httpc.Get("http://" + g.admin + "/status")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// statusField digs a value out of /status by a dotted path ("" if absent).
func (g *gateway) statusField(path string) string {
	var v any
	if json.Unmarshal([]byte(g.status()), &v) != nil {
		return ""
	}
	for _, k := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return ""
		}
		v = m[k]
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// logLines returns the lines the latest gateway process logged that contain
// any of subs.
func (g *gateway) logLines(max int, subs ...string) []string {
	var out []string
	all := g.logs.String()
	if i := strings.LastIndex(all, "---- start "); i >= 0 {
		all = all[i:]
	}
	for _, l := range strings.Split(all, "\n") {
		for _, s := range subs {
			if strings.Contains(l, s) {
				out = append(out, l)
				break
			}
		}
	}
	if len(out) > max {
		out = out[:max]
	}
	return out
}

// publishers are MQTT 5 terminals (paho.golang), each publishing QoS 1 with
// one publish in flight and reconnecting whenever the connection drops. A
// payload counts as acknowledged only when its PUBACK carried a success
// reason code.
type publishers struct {
	addr     string
	interval time.Duration // per client between publishes; 0 = as fast as acked
	pad      int           // bytes of padding after the id in each payload
	max      int           // publishes per client; 0 = until halted

	stop chan struct{}
	wg   sync.WaitGroup

	mu       sync.Mutex
	acked    map[string]bool
	refused  map[byte]int64 // PUBACK reason codes >= 0x80
	lat      []time.Duration
	recordAt time.Time // latencies are kept for publishes started after it
	n        atomic.Int64
	errs     atomic.Int64 // publishes that got no PUBACK (connection lost, timeout)
}

func startPublishers(t *testing.T, addr, prefix string, clients int, interval time.Duration, opts ...func(*publishers)) *publishers {
	p := &publishers{addr: addr, interval: interval, stop: make(chan struct{}),
		acked: map[string]bool{}, refused: map[byte]int64{}}
	for _, o := range opts {
		o(p)
	}
	for c := 0; c < clients; c++ {
		id := fmt.Sprintf("%s-%d", prefix, c)
		p.wg.Add(1)
		go p.run(id, c, clients)
	}
	t.Cleanup(p.halt)
	return p
}

func (p *publishers) stopped() bool {
	select {
	case <-p.stop:
		return true
	default:
		return false
	}
}

func (p *publishers) run(id string, idx, clients int) {
	defer p.wg.Done()
	i := 0
	// spread paced clients over the interval
	next := time.Now()
	if p.interval > 0 {
		next = next.Add(p.interval * time.Duration(idx) / time.Duration(clients))
	}
	for !p.stopped() {
		c, err := dial5(p.addr, id, true, nil)
		if err != nil {
			select {
			case <-p.stop:
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		for !p.stopped() {
			if p.interval > 0 {
				if d := time.Until(next); d > 0 {
					select {
					case <-p.stop:
					case <-time.After(d):
					}
				}
				next = next.Add(p.interval)
				if time.Until(next) < -time.Second {
					next = time.Now() // fell behind (a stall): do not burst
				}
			}
			if p.max > 0 && i >= p.max {
				<-p.stop
				break
			}
			payload := fmt.Sprintf("%s/%d", id, i)
			if p.pad > 0 {
				payload += " " + strings.Repeat("x", p.pad)
			}
			i++
			t0 := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			go func() {
				// paho does not end a publish waiting for its PUBACK when
				// the connection drops; its context must
				select {
				case <-c.Done():
					cancel()
				case <-ctx.Done():
				}
			}()
			pr, err := c.Publish(ctx, &paho.Publish{QoS: 1, Topic: "terminals/" + id + "/payments/x", Payload: []byte(payload)})
			cancel()
			took := time.Since(t0)
			if pr != nil && pr.ReasonCode >= 0x80 {
				p.mu.Lock()
				p.refused[pr.ReasonCode]++
				p.mu.Unlock()
				continue
			}
			if err != nil || pr == nil {
				p.errs.Add(1)
				break
			}
			p.mu.Lock()
			p.acked[payload] = true
			if !p.recordAt.IsZero() && t0.After(p.recordAt) {
				p.lat = append(p.lat, took)
			}
			p.mu.Unlock()
			p.n.Add(1)
		}
		_ = c.Disconnect(&paho.Disconnect{})
	}
}

// waitMore waits until n more publishes were acknowledged, up to d.
func (p *publishers) waitMore(n int64, d time.Duration) bool {
	target := p.n.Load() + n
	return testkit.Poll(d, func() bool { return p.n.Load() >= target })
}

func (p *publishers) halt() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	p.wg.Wait()
}

func (p *publishers) ackedSet() map[string]bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]bool, len(p.acked))
	for k := range p.acked {
		out[k] = true
	}
	return out
}

func (p *publishers) refusals() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var parts []string
	for code, n := range p.refused {
		parts = append(parts, fmt.Sprintf("0x%02x x%d", code, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// latencies returns and resets the recorded PUBACK latencies, and starts
// recording from now.
func (p *publishers) latencies() []time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.lat
	p.lat = nil
	p.recordAt = time.Now()
	return out
}

func percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// dial5 connects an MQTT 5 client; persistent sessions get an expiry.
func dial5(addr, id string, clean bool, onPublish func(*paho.Publish)) (*paho.Client, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	cfg := paho.ClientConfig{Conn: conn}
	if onPublish != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			onPublish(pr.Packet)
			return true, nil
		}}
	}
	c := paho.NewClient(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cp := &paho.Connect{ClientID: id, CleanStart: clean, KeepAlive: 30}
	if !clean {
		exp := uint32(3600)
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &exp}
	}
	ca, err := c.Connect(ctx, cp)
	if err != nil || ca == nil || ca.ReasonCode != 0 {
		conn.Close()
		if err == nil {
			err = fmt.Errorf("connack %+v", ca)
		}
		return nil, err
	}
	return c, nil
}

// verifyUplink waits until every acknowledged payload is in the payments
// topic (up to d) and returns how many are missing and how many records are
// copies.
func verifyUplink(t *testing.T, addrs []string, acked map[string]bool, d time.Duration) (lost, dups int64) {
	t.Helper()
	cons := testkit.Consume(t, addrs, []string{"payments"})
	var recs []*kgo.Record
	missing := len(acked)
	testkit.Poll(d, func() bool {
		recs = cons.Poll(time.Second)
		present := make(map[string]bool, len(recs))
		for _, r := range recs {
			present[string(r.Value)] = true
		}
		missing = 0
		for k := range acked {
			if !present[k] {
				missing++
			}
		}
		return missing == 0
	})
	seen := map[string]bool{}
	for _, r := range recs {
		if seen[string(r.Value)] {
			dups++
		}
		seen[string(r.Value)] = true
	}
	if missing > 0 {
		var ex []string
		for k := range acked {
			if !seen[k] && len(ex) < 10 {
				ex = append(ex, k)
			}
		}
		sort.Strings(ex)
		fail(t, "%d acknowledged messages never reached Kafka, e.g. %v", missing, ex)
	}
	return int64(missing), dups
}

// knownDefects are scenarios the current gateway fails (issue 11's
// findings, described in the scenarios' comments). In the short
// suite, which runs in `make test`, their failures are logged as KNOWN
// DEFECT so that everyone's build stays green; `make faults` fails on them.
// Delete an entry once the gateway passes it.
var knownDefects = map[string]string{}

// fail reports a failed check: an error, or in the short suite a logged
// KNOWN DEFECT for a scenario listed in knownDefects.
func fail(t *testing.T, format string, args ...any) {
	t.Helper()
	top, _, _ := strings.Cut(t.Name(), "/")
	if why := knownDefects[top]; why != "" && !full {
		t.Logf("KNOWN DEFECT (%s): "+format, append([]any{why}, args...)...)
		return
	}
	t.Errorf(format, args...)
}

// receipts produces receipts to the gateway's receipts topic for a few
// devices and records what each device's terminal (a persistent MQTT 5
// session) receives.
type receipts struct {
	t       *testing.T
	addr    string
	devices []string
	cl      *kgo.Client

	stop     chan struct{}
	prodStop chan struct{}
	prodOnce sync.Once
	wg       sync.WaitGroup

	mu       sync.Mutex
	produced map[string]string // payload -> device
	got      map[string]int    // payload -> deliveries
}

func startReceipts(t *testing.T, r *rig, devices int, every time.Duration) *receipts {
	rc := &receipts{t: t, addr: r.gw.mqttAddr, stop: make(chan struct{}), prodStop: make(chan struct{}),
		produced: map[string]string{}, got: map[string]int{}}
	cl, err := kgo.NewClient(kgo.SeedBrokers(r.kafka.Addrs...), kgo.DefaultProduceTopic(receiptsTopic))
	if err != nil {
		t.Fatal(err)
	}
	rc.cl = cl
	for d := 0; d < devices; d++ {
		dev := fmt.Sprintf("dev-%d", d)
		rc.devices = append(rc.devices, dev)
		rc.wg.Add(1)
		go rc.terminal(dev)
	}
	rc.wg.Add(1)
	go rc.produce(every)
	t.Cleanup(func() { rc.halt(); cl.Close() })
	return rc
}

func (rc *receipts) stopped() bool {
	select {
	case <-rc.stop:
		return true
	default:
		return false
	}
}

func (rc *receipts) terminal(dev string) {
	defer rc.wg.Done()
	for !rc.stopped() {
		c, err := dial5(rc.addr, dev, false, func(p *paho.Publish) {
			rc.mu.Lock()
			rc.got[string(p.Payload)]++
			rc.mu.Unlock()
		})
		if err != nil {
			select {
			case <-rc.stop:
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "terminals/" + dev + "/receipts", QoS: 1}}})
		cancel()
		if err == nil {
			select {
			case <-rc.stop:
			case <-c.Done():
			}
		}
		_ = c.Disconnect(&paho.Disconnect{})
	}
}

func (rc *receipts) produce(every time.Duration) {
	defer rc.wg.Done()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-rc.stop:
			return
		case <-rc.prodStop:
			return
		case <-tick.C:
		}
		dev := rc.devices[n%len(rc.devices)]
		payload := fmt.Sprintf("receipt/%s/%d", dev, n)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := rc.cl.ProduceSync(ctx, &kgo.Record{Key: []byte(dev), Value: []byte(payload)}).FirstErr()
		cancel()
		if err == nil {
			rc.mu.Lock()
			rc.produced[payload] = dev
			rc.mu.Unlock()
		}
	}
}

// stopProducing stops new receipts; the terminals keep receiving.
func (rc *receipts) stopProducing() { rc.prodOnce.Do(func() { close(rc.prodStop) }) }

func (rc *receipts) halt() {
	rc.stopProducing()
	select {
	case <-rc.stop:
	default:
		close(rc.stop)
	}
	rc.wg.Wait()
}

// verify waits (up to d, with the gateway running) until every produced
// receipt reached its terminal; it returns produced, missing and duplicate
// deliveries. Every produced receipt must arrive: one whose offset was
// committed is delivered from the outbox, any other is consumed again.
func (rc *receipts) verify(d time.Duration) (produced, missing, dups int64) {
	testkit.Poll(d, func() bool {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		for p := range rc.produced {
			if rc.got[p] == 0 {
				return false
			}
		}
		return true
	})
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for p := range rc.produced {
		produced++
		switch n := rc.got[p]; {
		case n == 0:
			missing++
		case n > 1:
			dups += int64(n - 1)
		}
	}
	return
}

func nilDisconnect() *paho.Disconnect { return &paho.Disconnect{} }

// A reconnect storm is dialled from a child process (this test binary run
// again with stormAddrEnv set), as terminals are other machines: dialled
// from the test process, its thousand paho clients starved that process's
// own paced publishers, which measured the test, not the gateway.
const stormAddrEnv, stormCountEnv = "FAULTS_STORM_ADDR", "FAULTS_STORM_N"

// stormChild connects the storm's persistent sessions at once, prints how
// many connected and how long it took, and disconnects them.
func stormChild() int {
	n, _ := strconv.Atoi(os.Getenv(stormCountEnv))
	addr := os.Getenv(stormAddrEnv)
	var wg sync.WaitGroup
	var connected atomic.Int64
	clients := make([]*paho.Client, n)
	t0 := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if c, err := dial5(addr, fmt.Sprintf("storm-%d", i), false, nil); err == nil {
				connected.Add(1)
				clients[i] = c
			}
		}(i)
	}
	wg.Wait()
	fmt.Printf("%d %d\n", connected.Load(), time.Since(t0).Nanoseconds())
	for _, c := range clients {
		if c != nil {
			_ = c.Disconnect(nilDisconnect())
		}
	}
	return 0
}

// storm runs a storm of n persistent sessions against addr from a child
// process; it returns how many connected and how long that took.
func storm(t *testing.T, addr string, n int) (int64, time.Duration) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), stormAddrEnv+"="+addr, fmt.Sprintf("%s=%d", stormCountEnv, n))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("storm child: %v", err)
	}
	var ok, ns int64
	if _, err := fmt.Sscan(string(out), &ok, &ns); err != nil {
		t.Fatalf("storm child printed %q: %v", out, err)
	}
	return ok, time.Duration(ns)
}
