// Command loadgen simulates MQTT terminals: N paho (MQTT 3.1.1) clients
// publishing at a given total rate with a window of publishes in flight per
// client, for a bounded time. It prints clients connected, messages acked,
// acked msg/s and publish->PUBACK latency percentiles, or one JSON line with
// -json. With -idle it only connects the clients and holds them, for memory
// measurements of the broker. With -receipts each client sends payments and
// waits for their receipts (through the gateway and cmd/payproc), and the
// latency is the payment -> receipt round trip (see receipts.go).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// config holds the parsed flags.
type config struct {
	broker        string
	clients       int
	rate          float64
	size          int
	inflight      int
	duration      time.Duration
	qos           int
	topic         string
	prefix        string
	idle          bool
	subscribe     string // with idle: a topic each client subscribes to ({client} = its id)
	username      string
	password      string
	jsonOut       bool
	clean         bool
	connectPar    int
	timeout       time.Duration
	drainTimeout  time.Duration
	receipts      bool
	paymentsTopic string
	receiptsTopic string
}

// result is what a run measured; it is also the -json output.
type result struct {
	Mode         string  `json:"mode"`
	Broker       string  `json:"broker"`
	Clients      int     `json:"clients"`
	Connected    int     `json:"connected"`
	ConnectedEnd int     `json:"connected_at_end"`
	QoS          int     `json:"qos"`
	Size         int     `json:"size"`
	Inflight     int     `json:"inflight"`
	Rate         float64 `json:"rate"`
	Seconds      float64 `json:"seconds"`
	Sent         int64   `json:"sent"`
	Acked        int64   `json:"acked"`
	AckedPerSec  float64 `json:"acked_per_s"`
	P50ms        float64 `json:"p50_ms"`
	P90ms        float64 `json:"p90_ms"`
	P99ms        float64 `json:"p99_ms"`
	Maxms        float64 `json:"max_ms"`
	Errors       int64   `json:"errors"`
	ConnectErrs  int64   `json:"connect_errors"`
	Lost         int64   `json:"connections_lost"`
	Timeouts     int64   `json:"timeouts"`
	FirstError   string  `json:"first_error,omitempty"`
	// Unmatched counts receipts (-receipts) that matched no payment of
	// this run still waiting: an earlier run's, or a duplicate.
	Unmatched int64 `json:"unmatched_receipts,omitempty"`
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	res := run(cfg)
	if cfg.jsonOut {
		b, _ := json.Marshal(res)
		fmt.Println(string(b))
	} else {
		printHuman(res)
	}
	if res.Connected == 0 {
		os.Exit(1)
	}
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.StringVar(&c.broker, "broker", "tcp://127.0.0.1:1883", "broker URL")
	fs.IntVar(&c.clients, "clients", 10, "number of clients")
	fs.Float64Var(&c.rate, "rate", 0, "total messages per second over all clients (0 = as fast as acks allow)")
	fs.IntVar(&c.size, "size", 200, "payload bytes")
	fs.IntVar(&c.inflight, "inflight", 1, "publishes in flight per client")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "how long to publish (or stay connected with -idle)")
	fs.IntVar(&c.qos, "qos", 1, "QoS 0 or 1")
	fs.StringVar(&c.topic, "topic", "terminals/{client}/telemetry", "topic template: {client} = client id, {n} = client index")
	fs.StringVar(&c.prefix, "client-prefix", "loadgen-", "client id prefix (id = prefix + index)")
	fs.BoolVar(&c.idle, "idle", false, "only connect the clients and keep them idle for -duration")
	fs.StringVar(&c.subscribe, "subscribe", "", "with -idle: each client subscribes (QoS 1) to this topic ({client} = its id), as a terminal does to its receipts")
	fs.StringVar(&c.username, "username", "", "MQTT username")
	fs.StringVar(&c.password, "password", "", "MQTT password")
	fs.BoolVar(&c.jsonOut, "json", false, "print one JSON line with the results")
	fs.BoolVar(&c.clean, "clean", true, "clean session (-clean=false keeps sessions on the broker)")
	fs.IntVar(&c.connectPar, "connect-parallel", 50, "connections opened at the same time")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "per-publish ack timeout (counted as error)")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", 10*time.Second, "after -duration, how long to wait for outstanding acks")
	fs.BoolVar(&c.receipts, "receipts", false, "send payments and wait for their receipts; latency is payment -> receipt (needs the gateway and cmd/payproc)")
	fs.StringVar(&c.paymentsTopic, "payments-topic", "terminals/{client}/payments/{seq}", "with -receipts: payment topic ({seq} = payment number)")
	fs.StringVar(&c.receiptsTopic, "receipts-topic", "terminals/{client}/receipts", "with -receipts: the topic the client subscribes to for its receipts")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	switch {
	case fs.NArg() > 0:
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	case c.clients < 1:
		return c, errors.New("-clients must be at least 1")
	case c.rate < 0:
		return c, errors.New("-rate must be >= 0")
	case c.size < 0:
		return c, errors.New("-size must be >= 0")
	case c.inflight < 1:
		return c, errors.New("-inflight must be at least 1")
	case c.inflight > 65535:
		return c, errors.New("-inflight must be at most 65535 (MQTT packet ids)")
	case c.duration <= 0:
		return c, errors.New("-duration must be positive")
	case c.qos != 0 && c.qos != 1:
		return c, errors.New("-qos must be 0 or 1")
	case c.receipts && c.idle:
		return c, errors.New("-receipts and -idle exclude each other")
	case c.connectPar < 1:
		return c, errors.New("-connect-parallel must be at least 1")
	}
	return c, nil
}

