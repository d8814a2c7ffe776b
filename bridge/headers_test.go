package bridge

import (
	"testing"

	"github.com/edgegw/gateway/buffer"
)

// A record buffered by a release that still copied user properties of
// reserved names (issue 23) goes out with exactly one of each header the
// bridge sets, its own; the record's other headers follow in order.
func TestRecordCarriesOneOfEachGatewayHeader(t *testing.T) {
	b := &Bridge{opts: Options{GatewayID: gwID}, buf: openBuffer(t)}
	rec := &buffer.Record{KafkaTopic: "payments", MQTTTopic: "terminals/t1/payments/1", ClientID: "t1", Seq: 7,
		Headers: []buffer.Header{
			{Key: "mqtt.client_id", Value: []byte("t2")}, {Key: "gw.id", Value: []byte("other")}, {Key: "shop", Value: []byte("42")},
			{Key: "gw.seq", Value: []byte("1")}, {Key: "gw.epoch", Value: []byte("0")}, {Key: "mqtt.topic", Value: []byte("x")},
			{Key: "mqtt.correlation_data", Value: []byte("cd")},
		}}
	m := b.message(rec)
	var got []string
	for _, h := range m.Headers {
		got = append(got, string(h.Key)+"="+string(h.Value))
	}
	want := []string{"mqtt.topic=terminals/t1/payments/1", "mqtt.client_id=t1", "gw.id=" + gwID, "gw.seq=7",
		"gw.epoch=" + b.buf.Epoch(), "shop=42", "mqtt.correlation_data=cd"}
	if len(got) != len(want) {
		t.Fatalf("headers %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("headers %q, want %q", got, want)
		}
	}
}
