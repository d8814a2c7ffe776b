package main

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func newTestCluster(t *testing.T, dir string, topics ...string) []string {
	t.Helper()
	c, err := start(options{addr: "127.0.0.1:0", dataDir: dir, partitions: 2, topics: topics, logLevel: kfake.LogLevelNone})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

// TestDataSurvivesRestart is the point of devkafka: `make run` twice keeps
// what the gateway sent, and topics added to -topics later appear.
func TestDataSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c1, err := start(options{addr: "127.0.0.1:0", dataDir: dir, partitions: 2, topics: []string{"payments"}})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c1.ListenAddrs()...), kgo.DefaultProduceTopic("payments"))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"a", "b", "c"} {
		r := &kgo.Record{Key: []byte("k"), Value: []byte(v), Headers: []kgo.RecordHeader{{Key: "h", Value: []byte(v)}}}
		if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	cl.Close()
	c1.Close()

	addrs := newTestCluster(t, dir, "payments", "added-later")
	cons, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.ConsumeTopics("payments"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	var got []string
	for len(got) < 3 {
		fs := cons.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("after restart got %v, want a b c: %v", got, err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			if string(r.Key) != "k" || len(r.Headers) != 1 || string(r.Headers[0].Value) != string(r.Value) {
				t.Errorf("record changed across restart: %+v", r)
			}
			got = append(got, string(r.Value))
		})
	}
	if len(got) != 3 || got[0] != "a" || got[2] != "c" {
		t.Fatalf("got %v, want [a b c]", got)
	}

	// The topic that was not there before the restart exists now, with the
	// partition count asked for (asked without auto-creation).
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr("added-later")
	req.Topics = append(req.Topics, rt)
	req.AllowAutoTopicCreation = false
	resp, err := req.RequestWith(ctx, cons)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Topics) != 1 || resp.Topics[0].ErrorCode != 0 || len(resp.Topics[0].Partitions) != 2 {
		t.Fatalf("topic added-later after restart: %+v", resp.Topics)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-addr", "nohostport"}, {"-port", "70000"}, {"-partitions", "0"}, {"-log-level", "loud"}, {"extra"},
	} {
		if err := run(args); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}
