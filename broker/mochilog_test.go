package broker

import (
	"bytes"
	"encoding/base64"
	"log/slog"
	"strings"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// mochi's log records carry no payload, topic or will, and those naming a
// client come at most once a minute per client and message.
func TestMochiLogRedactsAndLimits(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		var buf bytes.Buffer
		var h slog.Handler = slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})
		if format == "json" {
			h = slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})
		}
		log := slog.New(newMochiLog(h)).With("component", "mqtt")
		card := "4111111111111111"
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 7,
			TopicName: "terminals/term-9/payments/" + card, Payload: []byte(`{"pan":"` + card + `"}`)}
		for i := 0; i < 50; i++ {
			log.Warn("error processing packet", "client", "term-1", "pk", pk)
			log.Debug("failed publishing packet", "client", "term-1", "packet", &pk)
		}
		log.Warn("error processing packet", "client", "term-2", "pk", pk)
		log.Error("parse will error", "will", mqtt.Will{TopicName: "t/" + card, Payload: []byte(card)})
		out := buf.String()
		for _, leak := range []string{card, base64.StdEncoding.EncodeToString(pk.Payload)[:12], "52 49 49 49"} {
			if strings.Contains(out, leak) {
				t.Fatalf("%s: the log carries %q:\n%s", format, leak, out)
			}
		}
		if n := strings.Count(out, "error processing packet"); n != 2 {
			t.Fatalf("%s: %d records of one client's refusals, want 1 per client:\n%s", format, n, out)
		}
		if !strings.Contains(out, "Publish id=7 qos=1") || !strings.Contains(out, "payload_bytes=") {
			t.Fatalf("%s: no packet summary:\n%s", format, out)
		}
	}
}
