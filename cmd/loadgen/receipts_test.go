package main

import (
	"encoding/json"
	"net"
	"strings"
	"testing"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// startAnsweringBroker runs a mochi broker whose inline client plays the
// gateway plus cmd/payproc: each payment on terminals/<id>/payments/<n> is
// answered on terminals/<id>/receipts with payproc's receipt shape (the
// payment embedded under "payment").
func startAnsweringBroker(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := mochi.New(&mochi.Options{InlineClient: true})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddListener(listeners.NewNet("t", ln)); err != nil {
		t.Fatal(err)
	}
	err = srv.Subscribe("terminals/+/payments/#", 1, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
		dev := strings.Split(pk.TopicName, "/")[1]
		body, _ := json.Marshal(map[string]any{"status": "approved", "payment": json.RawMessage(pk.Payload)})
		_ = srv.Publish("terminals/"+dev+"/receipts", body, false, 1)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return "tcp://" + ln.Addr().String()
}

// -receipts: every payment is matched to its receipt, percentiles in order.
func TestReceiptsModeMatchesEveryPayment(t *testing.T) {
	url := startAnsweringBroker(t)
	cfg := testConfig(t, "-broker", url, "-receipts", "-clients", "4", "-inflight", "3",
		"-rate", "400", "-duration", "500ms", "-size", "120")
	res := run(cfg)
	if res.Mode != "receipts" || res.Connected != 4 || res.Errors != 0 {
		t.Fatalf("mode %s connected %d errors %d (%s)", res.Mode, res.Connected, res.Errors, res.FirstError)
	}
	if res.Sent == 0 || res.Acked != res.Sent || res.Unmatched != 0 {
		t.Fatalf("sent %d, receipts matched %d, unmatched %d", res.Sent, res.Acked, res.Unmatched)
	}
	if res.P50ms <= 0 || res.P50ms > res.P99ms || res.P99ms > res.Maxms {
		t.Fatalf("percentiles out of order: %+v", res)
	}
}

func TestReceiptsAndIdleExclusive(t *testing.T) {
	if _, err := parseFlags([]string{"-receipts", "-idle"}); err == nil {
		t.Fatal("-receipts -idle accepted")
	}
}