// stats is shared by all clients; latencies are collected per client and
// merged at the end so the hot path takes no shared lock.
type stats struct {
	sent, acked, errors, connectErrs, lost, timeouts atomic.Int64
	firstErr                                         atomic.Pointer[string]
}

func (s *stats) fail(counter *atomic.Int64, err error) {
	counter.Add(1)
	if counter != &s.errors {
		s.errors.Add(1)
	}
	msg := err.Error()
	s.firstErr.CompareAndSwap(nil, &msg)
}

type client struct {
	idx   int
	id    string
	topic string
	cl    mqtt.Client
	lost  atomic.Bool
	lat   []time.Duration
	last  time.Time // completion time of the last ack
}

func run(cfg config) result {
	st := &stats{}
	res := result{
		Mode: "publish", Broker: cfg.broker, Clients: cfg.clients, QoS: cfg.qos,
		Size: cfg.size, Inflight: cfg.inflight, Rate: cfg.rate,
	}
	if cfg.idle {
		res.Mode = "idle"
	}
	if cfg.receipts {
		res.Mode = "receipts"
	}
	rs := &receiptsStats{}

	// A second signal is not needed: the run is bounded; the first one just
	// ends the publishing phase early.
	stop := make(chan struct{})
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	var stopOnce sync.Once
	go func() {
		if _, ok := <-sigs; ok {
			stopOnce.Do(func() { close(stop) })
		}
	}()

	clients := connectAll(cfg, st, stop)
	res.Connected = len(clients)
	res.ConnectErrs = st.connectErrs.Load()
	defer func() {
		var wg sync.WaitGroup
		for _, c := range clients {
			wg.Add(1)
			go func() { defer wg.Done(); c.cl.Disconnect(250) }()
		}
		wg.Wait()
	}()
	if len(clients) == 0 {
		res.Errors = st.errors.Load()
		res.FirstError = loadErr(st)
		return res
	}

	var rts []*rtState
	if cfg.receipts {
		for _, c := range clients {
			s, err := c.subscribeReceipts(cfg, st, rs)
			if err != nil {
				st.fail(&st.errors, fmt.Errorf("%s: %w", c.id, err))
				res.Errors = st.errors.Load()
				res.FirstError = loadErr(st)
				return res
			}
			rts = append(rts, s)
		}
	}
	if cfg.idle && cfg.subscribe != "" {
		for _, c := range clients {
			tok := c.cl.Subscribe(strings.ReplaceAll(cfg.subscribe, "{client}", c.id), 1, func(mqtt.Client, mqtt.Message) {})
			if !tok.WaitTimeout(cfg.timeout) || tok.Error() != nil {
				st.fail(&st.errors, fmt.Errorf("%s: subscribe: %v", c.id, tok.Error()))
			}
		}
	}
	runID := strconv.FormatInt(time.Now().UnixNano(), 36)

	start := time.Now()
	deadline := start.Add(cfg.duration)
	timer := time.NewTimer(cfg.duration)
	defer timer.Stop()
	if cfg.idle {
		select {
		case <-timer.C:
		case <-stop:
		}
		res.Seconds = time.Since(start).Seconds()
	} else {
		end := make(chan struct{})
		go func() {
			select {
			case <-timer.C:
			case <-stop:
			}
			close(end)
		}()
		var wg sync.WaitGroup
		for i, c := range clients {
			wg.Add(1)
			if cfg.receipts {
				go func() { defer wg.Done(); c.payments(cfg, st, rts[i], runID, start, deadline, end) }()
				continue
			}
			go func() { defer wg.Done(); c.publish(cfg, st, start, deadline, end) }()
		}
		wg.Wait()
		var last time.Time
		var all []time.Duration
		for _, c := range clients {
			if c.last.After(last) {
				last = c.last
			}
			all = append(all, c.lat...)
		}
		if last.IsZero() {
			last = time.Now()
		}
		res.Seconds = last.Sub(start).Seconds()
		res.Sent = st.sent.Load()
		res.Acked = st.acked.Load()
		if res.Seconds > 0 {
			res.AckedPerSec = float64(res.Acked) / res.Seconds
		}
		sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
		res.P50ms = ms(pct(all, 0.50))
		res.P90ms = ms(pct(all, 0.90))
		res.P99ms = ms(pct(all, 0.99))
		if len(all) > 0 {
			res.Maxms = ms(all[len(all)-1])
		}
	}
	for _, c := range clients {
		if c.cl.IsConnectionOpen() {
			res.ConnectedEnd++
		}
	}
	res.Errors = st.errors.Load()
	res.Lost = st.lost.Load()
	res.Timeouts = st.timeouts.Load()
	res.FirstError = loadErr(st)
	res.Unmatched = rs.unmatched.Load()
	return res
}

