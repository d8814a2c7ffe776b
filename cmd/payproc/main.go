// Command payproc is a sample payment processor for `make run`: it consumes
// the payments topic and answers each payment with a receipt on the receipts
// topic of the gateway that sent it, so the full round trip terminal ->
// gateway -> Kafka -> payproc -> Kafka -> gateway -> terminal can be watched
// with mosquitto_sub.
//
//	payproc -brokers 127.0.0.1:9092 -payments payments -receipts 'receipts.{gateway_id}'
//
// The receipt's key is the paying terminal (header mqtt.client_id), its
// headers carry mqtt.correlation_data back unchanged (MQTT 5 request/response)
// and payment.offset; its value is a small JSON document.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "comma-separated Kafka bootstrap brokers")
	payments := flag.String("payments", "payments", "topic to consume payments from")
	receipts := flag.String("receipts", "receipts.{gateway_id}", "receipts topic; {gateway_id} is the payment's gw.id header")
	group := flag.String("group", "payproc", "consumer group id")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log, strings.Split(*brokers, ","), *payments, *receipts, *group); err != nil {
		log.Error("payproc", "error", err)
		os.Exit(1)
	}
}

// run answers payments until ctx ends. Offsets are committed only after the
// receipts of a fetch were acknowledged, so a crash re-answers (the gateway's
// terminal may see a receipt twice) but never skips a payment.
func run(ctx context.Context, log *slog.Logger, brokers []string, payments, receipts, group string) error {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(payments),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
		kgo.AllowAutoTopicCreation(),
		kgo.FetchMaxWait(100*time.Millisecond),
		kgo.ProducerLinger(0),
	)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	log.Info("payproc answering payments", "payments", payments, "receipts", receipts, "brokers", brokers)
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil
		}
		fs.EachError(func(t string, p int32, err error) {
			log.Warn("fetch", "topic", t, "partition", p, "error", err)
		})
		var out []*kgo.Record
		fs.EachRecord(func(r *kgo.Record) {
			if rec := answer(r, receipts); rec != nil {
				out = append(out, rec)
			}
		})
		if len(out) > 0 {
			if err := cl.ProduceSync(ctx, out...).FirstErr(); err != nil {
				if errors.Is(err, context.Canceled) {
					return nil
				}
				return fmt.Errorf("produce receipts: %w", err)
			}
			log.Info("answered payments", "count", len(out))
		}
		if err := cl.CommitUncommittedOffsets(ctx); err != nil && ctx.Err() == nil {
			log.Warn("commit", "error", err)
		}
	}
}

// answer builds the receipt for one payment, or nil if the payment names no
// terminal or gateway.
func answer(r *kgo.Record, topicTemplate string) *kgo.Record {
	h := map[string][]byte{}
	for _, x := range r.Headers {
		h[x.Key] = x.Value
	}
	client, gw := string(h["mqtt.client_id"]), string(h["gw.id"])
	if client == "" || gw == "" {
		return nil
	}
	body, _ := json.Marshal(map[string]any{
		"status":     "approved",
		"payment":    json.RawMessage(jsonOrString(r.Value)),
		"gw_seq":     string(h["gw.seq"]),
		"receipt_at": time.Now().UTC().Format(time.RFC3339Nano),
	})
	rec := &kgo.Record{
		Topic: strings.ReplaceAll(topicTemplate, "{gateway_id}", gw),
		Key:   []byte(client),
		Value: body,
		Headers: []kgo.RecordHeader{
			{Key: "payment.offset", Value: []byte(strconv.FormatInt(r.Offset, 10))},
		},
	}
	if cd, ok := h["mqtt.correlation_data"]; ok {
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: "mqtt.correlation_data", Value: cd})
	}
	return rec
}

// jsonOrString embeds a JSON payment as is and anything else as a string.
func jsonOrString(v []byte) []byte {
	if json.Valid(v) {
		return v
	}
	s, _ := json.Marshal(string(v))
	return s
}
