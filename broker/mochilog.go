package broker

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/gateway/internal/logonce"
)

// mochiLog is the handler of mochi's logger. mochi v2.7.9 logs whole
// packets (payload included) with some records, one per refused packet: a
// 3.1.1 publish to a denied topic is logged at warning level with its
// payload, so 50 publishes wrote 16 MB of log in 0.8 s, card data included,
// and logs are flash wear too. Here a packet or will in a record is
// replaced by a summary without its payload or topic, and the records that
// name a client are rate-limited per client and message (once a minute,
// then with how many were left out).
type mochiLog struct {
	next  slog.Handler
	every *logonce.Every
}

func newMochiLog(next slog.Handler) *mochiLog {
	return &mochiLog{next: next, every: &logonce.Every{Interval: time.Minute, MaxKeys: 4096}}
}

func (h *mochiLog) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h *mochiLog) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	client := ""
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "client" {
			client = a.Value.String()
		}
		out.AddAttrs(slog.Attr{Key: a.Key, Value: redactValue(a.Value)})
		return true
	})
	if client != "" {
		skipped, ok := h.every.Allow(client+"\x00"+r.Message, r.Time)
		if !ok {
			return nil
		}
		if skipped > 0 {
			out.AddAttrs(slog.Int("suppressed", skipped))
		}
	}
	return h.next.Handle(ctx, out)
}

func (h *mochiLog) WithAttrs(as []slog.Attr) slog.Handler {
	red := make([]slog.Attr, len(as))
	for i, a := range as {
		red[i] = slog.Attr{Key: a.Key, Value: redactValue(a.Value)}
	}
	return &mochiLog{next: h.next.WithAttrs(red), every: h.every}
}

func (h *mochiLog) WithGroup(name string) slog.Handler {
	return &mochiLog{next: h.next.WithGroup(name), every: h.every}
}

// redactValue replaces a packet or a will by a summary that carries no
// payload, topic or property values.
func redactValue(v slog.Value) slog.Value {
	if v.Kind() != slog.KindAny {
		return v
	}
	switch x := v.Any().(type) {
	case packets.Packet:
		return slog.StringValue(packetSummary(&x))
	case *packets.Packet:
		if x == nil {
			return v
		}
		return slog.StringValue(packetSummary(x))
	case mqtt.Will:
		return slog.StringValue(fmt.Sprintf("will qos=%d retain=%v topic_bytes=%d payload_bytes=%d", x.Qos, x.Retain, len(x.TopicName), len(x.Payload)))
	case []byte:
		return slog.StringValue(fmt.Sprintf("%d bytes", len(x)))
	}
	return v
}

func packetSummary(pk *packets.Packet) string {
	name, ok := packets.PacketNames[pk.FixedHeader.Type]
	if !ok {
		name = "packet"
	}
	return fmt.Sprintf("%s id=%d qos=%d retain=%v topic_bytes=%d payload_bytes=%d", name, pk.PacketID,
		pk.FixedHeader.Qos, pk.FixedHeader.Retain, len(pk.TopicName), len(pk.Payload))
}
