// Command receiptbench measures the receipts downlink of a running gateway
// (issue 3's figures; bench/receipts.sh runs it): it produces receipts to the
// gateway's receipts topic with a Kafka client and receives them as the
// terminals (paho, MQTT 3.1.1, QoS 1 subscriptions).
//
//	-mode online:  all -devices connected and subscribed; -per-device
//	               receipts each are produced as fast as Kafka takes them;
//	               reported: receipts delivered per second, from the first
//	               produce to the last receipt received.
//	-mode offline: the devices subscribe with persistent sessions and go
//	               offline; the receipts are produced and stored by the
//	               gateway (polled on /status); then all devices reconnect at
//	               once; reported: seconds from the reconnect to the last
//	               receipt received.
//
// Each receipt's payload is "<device>/<i>"; duplicates and receipts out of
// order per device are counted. One JSON line is printed with -json.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/twmb/franz-go/pkg/kgo"
)

type config struct {
	broker, kafka, topic, admin, prefix, mode string
	devices, perDevice, size, connectPar      int
	timeout                                   time.Duration
	jsonOut                                   bool
}

// result is the -json output.
type result struct {
	Mode           string  `json:"mode"`
	Devices        int     `json:"devices"`
	Receipts       int     `json:"receipts"`
	Delivered      int64   `json:"delivered"`
	Duplicates     int64   `json:"duplicates"`
	OutOfOrder     int64   `json:"out_of_order"`
	ProduceSeconds float64 `json:"produce_seconds"`
	StoreSeconds   float64 `json:"store_seconds,omitempty"`   // offline: produce start -> all stored
	ConnectSeconds float64 `json:"connect_seconds,omitempty"` // offline: reconnect start -> all connected
	Seconds        float64 `json:"seconds"`                   // online: produce start -> last receipt; offline: reconnect start -> last receipt
	PerSecond      float64 `json:"receipts_per_s"`            // delivered / seconds
	Complete       bool    `json:"complete"`                  // every receipt arrived before -timeout
	Error          string  `json:"error,omitempty"`
}

func main() {
	var c config
	flag.StringVar(&c.broker, "broker", "tcp://127.0.0.1:1883", "gateway MQTT URL")
	flag.StringVar(&c.kafka, "kafka", "127.0.0.1:9092", "Kafka bootstrap broker")
	flag.StringVar(&c.topic, "topic", "receipts.edge-01", "the gateway's receipts topic")
	flag.StringVar(&c.admin, "admin", "127.0.0.1:9100", "gateway admin address (offline mode polls /status)")
	flag.StringVar(&c.prefix, "client-prefix", "rb-", "device id prefix (id = prefix + index)")
	flag.StringVar(&c.mode, "mode", "online", "online | offline")
	flag.IntVar(&c.devices, "devices", 1000, "number of terminals")
	flag.IntVar(&c.perDevice, "per-device", 100, "receipts per terminal")
	flag.IntVar(&c.size, "size", 200, "receipt payload bytes (at least the \"<device>/<i>\" label)")
	flag.IntVar(&c.connectPar, "connect-parallel", 500, "connections opened at the same time")
	flag.DurationVar(&c.timeout, "timeout", 5*time.Minute, "bound on the whole measurement")
	flag.BoolVar(&c.jsonOut, "json", false, "print one JSON line")
	flag.Parse()
	if c.mode != "online" && c.mode != "offline" {
		fmt.Fprintln(os.Stderr, "receiptbench: -mode must be online or offline")
		os.Exit(2)
	}
	if c.devices < 1 || c.perDevice < 1 || c.connectPar < 1 {
		fmt.Fprintln(os.Stderr, "receiptbench: -devices, -per-device and -connect-parallel must be at least 1")
		os.Exit(2)
	}
	res, err := run(c)
	if err != nil {
		res.Error = err.Error()
	}
	if c.jsonOut {
		b, _ := json.Marshal(res)
		fmt.Println(string(b))
	} else {
		fmt.Printf("mode %s: %d devices, %d receipts; delivered %d (duplicates %d, out of order %d) in %.3f s = %.0f receipts/s; produce %.3f s",
			res.Mode, res.Devices, res.Receipts, res.Delivered, res.Duplicates, res.OutOfOrder, res.Seconds, res.PerSecond, res.ProduceSeconds)
		if res.Mode == "offline" {
			fmt.Printf(", stored %.3f s, reconnect of all %.3f s", res.StoreSeconds, res.ConnectSeconds)
		}
		fmt.Println()
		if res.Error != "" {
			fmt.Println("error:", res.Error)
		}
	}
	if err != nil || !res.Complete {
		os.Exit(1)
	}
}

// tracker counts what the devices received.
type tracker struct {
	total     int64
	delivered atomic.Int64
	dups, ooo atomic.Int64
	last      atomic.Int64 // unix ns of the last new receipt
	done      chan struct{}
	doneOnce  sync.Once
	mu        sync.Mutex
	next      map[string]int // device -> next expected index
}