func loadErr(st *stats) string {
	if p := st.firstErr.Load(); p != nil {
		return *p
	}
	return ""
}

// connectAll opens the connections, connectPar at a time, and returns the
// clients that connected.
func connectAll(cfg config, st *stats, stop <-chan struct{}) []*client {
	all := make([]*client, cfg.clients)
	sem := make(chan struct{}, cfg.connectPar)
	var wg sync.WaitGroup
loop:
	for i := range cfg.clients {
		select {
		case <-stop:
			break loop
		case sem <- struct{}{}:
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c := newClient(cfg, st, i)
			tok := c.cl.Connect()
			if !tok.WaitTimeout(cfg.timeout) {
				st.fail(&st.connectErrs, fmt.Errorf("connect %s: timeout after %v", c.id, cfg.timeout))
				c.cl.Disconnect(0)
				return
			}
			if err := tok.Error(); err != nil {
				st.fail(&st.connectErrs, fmt.Errorf("connect %s: %w", c.id, err))
				return
			}
			all[i] = c
		}()
	}
	wg.Wait()
	var out []*client
	for _, c := range all {
		if c != nil {
			out = append(out, c)
		}
	}
	return out
}

func newClient(cfg config, st *stats, i int) *client {
	c := &client{idx: i, id: cfg.prefix + strconv.Itoa(i)}
	c.topic = strings.NewReplacer("{client}", c.id, "{n}", strconv.Itoa(i)).Replace(cfg.topic)
	o := mqtt.NewClientOptions().
		AddBroker(cfg.broker).
		SetClientID(c.id).
		SetProtocolVersion(4). // MQTT 3.1.1, no fallback to 3.1
		SetCleanSession(cfg.clean).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(cfg.timeout).
		SetKeepAlive(60 * time.Second).
		SetWriteTimeout(cfg.timeout).
		SetOrderMatters(false).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			c.lost.Store(true)
			st.fail(&st.lost, fmt.Errorf("%s: connection lost: %w", c.id, err))
		})
	if cfg.username != "" {
		o.SetUsername(cfg.username)
		o.SetPassword(cfg.password)
	}
	c.cl = mqtt.NewClient(o)
	return c
}

type pending struct {
	tok   mqtt.Token
	start time.Time
}

