package main

// The -receipts mode: each terminal subscribes to its own receipts topic and
// sends payments (QoS 1) to terminals/<id>/payments/<n> at its share of
// -rate; the payment processor (cmd/payproc) answers each with a receipt
// that the gateway delivers back to the same client. A payment is a JSON
// document whose "id" is unique per run; payproc embeds the payment in the
// receipt ({"payment": {...}}), which is how a receipt is matched to its
// payment with MQTT 3.1.1 too. The latency reported is payment publish ->
// receipt received.

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// payment is what a terminal publishes; Pad brings it to about -size bytes.
type payment struct {
	ID     string `json:"id"`
	Amount int    `json:"amount_cents"`
	Pad    string `json:"pad,omitempty"`
}

// receiptBody is the part of payproc's receipt that loadgen reads.
type receiptBody struct {
	Payment struct {
		ID string `json:"id"`
	} `json:"payment"`
}

// rtState is one terminal's outstanding payments, keyed by payment id.
type rtState struct {
	mu      sync.Mutex
	waiting map[string]time.Time
	lat     []time.Duration
	last    time.Time
	window  chan struct{} // one slot per payment awaiting its receipt
}

// receiptsStats are the run-wide counters of the receipts mode.
type receiptsStats struct {
	receipts, unmatched atomic.Int64
}

// subscribeReceipts subscribes c to its receipts topic; receipts arrive in
// handle.
func (c *client) subscribeReceipts(cfg config, st *stats, rs *receiptsStats) (*rtState, error) {
	s := &rtState{waiting: map[string]time.Time{}, window: make(chan struct{}, cfg.inflight)}
	topic := strings.ReplaceAll(cfg.receiptsTopic, "{client}", c.id)
	tok := c.cl.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		now := time.Now()
		var body receiptBody
		_ = json.Unmarshal(m.Payload(), &body)
		s.mu.Lock()
		t0, ok := s.waiting[body.Payment.ID]
		if ok {
			delete(s.waiting, body.Payment.ID)
			s.lat = append(s.lat, now.Sub(t0))
			s.last = now
		}
		s.mu.Unlock()
		if !ok {
			// A receipt for a payment of an earlier run, a duplicate, or one
			// already given up on.
			rs.unmatched.Add(1)
			return
		}
		rs.receipts.Add(1)
		st.acked.Add(1)
		<-s.window
	})
	if !tok.WaitTimeout(cfg.timeout) {
		return nil, fmt.Errorf("subscribe %s: timeout", topic)
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", topic, err)
	}
	if code := tok.(*mqtt.SubscribeToken).Result()[topic]; code >= 0x80 {
		return nil, fmt.Errorf("subscribe %s: refused (%#x)", topic, code)
	}
	return s, nil
}

// payments sends payments until the deadline (at most cfg.inflight awaiting
// their receipts), then waits up to drainTimeout for the outstanding ones.
func (c *client) payments(cfg config, st *stats, s *rtState, runID string, start, deadline time.Time, end <-chan struct{}) {
	pace := newPacer(cfg, c.idx, start)
	pad := string(makePayload(max(cfg.size-60, 0), c.idx))
loop:
	for n := 0; !c.lost.Load(); n++ {
		if !pace.wait(deadline, end) {
			break loop
		}
		select {
		case s.window <- struct{}{}:
		case <-end:
			break loop
		}
		id := runID + "-" + c.id + "-" + strconv.Itoa(n)
		body, _ := json.Marshal(payment{ID: id, Amount: 100 + n%900, Pad: pad})
		topic := strings.NewReplacer("{client}", c.id, "{seq}", strconv.Itoa(n)).Replace(cfg.paymentsTopic)
		s.mu.Lock()
		s.waiting[id] = time.Now()
		s.mu.Unlock()
		tok := c.cl.Publish(topic, 1, false, body)
		st.sent.Add(1)
		go func() {
			// The PUBACK only says the gateway stored it; the receipt
			// completes the round trip. A failed publish frees its slot.
			if !tok.WaitTimeout(cfg.timeout) || tok.Error() != nil {
				s.mu.Lock()
				_, still := s.waiting[id]
				delete(s.waiting, id)
				s.mu.Unlock()
				if still {
					err := tok.Error()
					if err == nil {
						err = fmt.Errorf("no PUBACK within %v", cfg.timeout)
					}
					st.fail(&st.errors, fmt.Errorf("%s: payment: %w", c.id, err))
					<-s.window
				}
			}
		}()
	}
	// Wait for the receipts still outstanding, bounded.
	limit := time.Now().Add(cfg.drainTimeout)
	for time.Now().Before(limit) {
		s.mu.Lock()
		n := len(s.waiting)
		s.mu.Unlock()
		if n == 0 || c.lost.Load() {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.mu.Lock()
	if n := len(s.waiting); n > 0 {
		st.timeouts.Add(int64(n))
		st.fail(&st.errors, fmt.Errorf("%s: %d receipts not received %v after the end", c.id, n, cfg.drainTimeout))
	}
	c.lat, c.last = append([]time.Duration(nil), s.lat...), s.last
	s.mu.Unlock()
}
