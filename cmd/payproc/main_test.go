package main

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/edgegw/gateway/internal/testkit"
)

// A payment as the gateway writes it is answered with a receipt keyed by the
// terminal on receipts.<gw.id>, carrying the correlation data back.
func TestAnswersPayments(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(1, "payments", "receipts.gw-7"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, slog.New(slog.DiscardHandler), k.Addrs, "payments", "receipts.{gateway_id}", "payproc-test")
	}()
	defer func() { cancel(); <-done }()

	prod, err := kgo.NewClient(kgo.SeedBrokers(k.Addrs...))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	pay := &kgo.Record{Topic: "payments", Key: []byte("term-1"), Value: []byte(`{"amount":1200}`), Headers: []kgo.RecordHeader{
		{Key: "mqtt.client_id", Value: []byte("term-1")}, {Key: "gw.id", Value: []byte("gw-7")},
		{Key: "gw.seq", Value: []byte("42")}, {Key: "mqtt.correlation_data", Value: []byte{1, 2, 3}},
	}}
	if err := prod.ProduceSync(context.Background(), pay).FirstErr(); err != nil {
		t.Fatal(err)
	}
	recs := testkit.Consume(t, k.Addrs, []string{"receipts.gw-7"}).WaitN(t, 1, 30*time.Second)
	r := recs[0]
	if string(r.Key) != "term-1" {
		t.Fatalf("key %q", r.Key)
	}
	var cd []byte
	for _, h := range r.Headers {
		if h.Key == "mqtt.correlation_data" {
			cd = h.Value
		}
	}
	if string(cd) != "\x01\x02\x03" {
		t.Fatalf("correlation data %q", cd)
	}
}
