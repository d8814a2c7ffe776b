package fleet

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/IBM/sarama"

	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/kafkaclient"
)

// The central side: commands an operator runs next to the Kafka cluster,
// with the same kafka: settings (TLS, SASL) as a box.

// ClientConfig is the sarama configuration of the central commands.
func ClientConfig(k config.Kafka) (*sarama.Config, error) {
	c, err := kafkaclient.Config(k)
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	c.Consumer.Return.Errors = true
	c.Consumer.MaxWaitTime = time.Second
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Return.Successes = true
	c.Producer.Partitioner = sarama.NewMurmur2Partitioner
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("fleet: kafka settings: %w", err)
	}
	return c, nil
}

// LatestVersion reads the partition of key on the config topic and returns
// the highest gw.config.version written for key (0 if none).
func LatestVersion(ctx context.Context, client sarama.Client, topic, key string) (uint64, error) {
	parts, err := client.Partitions(topic)
	if err != nil {
		return 0, fmt.Errorf("topic %s: %w", topic, err)
	}
	p := Partition(key, int32(len(parts)))
	var latest uint64
	err = readPartitions(ctx, client, topic, []int32{p}, 0, false, func(m *sarama.ConsumerMessage) {
		if string(m.Key) != key {
			return
		}
		if vs, ok := header(m, HeaderConfigVersion); ok {
			if v, err := ParseVersion(vs); err == nil && v > latest {
				latest = v
			}
		}
	})
	return latest, err
}

// PushResult says where an overlay went.
type PushResult struct {
	Partition int32
	Offset    int64
	Version   uint64
	KeyID     string
}

// Push signs value for key at version and produces it to the config topic
// with the partitioner the boxes read by. The caller has validated it.
func Push(client sarama.Client, topic, key string, version uint64, value []byte, priv ed25519.PrivateKey) (PushResult, error) {
	prod, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		return PushResult{}, fmt.Errorf("fleet: producer: %w", err)
	}
	defer prod.Close()
	kid := KeyID(priv.Public().(ed25519.PublicKey))
	msg := &sarama.ProducerMessage{
		Topic: topic,
		Key:   sarama.StringEncoder(key),
		Value: sarama.ByteEncoder(value),
		Headers: []sarama.RecordHeader{
			{Key: []byte(HeaderType), Value: []byte("config")},
			{Key: []byte(HeaderConfigVersion), Value: []byte(strconv.FormatUint(version, 10))},
			{Key: []byte(HeaderConfigSignature), Value: []byte(Sign(priv, key, version, value))},
			{Key: []byte(HeaderConfigKeyID), Value: []byte(kid)},
		},
	}
	p, off, err := prod.SendMessage(msg)
	if err != nil {
		return PushResult{}, fmt.Errorf("fleet: produce to %s: %w", topic, err)
	}
	return PushResult{Partition: p, Offset: off, Version: version, KeyID: kid}, nil
}

// readPartitions consumes partitions of topic from their start (or from
// the offset of since ago), calling fn per record in one goroutine. Without
// follow it returns once every partition was read to the end it had when
// the read began.
func readPartitions(ctx context.Context, client sarama.Client, topic string, parts []int32, since time.Duration, follow bool, fn func(*sarama.ConsumerMessage)) error {
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		return err
	}
	defer consumer.Close()
	ch := make(chan partMsg, 256)
	done := make(chan struct{})
	defer close(done)
	left := 0
	end := map[int32]int64{}
	for _, p := range parts {
		newest, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			return fmt.Errorf("topic %s partition %d: %w", topic, p, err)
		}
		start := sarama.OffsetOldest
		if since > 0 {
			off, err := client.GetOffset(topic, p, time.Now().Add(-since).UnixMilli())
			if err != nil {
				return fmt.Errorf("topic %s partition %d: %w", topic, p, err)
			}
			if off < 0 {
				off = newest // nothing that recent
			}
			start = off
		}
		oldest, err := client.GetOffset(topic, p, sarama.OffsetOldest)
		if err != nil {
			return fmt.Errorf("topic %s partition %d: %w", topic, p, err)
		}
		if start == sarama.OffsetOldest {
			start = oldest
		}
		if !follow && start >= newest {
			continue // nothing to read here
		}
		pc, err := consumer.ConsumePartition(topic, p, start)
		if err != nil {
			return fmt.Errorf("topic %s partition %d: %w", topic, p, err)
		}
		defer pc.AsyncClose()
		go forward(pc, ch, done)
		end[p] = newest
		left++
	}
	if !follow && left == 0 {
		return nil
	}
	// A compacted partition may lack its last offsets (tombstones gone):
	// without follow, a while with nothing new also ends the read.
	idle := time.NewTimer(5 * time.Second)
	defer idle.Stop()
	for {
		select {
		case <-ctx.Done():
			if follow {
				return nil
			}
			return ctx.Err()
		case <-idle.C:
			if !follow {
				return nil
			}
			idle.Reset(5 * time.Second)
		case pm := <-ch:
			if pm.err != nil {
				if !follow {
					return pm.err
				}
				continue
			}
			fn(pm.m)
			if !follow {
				idle.Reset(5 * time.Second)
				if e, ok := end[pm.m.Partition]; ok && pm.m.Offset+1 >= e {
					delete(end, pm.m.Partition)
					if left--; left == 0 {
						return nil
					}
				}
			}
		}
	}
}

// Box is the newest status record of one box, as the center sees it.
type Box struct {
	Record *Record
	// Received is when the reader saw it; Offset where it was.
	Received time.Time
	Offset   int64
	Bytes    int
}

// ReadStatus reads the status topic (all partitions; from since ago, or
// from the start when since is 0) and calls fn with each valid record, in
// one goroutine. With follow it goes on until ctx ends; without, it returns
// once it read what was there. Records that are not status records are
// counted in invalid.
func ReadStatus(ctx context.Context, client sarama.Client, topic string, since time.Duration, follow bool, fn func(Box), invalid func(error)) error {
	parts, err := client.Partitions(topic)
	if err != nil {
		return fmt.Errorf("topic %s: %w", topic, err)
	}
	return readPartitions(ctx, client, topic, parts, since, follow, func(m *sarama.ConsumerMessage) {
		if t, ok := header(m, HeaderType); ok && t != "status" {
			return // another kind of record on the topic
		}
		var r Record
		if err := json.Unmarshal(m.Value, &r); err != nil || r.Gateway == "" {
			if invalid != nil {
				if err == nil {
					err = errors.New("no gateway field")
				}
				invalid(fmt.Errorf("partition %d offset %d: %w", m.Partition, m.Offset, err))
			}
			return
		}
		fn(Box{Record: &r, Received: time.Now(), Offset: m.Offset, Bytes: len(m.Value)})
	})
}
