package testkit

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Consumer reads topics from the start with a franz-go client and keeps
// everything it has seen, for assertions on what landed in Kafka (key, value,
// timestamp, headers, partition, offset).
type Consumer struct {
	cl *kgo.Client

	mu   sync.Mutex
	recs []*kgo.Record
}

// Consume starts reading topics from their first offset; the client is
// closed on t.Cleanup. Extra kgo options (SASL, TLS, isolation level) may be
// given.
func Consume(t testing.TB, addrs []string, topics []string, opts ...kgo.Opt) *Consumer {
	t.Helper()
	all := []kgo.Opt{
		kgo.SeedBrokers(addrs...),
		kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.MetadataMinAge(100 * time.Millisecond),
		kgo.FetchMaxWait(100 * time.Millisecond),
	}
	cl, err := kgo.NewClient(append(all, opts...)...)
	if err != nil {
		t.Fatalf("testkit: consumer: %v", err)
	}
	t.Cleanup(cl.Close)
	return &Consumer{cl: cl}
}

// Poll fetches what is available within wait and returns everything seen
// so far, in the order fetched (per partition: offset order).
func (c *Consumer) Poll(wait time.Duration) []*kgo.Record {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	fs := c.cl.PollFetches(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	fs.EachRecord(func(r *kgo.Record) { c.recs = append(c.recs, r) })
	return append([]*kgo.Record(nil), c.recs...)
}

// WaitN polls until at least n records were seen, failing the test after
// timeout, and returns all records seen.
func (c *Consumer) WaitN(t testing.TB, n int, timeout time.Duration) []*kgo.Record {
	t.Helper()
	var recs []*kgo.Record
	deadline := time.Now().Add(timeout)
	for {
		recs = c.Poll(200 * time.Millisecond)
		if len(recs) >= n {
			return recs
		}
		if time.Now().After(deadline) {
			t.Fatalf("testkit: after %v: %d records in Kafka, want at least %d", timeout, len(recs), n)
		}
	}
}

// ReadAll returns every record currently in topic, across all partitions,
// sorted by partition then offset. It reads up to the end offsets listed
// when it is called.
func ReadAll(t testing.TB, addrs []string, topic string, opts ...kgo.Opt) []*kgo.Record {
	t.Helper()
	recs, err := readAll(addrs, topic, opts...)
	if err != nil {
		t.Fatalf("testkit: read %s: %v", topic, err)
	}
	return recs
}

func readAll(addrs []string, topic string, opts ...kgo.Opt) ([]*kgo.Record, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(addrs...)}, opts...)...)
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	ends, err := endOffsets(ctx, admin, topic)
	if err != nil {
		return nil, err
	}
	start := map[int32]kgo.Offset{}
	want := 0
	for p, end := range ends {
		if end > 0 {
			start[p] = kgo.NewOffset().At(0)
			want++
		}
	}
	if want == 0 {
		return nil, nil
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(addrs...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: start}),
		kgo.FetchMaxWait(100 * time.Millisecond),
	}, opts...)...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	var out []*kgo.Record
	done := map[int32]bool{}
	for len(done) < want {
		// Transaction markers count in the end offset but are never
		// returned: a quiet round means what is left are markers.
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		fs := cl.PollFetches(pctx)
		pcancel()
		if ctx.Err() != nil {
			return out, fmt.Errorf("read %d of %d partitions to their end: %w", len(done), want, ctx.Err())
		}
		if fs.Empty() || pctx.Err() != nil && fs.NumRecords() == 0 {
			break
		}
		var ferr error
		fs.EachError(func(_ string, _ int32, err error) {
			if err != context.DeadlineExceeded {
				ferr = err
			}
		})
		if ferr != nil {
			return out, ferr
		}
		fs.EachPartition(func(fp kgo.FetchTopicPartition) {
			end := ends[fp.Partition]
			for _, r := range fp.Records {
				if r.Offset < end {
					out = append(out, r)
				}
			}
			if n := len(fp.Records); n > 0 && fp.Records[n-1].Offset+1 >= end {
				done[fp.Partition] = true
			}
		})
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Partition != out[j].Partition {
			return out[i].Partition < out[j].Partition
		}
		return out[i].Offset < out[j].Offset
	})
	return out, nil
}

// endOffsets lists the log end offset of each partition of topic.
func endOffsets(ctx context.Context, cl *kgo.Client, topic string) (map[int32]int64, error) {
	mreq := kmsg.NewPtrMetadataRequest()
	mt := kmsg.NewMetadataRequestTopic()
	mt.Topic = kmsg.StringPtr(topic)
	mreq.Topics = append(mreq.Topics, mt)
	mresp, err := mreq.RequestWith(ctx, cl)
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	if len(mresp.Topics) != 1 {
		return nil, fmt.Errorf("metadata: %d topics in answer", len(mresp.Topics))
	}
	if err := kerr.ErrorForCode(mresp.Topics[0].ErrorCode); err != nil {
		return nil, fmt.Errorf("metadata %s: %w", topic, err)
	}
	lreq := kmsg.NewPtrListOffsetsRequest()
	lt := kmsg.NewListOffsetsRequestTopic()
	lt.Topic = topic
	for _, p := range mresp.Topics[0].Partitions {
		lp := kmsg.NewListOffsetsRequestTopicPartition()
		lp.Partition = p.Partition
		lp.Timestamp = -1 // latest
		lt.Partitions = append(lt.Partitions, lp)
	}
	lreq.Topics = append(lreq.Topics, lt)
	lresp, err := lreq.RequestWith(ctx, cl)
	if err != nil {
		return nil, fmt.Errorf("list offsets: %w", err)
	}
	ends := map[int32]int64{}
	for _, t := range lresp.Topics {
		for _, p := range t.Partitions {
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
				return nil, fmt.Errorf("list offsets %s/%d: %w", topic, p.Partition, err)
			}
			ends[p.Partition] = p.Offset
		}
	}
	return ends, nil
}