// publish sends until the deadline, keeping at most cfg.inflight publishes
// outstanding. A separate goroutine waits on the tokens in publish order:
// brokers PUBACK a client's QoS-1 publishes in order, so waiting in order
// measures each latency without a goroutine per message.
func (c *client) publish(cfg config, st *stats, start, deadline time.Time, end <-chan struct{}) {
	payload := makePayload(cfg.size, c.idx)
	window := make(chan struct{}, cfg.inflight)
	queue := make(chan pending, cfg.inflight)
	done := make(chan struct{})
	// The waiter owns lat and last until done is closed.
	lat := make([]time.Duration, 0, 1024)
	var last time.Time
	go func() {
		defer close(done)
		t := time.NewTimer(cfg.timeout)
		defer t.Stop()
		for p := range queue {
			t.Reset(cfg.timeout - time.Since(p.start))
			select {
			case <-p.tok.Done():
				now := time.Now()
				if err := p.tok.Error(); err != nil {
					st.fail(&st.errors, fmt.Errorf("%s: publish: %w", c.id, err))
				} else {
					st.acked.Add(1)
					lat = append(lat, now.Sub(p.start))
					last = now
				}
			case <-t.C:
				st.fail(&st.timeouts, fmt.Errorf("%s: no ack within %v", c.id, cfg.timeout))
			}
			<-window
		}
	}()

	pace := newPacer(cfg, c.idx, start)
	qos := byte(cfg.qos)
loop:
	for !c.lost.Load() {
		if !pace.wait(deadline, end) {
			break loop
		}
		select {
		case window <- struct{}{}:
		case <-end:
			break loop
		}
		select {
		case <-end:
			<-window
			break loop
		default:
		}
		p := pending{start: time.Now()}
		p.tok = c.cl.Publish(c.topic, qos, false, payload)
		st.sent.Add(1)
		queue <- p
	}
	close(queue)
	// Outstanding acks get drainTimeout, not the full per-publish timeout,
	// so that the run stays bounded.
	select {
	case <-done:
		c.lat, c.last = lat, last
	case <-time.After(cfg.drainTimeout):
		// The waiter ends by itself at its own per-publish timeout; its
		// latencies are left out rather than read concurrently.
		st.fail(&st.timeouts, fmt.Errorf("%s: acks still outstanding %v after the end", c.id, cfg.drainTimeout))
	}
}

// makePayload returns size printable bytes, different per client so that
// compression further down sees something like real traffic.
func makePayload(size, seed int) []byte {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, size)
	x := uint32(seed)*2654435761 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = alphabet[x%uint32(len(alphabet))]
	}
	return b
}

func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func printHuman(r result) {
	fmt.Printf("broker            %s\n", r.Broker)
	fmt.Printf("clients connected %d/%d (still connected at end: %d)\n", r.Connected, r.Clients, r.ConnectedEnd)
	if r.Mode == "idle" {
		fmt.Printf("held idle         %.1f s\n", r.Seconds)
	} else if r.Mode == "receipts" {
		fmt.Printf("load              payments qos=1 size=%dB awaiting receipt/client=%d rate=%s\n", r.Size, r.Inflight, rateStr(r.Rate))
		fmt.Printf("payments          sent %d, receipts matched %d in %.2f s (unmatched receipts %d)\n", r.Sent, r.Acked, r.Seconds, r.Unmatched)
		fmt.Printf("receipts/s        %.0f\n", r.AckedPerSec)
		fmt.Printf("round trip ms     p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n", r.P50ms, r.P90ms, r.P99ms, r.Maxms)
	} else {
		fmt.Printf("load              qos=%d size=%dB inflight/client=%d rate=%s\n", r.QoS, r.Size, r.Inflight, rateStr(r.Rate))
		fmt.Printf("messages          sent %d, acked %d in %.2f s\n", r.Sent, r.Acked, r.Seconds)
		fmt.Printf("acked msg/s       %.0f\n", r.AckedPerSec)
		fmt.Printf("latency ms        p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n", r.P50ms, r.P90ms, r.P99ms, r.Maxms)
	}
	fmt.Printf("errors            %d (connect %d, connections lost %d, timeouts %d)\n", r.Errors, r.ConnectErrs, r.Lost, r.Timeouts)
	if r.FirstError != "" {
		fmt.Printf("first error       %s\n", r.FirstError)
	}
}

func rateStr(r float64) string {
	if r == 0 {
		return "unlimited"
	}
	return strconv.FormatFloat(r, 'f', -1, 64) + "/s"
}

// pacer spaces one client's sends at its share of the total rate; clients
// start spread over one interval so that a rate limit does not send in
// bursts. With no rate it never waits.
type pacer struct {
	interval time.Duration
	next     time.Time
}

func newPacer(cfg config, idx int, start time.Time) *pacer {
	p := &pacer{next: start}
	if cfg.rate > 0 {
		p.interval = time.Duration(float64(time.Second) * float64(cfg.clients) / cfg.rate)
		p.next = start.Add(p.interval * time.Duration(idx) / time.Duration(cfg.clients))
	}
	return p
}

// wait blocks until the next send is due; false once that is past the
// deadline or end is closed.
func (p *pacer) wait(deadline time.Time, end <-chan struct{}) bool {
	if p.interval == 0 {
		return true
	}
	if p.next.After(deadline) {
		return false
	}
	if d := time.Until(p.next); d > 0 {
		select {
		case <-time.After(d):
		case <-end:
			return false
		}
	}
	p.next = p.next.Add(p.interval)
	return true
}
