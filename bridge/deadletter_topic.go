package bridge

import (
	"strconv"
	"sync"

	"github.com/IBM/sarama"

	"github.com/edgegw/gateway/buffer"
)

// kafka.dead_letter_topic: records set aside are also produced there, best
// effort (the dead-letter store is what counts; this is a copy for the
// central side). A record too large for Kafka goes with an empty value and
// its size in a header. The copies go from one background goroutine with
// its own producer, through a bounded queue: a full queue or a failed send
// drops the copy (logged), never the drain.

const deadLetterQueue = 1024

type dlqSender struct {
	mu     sync.Mutex
	ch     chan *sarama.ProducerMessage
	done   chan struct{}
	closed bool
}

func (b *Bridge) produceDeadLetters(recs []buffer.Record, reason string) {
	topic := b.opts.Kafka.DeadLetterTopic
	if topic == "" {
		return
	}
	d := &b.dlq
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	if d.ch == nil {
		d.ch = make(chan *sarama.ProducerMessage, deadLetterQueue)
		d.done = make(chan struct{})
		go b.sendDeadLetters(d)
	}
	limit := int(b.maxMessageBytes())
	for i := range recs {
		m := b.message(&recs[i])
		m.Topic = topic
		m.Headers = append(m.Headers,
			sarama.RecordHeader{Key: []byte("gw.dead_letter.reason"), Value: []byte(reason)},
			sarama.RecordHeader{Key: []byte("gw.dead_letter.topic"), Value: []byte(recs[i].KafkaTopic)},
			sarama.RecordHeader{Key: []byte("gw.dead_letter.size"), Value: strconv.AppendInt(nil, int64(len(recs[i].Payload)), 10)})
		if m.ByteSize(2) > limit {
			m.Value = sarama.ByteEncoder{}
		}
		select {
		case d.ch <- m:
		default:
			b.logs.Warn(b.log, "dlq-full", "dead-letter topic queue full; the copy is dropped (the record stays in the dead-letter store)", "topic", topic)
		}
	}
}

func (b *Bridge) sendDeadLetters(d *dlqSender) {
	defer close(d.done)
	cfg := *b.base
	cfg.Producer.Transaction.ID = ""
	cfg.Producer.Idempotent = false
	cfg.Net.MaxOpenRequests = 5
	cfg.Producer.Retry.Max = 3
	cfg.Producer.Return.Successes = true
	var prod sarama.SyncProducer
	defer func() {
		if prod != nil {
			prod.Close()
		}
	}()
	for m := range d.ch {
		if prod == nil {
			p, err := sarama.NewSyncProducer(b.opts.Kafka.Brokers, &cfg)
			if err != nil {
				b.logs.Warn(b.log, "dlq-connect", "dead-letter topic: cannot connect; copies are dropped until it can (the records stay in the dead-letter store)", "error", err)
				continue
			}
			prod = p
		}
		if _, _, err := prod.SendMessage(m); err != nil {
			b.logs.Warn(b.log, "dlq-send", "dead-letter topic: a copy could not be produced (the record stays in the dead-letter store)", "topic", m.Topic, "error", err)
		}
	}
}

// closeDeadLetters stops the sender after what is queued.
func (b *Bridge) closeDeadLetters() {
	d := &b.dlq
	d.mu.Lock()
	already := d.closed
	d.closed = true
	ch, done := d.ch, d.done
	d.mu.Unlock()
	if ch != nil && !already {
		close(ch)
		<-done
	}
}
