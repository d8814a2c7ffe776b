// Command kafkatail prints the records of a Kafka topic, one line each:
// partition/offset, key, headers and value. It is the Go fallback for
// `kcat -C` when kcat is not installed, for checking what the gateway sent.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "kafkatail:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("kafkatail", flag.ContinueOnError)
	brokers := fs.String("b", "127.0.0.1:9092", "comma-separated seed brokers")
	topic := fs.String("t", "payments", "topic to read")
	follow := fs.Bool("f", false, "keep following new records (default: exit once caught up)")
	idle := fs.Duration("idle", 2*time.Second, "without -f: exit after this long without a new record")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(*brokers, ",")...),
		kgo.ConsumeTopics(*topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	defer cl.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	n := 0
	for {
		pollCtx := ctx
		var cancel context.CancelFunc = func() {}
		if !*follow {
			pollCtx, cancel = context.WithTimeout(ctx, *idle)
		}
		fetches := cl.PollFetches(pollCtx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		for _, fe := range fetches.Errors() {
			if errors.Is(fe.Err, context.DeadlineExceeded) || errors.Is(fe.Err, context.Canceled) {
				if !*follow {
					fmt.Fprintf(os.Stderr, "kafkatail: %d records from %s\n", n, *topic)
					return nil
				}
				continue
			}
			return fmt.Errorf("fetch %s[%d]: %w", fe.Topic, fe.Partition, fe.Err)
		}
		fetches.EachRecord(func(r *kgo.Record) {
			n++
			var hs []string
			for _, h := range r.Headers {
				hs = append(hs, h.Key+"="+string(h.Value))
			}
			fmt.Printf("%d/%d %s key=%s headers=[%s] %s\n", r.Partition, r.Offset,
				r.Timestamp.Format(time.RFC3339Nano), r.Key, strings.Join(hs, ","), r.Value)
		})
	}
}