func (t *tracker) handle(_ mqtt.Client, m mqtt.Message) {
	p := m.Payload()
	if i := indexByte(p, ' '); i >= 0 {
		p = p[:i]
	}
	s := string(p)
	j := strings.LastIndexByte(s, '/')
	if j < 0 {
		return
	}
	dev := s[:j]
	n, err := strconv.Atoi(s[j+1:])
	if err != nil {
		return
	}
	t.mu.Lock()
	want := t.next[dev]
	switch {
	case n < want:
		t.mu.Unlock()
		t.dups.Add(1)
		return
	case n > want:
		t.ooo.Add(1)
	}
	t.next[dev] = n + 1
	t.mu.Unlock()
	t.last.Store(time.Now().UnixNano())
	if t.delivered.Add(1) == t.total {
		t.doneOnce.Do(func() { close(t.done) })
	}
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

func run(c config) (result, error) {
	res := result{Mode: c.mode, Devices: c.devices, Receipts: c.devices * c.perDevice}
	tr := &tracker{total: int64(res.Receipts), done: make(chan struct{}), next: map[string]int{}}
	ids := make([]string, c.devices)
	for i := range ids {
		ids[i] = c.prefix + strconv.Itoa(i)
	}
	deadline := time.Now().Add(c.timeout)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()

	kc, err := kgo.NewClient(kgo.SeedBrokers(c.kafka), kgo.DefaultProduceTopic(c.topic),
		kgo.ProducerLinger(5*time.Millisecond), kgo.MaxBufferedRecords(1<<20))
	if err != nil {
		return res, fmt.Errorf("kafka client: %w", err)
	}
	defer kc.Close()

	clean := c.mode == "online"
	clients, err := connectAll(c, ids, clean, tr, true)
	defer func() { disconnectAll(clients) }()
	if err != nil {
		return res, err
	}
	if c.mode == "offline" {
		disconnectAll(clients)
		clients = nil
	}

	t0 := time.Now()
	if err := produce(ctx, kc, c, ids); err != nil {
		return res, err
	}
	res.ProduceSeconds = time.Since(t0).Seconds()

	start := t0
	if c.mode == "offline" {
		if err := waitStored(ctx, c.admin, int64(res.Receipts)); err != nil {
			return res, err
		}
		res.StoreSeconds = time.Since(t0).Seconds()
		start = time.Now()
		// All at once: the sessions hold the subscriptions, so no subscribe.
		clients, err = connectAll(c, ids, false, tr, false)
		res.ConnectSeconds = time.Since(start).Seconds()
		if err != nil {
			return res, err
		}
	}
	select {
	case <-tr.done:
		res.Complete = true
	case <-ctx.Done():
	}
	end := time.Now()
	if l := tr.last.Load(); l > 0 && res.Complete {
		end = time.Unix(0, l)
	}
	res.Seconds = end.Sub(start).Seconds()
	res.Delivered, res.Duplicates, res.OutOfOrder = tr.delivered.Load(), tr.dups.Load(), tr.ooo.Load()
	if res.Seconds > 0 {
		res.PerSecond = float64(res.Delivered) / res.Seconds
	}
	if !res.Complete {
		return res, fmt.Errorf("after %v: %d of %d receipts delivered", c.timeout, res.Delivered, res.Receipts)
	}
	return res, nil
}

// produce sends receipt i of every device before receipt i+1 of any, keyed
// by device, and waits for Kafka's acknowledgement of all.
func produce(ctx context.Context, kc *kgo.Client, c config, ids []string) error {
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	for i := 0; i < c.perDevice; i++ {
		for _, id := range ids {
			v := []byte(id + "/" + strconv.Itoa(i))
			if pad := c.size - len(v) - 1; pad > 0 {
				v = append(v, ' ')
				v = append(v, strings.Repeat("r", pad)...)
			}
			wg.Add(1)
			kc.Produce(ctx, &kgo.Record{Key: []byte(id), Value: v}, func(_ *kgo.Record, err error) {
				if err != nil {
					firstErr.CompareAndSwap(nil, &err)
				}
				wg.Done()
			})
		}
	}
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return fmt.Errorf("produce: %w", *p)
	}
	return nil
}

// waitStored polls the gateway's /status until n receipts are pending.
func waitStored(ctx context.Context, admin string, n int64) error {
	for {
		if p, err := pendingTotal(admin); err == nil && p >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			p, _ := pendingTotal(admin)
			return fmt.Errorf("gateway stored %d of %d receipts before the timeout", p, n)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func pendingTotal(admin string) (int64, error) {
	resp, err := http.Get("http://" + admin + "/status")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var st struct {
		Receipts *struct {
			PendingTotal int64 `json:"pending_total"`
		} `json:"receipts"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return 0, err
	}
	if st.Receipts == nil {
		return 0, errors.New("no receipts in /status")
	}
	return st.Receipts.PendingTotal, nil
}

// connectAll connects the devices, connectPar at a time, subscribing each to
// its receipts topic when subscribe is set.
func connectAll(c config, ids []string, clean bool, tr *tracker, subscribe bool) ([]mqtt.Client, error) {
	out := make([]mqtt.Client, len(ids))
	sem := make(chan struct{}, c.connectPar)
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	for i, id := range ids {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			o := mqtt.NewClientOptions().AddBroker(c.broker).SetClientID(id).SetProtocolVersion(4).
				SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false).
				SetConnectTimeout(c.timeout).SetKeepAlive(5 * time.Minute).SetOrderMatters(false).
				SetDefaultPublishHandler(tr.handle)
			cl := mqtt.NewClient(o)
			fail := func(err error) { firstErr.CompareAndSwap(nil, &err) }
			if tok := cl.Connect(); !tok.WaitTimeout(c.timeout) || tok.Error() != nil {
				fail(fmt.Errorf("connect %s: %v", id, tok.Error()))
				return
			}
			out[i] = cl
			if subscribe {
				tok := cl.Subscribe("terminals/"+id+"/receipts", 1, nil)
				if !tok.WaitTimeout(c.timeout) || tok.Error() != nil {
					fail(fmt.Errorf("subscribe %s: %v", id, tok.Error()))
				}
			}
		}()
	}
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return out, *p
	}
	return out, nil
}

func disconnectAll(clients []mqtt.Client) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 500)
	for _, cl := range clients {
		if cl == nil {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() { defer wg.Done(); defer func() { <-sem }(); cl.Disconnect(50) }()
	}
	wg.Wait()
}
