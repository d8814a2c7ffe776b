package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/edgegw/gateway/internal/rawmqtt"
	"github.com/edgegw/gateway/internal/testkit"
)

// Hostile terminals (issue 23): one logged-in terminal tries to take the
// box down, speak for another terminal or eat the box's memory. Each test
// plays the attack against the real binary and checks that only the
// attacker is affected.

// rawConnect logs in with rawmqtt and fails the test on refusal.
func rawConnect(t *testing.T, addr string, o rawmqtt.Options) *rawmqtt.Conn {
	t.Helper()
	c, err := rawmqtt.Connect(addr, o)
	if err != nil {
		t.Fatalf("connect %s: %v", o.ClientID, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// alive checks that the process still runs and that another terminal's
// payment is still acknowledged.
func (g *gatewayProc) alive(t *testing.T, id string) {
	t.Helper()
	select {
	case <-g.exited:
		t.Fatalf("the gateway process died:\n%s", tail(g.logs, 40))
	default:
	}
	c := rawConnect(t, g.mqttAddr, rawmqtt.Options{ClientID: id, Clean: true})
	defer c.Close()
	if err := c.Publish(1, false, 1, "terminals/"+id+"/payments/p1", nil, []byte("pay")); err != nil {
		t.Fatal(err)
	}
	body, err := c.ReadType(4, 20*time.Second)
	if err != nil || len(body) < 2 || binary.BigEndian.Uint16(body) != 1 || (len(body) > 2 && body[2] != 0) {
		t.Fatalf("%s's payment not acknowledged: %x %v", id, body, err)
	}
}

// Finding 1: an MQTT 5 SUBSCRIBE whose filter lacks its options byte panicked
// mochi v2.7.9's decoder and killed the process. Now the attacker alone is
// disconnected (0x81 malformed packet), counted, and the box keeps taking
// payments.
func TestHostileSubscribeWithoutOptionsByte(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()
	bystander := rawConnect(t, g.mqttAddr, rawmqtt.Options{ClientID: "term-2", Clean: true})

	for i := 0; i < 3; i++ {
		att := rawConnect(t, g.mqttAddr, rawmqtt.Options{ClientID: "term-1", Clean: true})
		body := binary.BigEndian.AppendUint16(nil, 7)
		body = append(body, 0) // no properties
		body = rawmqtt.AppendString(body, "terminals/term-1/receipts")
		// the options byte is missing
		if err := att.Send(0x82, body); err != nil {
			t.Fatal(err)
		}
		code, ended := att.Closed(10 * time.Second)
		if !ended {
			t.Fatal("the attacker's connection is still open")
		}
		if code != 0x81 {
			t.Errorf("attacker got DISCONNECT %#x, want 0x81 (malformed packet)", code)
		}
		g.alive(t, "term-3")
	}
	if n := g.metric("gateway_mqtt_malformed_packets_total"); n != 3 {
		t.Errorf("gateway_mqtt_malformed_packets_total %v, want 3", n)
	}
	// the bystander's connection was never touched
	if err := bystander.Publish(1, false, 9, "terminals/term-2/payments/p9", nil, []byte("pay")); err != nil {
		t.Fatal(err)
	}
	if _, err := bystander.ReadType(4, 20*time.Second); err != nil {
		t.Fatalf("bystander: %v", err)
	}
}

// metricSum adds up every series of a metric whose labels contain match
// (e.g. `reason="inflight_full"`; "" for all); -1 when there is none.
func (g *gatewayProc) metricSum(name, match string) float64 {
	g.t.Helper()
	resp, err := http.Get("http://" + g.admin + "/metrics")
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	sum, found := 0.0, false
	for _, m := range regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(name)+`(\{[^}]*\})? (\S+)$`).FindAllSubmatch(body, -1) {
		if match != "" && !regexp.MustCompile(regexp.QuoteMeta(match)).Match(m[1]) {
			continue
		}
		v, _ := strconv.ParseFloat(string(m[2]), 64)
		sum += v
		found = true
	}
	if !found {
		return -1
	}
	return sum
}

// Finding 2: a terminal could speak for another. MQTT 5 user properties
// named like the gateway's own headers (mqtt.client_id of another
// terminal, a forged gw.id or gw.seq) were copied after the gateway's: the
// record carried two of each, and a consumer taking the last one answered
// the wrong terminal or broke its idempotency key. Now the record carries
// exactly one of each gateway header, the gateway's; the client's reserved
// names are dropped and counted; other user properties pass as before.
func TestHostileReservedHeaderNames(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()
	att := rawConnect(t, g.mqttAddr, rawmqtt.Options{ClientID: "term-1", Clean: true})
	var props []byte
	for _, kv := range [][2]string{
		{"mqtt.client_id", "term-2"}, {"mqtt.correlation_data", "forged"}, {"mqtt.topic", "terminals/term-2/payments/x"},
		{"mqtt.response_topic", "terminals/term-2/receipts"}, {"gw.id", "other-gw"}, {"gw.seq", "1"}, {"gw.epoch", "0"},
		{"gw.possible_duplicate_of", "1"}, {"shop", "42"}, {"shop", "43"},
	} {
		props = append(props, rawmqtt.PropUser(kv[0], kv[1])...)
	}
	props = append(props, 0x09, 0, 3, 'c', 'd', '1') // correlation data "cd1"
	if err := att.Publish(1, false, 1, "terminals/term-1/payments/p1", props, []byte("pay")); err != nil {
		t.Fatal(err)
	}
	if _, err := att.ReadType(4, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	recs := testkit.Consume(t, kafka.Addrs, []string{"payments"}).WaitN(t, 1, 60*time.Second)
	got := map[string][]string{}
	for _, h := range recs[0].Headers {
		got[h.Key] = append(got[h.Key], string(h.Value))
	}
	for name, want := range map[string]string{
		"mqtt.client_id": "term-1", "mqtt.topic": "terminals/term-1/payments/p1", "gw.id": "e2e-gw",
		"mqtt.correlation_data": "cd1",
	} {
		if v := got[name]; len(v) != 1 || v[0] != want {
			t.Errorf("header %s: %q, want exactly [%q]", name, v, want)
		}
	}
	for _, name := range []string{"gw.seq", "gw.epoch"} {
		if v := got[name]; len(v) != 1 || v[0] == "0" {
			t.Errorf("header %s: %q, want exactly one, the gateway's", name, v)
		}
	}
	for _, name := range []string{"mqtt.response_topic", "gw.possible_duplicate_of"} {
		if v, ok := got[name]; ok {
			t.Errorf("header %s: %q, want none (the publish carried no response topic and is no retransmission)", name, v)
		}
	}
	if v := got["shop"]; len(v) != 2 || v[0] != "42" || v[1] != "43" {
		t.Errorf("user property shop: %q, want [42 43]", v)
	}
	if n := g.metric("gateway_ingest_user_properties_dropped_total"); n != 8 {
		t.Errorf("gateway_ingest_user_properties_dropped_total %v, want 8", n)
	}
}

// Finding 2, the receipts side: 3,000 made-up device ids made 3,002 outboxes,
// each kept for receipts.max_age. Receipts for more devices than
// receipts.max_devices, or more than receipts.max_pending_per_device for one,
// are dropped and counted; their offsets are committed; the devices under
// the bounds get theirs.
func TestHostileReceiptsForMadeUpDevices(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(1, receiptsTopic, "receipts.delivered", "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "receipts: {max_devices: 50, max_pending_per_device: 20}\n")
	g.start()
	for i := 0; i < 300; i++ {
		produceReceipts(t, kafka.Addrs, fmt.Sprintf("fake-%03d", i), 1)
	}
	produceReceipts(t, kafka.Addrs, "fake-000", 40)
	testkit.Eventually(t, 60*time.Second, func() bool {
		return g.metricSum("gateway_receipts_dropped_total", `reason="too_many_devices"`) == 250 &&
			g.metricSum("gateway_receipts_dropped_total", `reason="device_full"`) == 21
	}, "dropped too_many_devices %v device_full %v, want 250 and 21",
		g.metricSum("gateway_receipts_dropped_total", `reason="too_many_devices"`), g.metricSum("gateway_receipts_dropped_total", `reason="device_full"`))
	if p := g.receiptsPending(); p != 50-1+20 {
		t.Fatalf("pending %d, want %d", p, 50-1+20)
	}
	// a real terminal among the first 50 still gets its receipt
	var r receiver
	c := receiptClient(t, g.mqttAddr, "fake-001", true, &r)
	if tok := c.Subscribe("terminals/fake-001/receipts", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	testkit.Eventually(t, 30*time.Second, func() bool { return len(r.list()) == 1 }, "fake-001 got %d receipts", len(r.list()))
}

// Finding 3: a terminal subscribed to its own topic at QoS 1, never
// acknowledging deliveries and publishing on, wedged its session inside
// mochi (a read lock taken twice in Inflight.NextImmediate against the
// acker's Inflight.Set): its publishes stopped, every later CONNECT with its
// id hung, /readyz stayed 200 and SIGTERM did nothing. Now its deliveries
// stop at its window (counted), its publishes keep being acknowledged, it
// can reconnect, /readyz stays honest and the gateway stops at once.
func TestHostileUnackedOwnSubscriptionNeverWedges(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()
	att := rawConnect(t, g.mqttAddr, rawmqtt.Options{ClientID: "term-1", Clean: true,
		Properties: rawmqtt.PropUint16(0x21, 1000)}) // receive maximum 1000
	if err := att.Subscribe(1, 1, "terminals/term-1/telemetry/#"); err != nil {
		t.Fatal(err)
	}
	if _, err := att.ReadType(9, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	acks := make(chan uint16, 1024)
	go func() {
		for {
			typ, body, err := att.Read(time.Minute)
			if err != nil {
				close(acks)
				return
			}
			if typ == 4 && len(body) >= 2 { // PUBACKs of its publishes; deliveries are never acknowledged
				acks <- binary.BigEndian.Uint16(body)
			}
		}
	}()
	outstanding, sent, acked := 0, 0, 0
	end := time.Now().Add(12 * time.Second)
	for time.Now().Before(end) {
		for outstanding < 32 {
			sent++
			if err := att.Publish(1, false, uint16(sent%60000+1), "terminals/term-1/telemetry/x", nil, []byte("t")); err != nil {
				t.Fatalf("publish %d: %v (acked %d)", sent, err, acked)
			}
			outstanding++
		}
		select {
		case _, ok := <-acks:
			if !ok {
				t.Fatalf("connection ended after %d acknowledged", acked)
			}
			outstanding--
			acked++
		case <-time.After(5 * time.Second):
			t.Fatalf("the session stopped moving: %d sent, %d acknowledged, none for 5s", sent, acked)
		}
	}
	t.Logf("%d publishes acknowledged in 12s", acked)
	if n := g.metricSum("gateway_mqtt_deliveries_dropped_total", `reason="inflight_full"`); n <= 0 {
		t.Errorf("no delivery dropped for the full window (%v)", n)
	}
	// the same id logs in again (a takeover), at once
	again, err := rawmqtt.Connect(g.mqttAddr, rawmqtt.Options{ClientID: "term-1", Clean: true, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("reconnect as term-1: %v", err)
	}
	again.Close()
	resp, err := http.Get("http://" + g.admin + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/readyz: %v %v", resp, err)
	}
	resp.Body.Close()
	g.alive(t, "term-3")
	start := time.Now()
	if code := g.stop(); code != 0 {
		t.Errorf("exit code %d", code)
	}
	t.Logf("stopped in %v", time.Since(start))
}

// subscribe sends one SUBSCRIBE and returns the SUBACK's reason codes.
func subscribeCodes(t *testing.T, c *rawmqtt.Conn, pid uint16, timeout time.Duration, filters ...string) []byte {
	t.Helper()
	if err := c.Subscribe(pid, 1, filters...); err != nil {
		t.Fatal(err)
	}
	body, err := c.ReadType(9, timeout)
	if err != nil {
		t.Fatalf("SUBACK %d: %v", pid, err)
	}
	return body[3:] // packet id, empty properties
}

// Finding 5: a deep filter cost the broker time growing with the square of
// its depth under a lock every client shares; one 256 KiB SUBSCRIBE of 4 x
// 65,000 levels took over 80 s of CPU while another terminal's SUBSCRIBE
// waited. Now such filters are refused (0x8F) before mochi's topic tree
// sees them, and the bystander's SUBSCRIBE is answered as usual.
func TestHostileDeepFilters(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()
	att := rawConnect(t, g.mqttAddr, rawmqtt.Options{ClientID: "term-1", Clean: true})
	by := rawConnect(t, g.mqttAddr, rawmqtt.Options{ClientID: "term-2", Clean: true})
	deep := "terminals/term-1/" + strings.Repeat("/", 65000)
	start := time.Now()
	codes := subscribeCodes(t, att, 1, 60*time.Second, deep, deep+"a", deep+"b", deep+"c")
	t.Logf("SUBACK for 4 x 65,000 levels after %v", time.Since(start))
	for i, c := range codes {
		if c != 0x8F {
			t.Errorf("filter %d: SUBACK %#x, want 0x8F (topic filter invalid)", i, c)
		}
	}
	start = time.Now()
	if c := subscribeCodes(t, by, 1, 60*time.Second, "terminals/term-2/receipts"); len(c) != 1 || c[0] != 1 {
		t.Fatalf("bystander's SUBACK %x", c)
	}
	t.Logf("bystander's SUBACK after %v", time.Since(start))
	if n := g.metricSum("gateway_mqtt_subscriptions_refused_total", ""); n != 4 {
		t.Errorf("subscriptions refused %v, want 4", n)
	}
}

// Finding 8 (subscriptions): 40,000 subscriptions in one session held 177
// MB. Now the 101st is refused (0x97 quota exceeded) and the client keeps
// the 100 it has.
func TestHostileSubscriptionFlood(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()
	att := rawConnect(t, g.mqttAddr, rawmqtt.Options{ClientID: "term-1", Clean: true})
	granted, refused := 0, 0
	for batch := 0; batch < 100; batch++ { // 100 x 400 = 40,000 filters
		filters := make([]string, 400)
		for i := range filters {
			filters[i] = fmt.Sprintf("terminals/term-1/s/%d/%d", batch, i)
		}
		for _, c := range subscribeCodes(t, att, uint16(batch+1), 30*time.Second, filters...) {
			switch c {
			case 1:
				granted++
			case 0x97:
				refused++
			default:
				t.Fatalf("SUBACK code %#x", c)
			}
		}
	}
	if granted != 100 || refused != 39900 {
		t.Fatalf("%d granted, %d refused; want 100 and 39,900", granted, refused)
	}
	if n := g.metricSum("gateway_mqtt_subscriptions_refused_total", `reason="too_many"`); n != 39900 {
		t.Errorf("too_many refusals %v", n)
	}
	g.alive(t, "term-3")
}

// Finding 6: a retained publish with a 40 KB topic made a sessions.db key
// longer than bbolt allows; every later commit failed and other terminals'
// persistent sessions were lost across a restart. Now the topic is refused
// (0x90) and another terminal's persistent session survives a restart.
func TestHostileLongRetainedTopicKeepsOthersSessions(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()
	att := rawConnect(t, g.mqttAddr, rawmqtt.Options{ClientID: "term-1", Clean: true})
	long := "terminals/term-1/telemetry/" + strings.Repeat("x", 40000)
	if err := att.Publish(1, true, 1, long, nil, []byte("v")); err != nil {
		t.Fatal(err)
	}
	body, err := att.ReadType(4, 20*time.Second)
	if err != nil || len(body) < 3 || body[2] != 0x90 {
		t.Fatalf("retained publish with a 40 KB topic: PUBACK %x %v, want reason 0x90", body, err)
	}
	// term-2 makes a persistent session and subscribes
	exp := rawmqtt.PropUint32(0x11, 3600)
	c2 := rawConnect(t, g.mqttAddr, rawmqtt.Options{ClientID: "term-2", Properties: exp})
	if c := subscribeCodes(t, c2, 1, 10*time.Second, "terminals/term-2/receipts"); c[0] != 1 {
		t.Fatalf("SUBACK %x", c)
	}
	c2.Close() // a new session and a subscription are committed before CONNACK and SUBACK
	if code := g.stop(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if strings.Contains(g.logs.String(), "key too large") {
		t.Errorf("the session store logged a key too large")
	}
	g.start()
	c2 = rawConnect(t, g.mqttAddr, rawmqtt.Options{ClientID: "term-2", Properties: exp})
	if c2.Connack[0]&1 != 1 {
		t.Fatalf("term-2's session was lost across the restart (CONNACK %x)", c2.Connack)
	}
}

// Finding 4: 150 retained messages of 240 KB on a terminal's own topics took
// RSS from 26 to 217 MB and sessions.db to 58 MB, and came back after every
// restart. Now a terminal holds at most mqtt.max_retained_bytes_per_client
// (1 MiB): the rest is refused (0x97), counted, and after a restart the
// file and the memory hold no more than that.
func TestHostileRetainedFlood(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()
	att := rawConnect(t, g.mqttAddr, rawmqtt.Options{ClientID: "term-1", Clean: true})
	payload := bytes.Repeat([]byte("r"), 240_000)
	taken, refused := 0, 0
	for i := 0; i < 150; i++ {
		if err := att.Publish(1, true, uint16(i+1), fmt.Sprintf("terminals/term-1/telemetry/r%d", i), nil, payload); err != nil {
			t.Fatal(err)
		}
		body, err := att.ReadType(4, 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case len(body) == 2 || body[2] == 0:
			taken++
		case body[2] == 0x97:
			refused++
		default:
			t.Fatalf("PUBACK %x", body)
		}
	}
	if taken != 4 || refused != 146 {
		t.Fatalf("%d retained, %d refused; want 4 and 146 (1 MiB per client)", taken, refused)
	}
	if n := g.metricSum("gateway_ingest_refused_total", `reason="retained_bytes"`); n != 146 {
		t.Errorf("refused retained_bytes %v, want 146", n)
	}
	att.Close()
	g.stop()
	st, err := os.Stat(filepath.Join(g.dir, "data", "sessions.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sessions.db %d bytes", st.Size())
	if st.Size() > 8<<20 {
		t.Errorf("sessions.db is %d bytes after 1 MiB of retained messages", st.Size())
	}
	g.start()
	if n := g.metric("gateway_mqtt_retained_messages"); n != 4 {
		t.Errorf("gateway_mqtt_retained_messages %v after the restart, want 4", n)
	}
	g.alive(t, "term-3")
}

// Finding 11 (retained will): a retained will on a terminal's own receipts
// topic planted a "receipt" the terminal could not clear. Now such a will
// is refused at CONNECT (0x87), and so is a will on a topic where a publish
// would be refused (unrouted: reject).
func TestHostileRetainedWillOnReceiptsTopic(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()
	for _, c := range []struct {
		topic string
		code  byte
	}{
		{"terminals/term-1/receipts", 0x87},
		{"terminals/term-1/status", 0x90},
	} {
		_, err := rawmqtt.Connect(g.mqttAddr, rawmqtt.Options{ClientID: "term-1", Clean: true,
			Will: &rawmqtt.Will{Topic: c.topic, Payload: []byte(`{"approved":true}`), Retain: true, QoS: 1}})
		if !errors.Is(err, rawmqtt.ErrRefused) || !strings.Contains(err.Error(), fmt.Sprintf("%#x", c.code)) {
			t.Fatalf("retained will on %s: %v, want refused %#x", c.topic, err, c.code)
		}
	}
	// a will on a routed topic is taken
	c := rawConnect(t, g.mqttAddr, rawmqtt.Options{ClientID: "term-1", Clean: true,
		Will: &rawmqtt.Will{Topic: "terminals/term-1/telemetry/presence", Payload: []byte("offline"), Retain: true, QoS: 1}})
	c.Close()
}

// Finding 8 (connections before login): 10,000 silent TCP connections held
// 165 MB until their deadline. Now at most mqtt.max_pending_connections_per_address
// (256) from one address are kept, the rest closed at once and counted; a
// terminal from another address logs in meanwhile.
func TestHostileSilentConnections(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 2000; i++ {
		c, err := net.DialTimeout("tcp", g.mqttAddr, 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	testkit.Eventually(t, 30*time.Second, func() bool {
		return g.metricSum("gateway_mqtt_connections_refused_total", `reason="pending_address"`) == 2000-256
	}, "refused %v, want %d", g.metricSum("gateway_mqtt_connections_refused_total", `reason="pending_address"`), 2000-256)
	if n := g.metric("gateway_mqtt_pending_connections"); n != 256 {
		t.Errorf("gateway_mqtt_pending_connections %v, want 256", n)
	}
	// a terminal behind another address is not held back
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	nc, err := d.Dial("tcp", g.mqttAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Write(append(rawmqtt.AppendLength([]byte{0x10}, len(rawmqtt.ConnectBody(rawmqtt.Options{ClientID: "term-9", Clean: true}))),
		rawmqtt.ConnectBody(rawmqtt.Options{ClientID: "term-9", Clean: true})...)); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4)
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(nc, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		t.Fatalf("term-9's CONNACK %x %v", ack, err)
	}
}

// Finding 8 (CONNECT): a receive maximum of 0 or a maximum packet size of 0
// is a protocol error (MQTT 5 3.1.2.11) that was accepted. Now refused with
// 0x82.
func TestHostileConnectZeroLimits(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()
	for _, props := range [][]byte{rawmqtt.PropUint16(0x21, 0), rawmqtt.PropUint32(0x27, 0)} {
		_, err := rawmqtt.Connect(g.mqttAddr, rawmqtt.Options{ClientID: "term-1", Clean: true, Properties: props})
		if !errors.Is(err, rawmqtt.ErrRefused) || !strings.Contains(err.Error(), "0x82") {
			t.Fatalf("CONNECT with %x: %v, want refused 0x82", props, err)
		}
	}
	g.alive(t, "term-1")
}

// usersFile writes a users file with password "<name>-secret" per user.
func usersFile(t *testing.T, cost int, users ...string) string {
	t.Helper()
	var b strings.Builder
	for _, u := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(u+"-secret"), cost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:%s\n", u, h)
	}
	p := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// loginFrom logs in with a password from the loopback address src and
// returns the CONNACK code (-1: no CONNACK).
func loginFrom(src, addr, user, pass string) (int, time.Duration) {
	start := time.Now()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return -1, time.Since(start)
	}
	defer nc.Close()
	body := rawmqtt.ConnectBody(rawmqtt.Options{ClientID: user, Clean: true, Username: user, Password: pass})
	if _, err := nc.Write(append(rawmqtt.AppendLength([]byte{0x10}, len(body)), body...)); err != nil {
		return -1, time.Since(start)
	}
	_ = nc.SetReadDeadline(time.Now().Add(15 * time.Second))
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(nc, hdr); err != nil || hdr[0] != 0x20 {
		return -1, time.Since(start)
	}
	rest := make([]byte, hdr[1])
	if _, err := io.ReadFull(nc, rest); err != nil || len(rest) < 2 {
		return -1, time.Since(start)
	}
	return int(rest[1]), time.Since(start)
}

// Finding 7: after 5 wrong passwords from one address the right one was
// refused too for ~10 s, for every terminal behind that address (a
// village's carrier-grade NAT); a login flood made legitimate password
// logins wait up to 8.9 s or time out. Now the backoff is per user name and
// address, and under a flood of guesses from one address terminals logging
// in from elsewhere, or again after a success, are served in turn.
func TestHostileLoginLockoutAndFlood(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.env = []string{"GATEWAY_MQTT_ALLOW_ANONYMOUS=false", "GATEWAY_MQTT_USERS_FILE=" + usersFile(t, 8, "term-1", "term-2", "term-3")}
	g.start()
	if code, _ := loginFrom("127.0.0.1", g.mqttAddr, "term-2", "term-2-secret"); code != 0 {
		t.Fatalf("term-2's first login: %#x", code)
	}
	for i := 0; i < 6; i++ {
		loginFrom("127.0.0.1", g.mqttAddr, "term-1", "guess")
	}
	if code, _ := loginFrom("127.0.0.1", g.mqttAddr, "term-1", "term-1-secret"); code != 0x86 && code != 0x9F {
		t.Fatalf("term-1 after 6 failures: %#x", code)
	}
	if code, _ := loginFrom("127.0.0.1", g.mqttAddr, "term-2", "term-2-secret"); code != 0 {
		t.Fatalf("term-2 behind the same address as term-1's failures: %#x, want 0", code)
	}

	// a flood of guesses from one address
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var guesses atomic.Int64
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				loginFrom("127.0.0.1", g.mqttAddr, fmt.Sprintf("user-%d-%d", i, n), "guess")
				guesses.Add(1)
			}
		}(i)
	}
	var worst time.Duration
	for i := 0; i < 8; i++ {
		time.Sleep(500 * time.Millisecond) // a login now and then, during the flood
		for _, who := range []struct{ src, user string }{{"127.0.0.1", "term-2"}, {"127.0.0.3", "term-3"}} {
			code, took := loginFrom(who.src, g.mqttAddr, who.user, who.user+"-secret")
			if code != 0 {
				t.Errorf("%s from %s during the flood: CONNACK %#x after %v", who.user, who.src, code, took)
			}
			worst = max(worst, took)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d guesses during the flood; slowest legitimate login %v", guesses.Load(), worst)
}

// Finding 9: a 3.1.1 publish to a denied topic was logged at warning level
// with the whole packet: 50 publishes wrote 16 MB of log in 0.8 s, the
// card-like payload included. Now the log carries no payload and one record
// per client and kind a minute (the gateway under test logs at debug).
func TestHostileLogFlood(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()
	card := "4111111111111111"
	payload := bytes.Repeat([]byte(`{"pan":"`+card+`"}`), 9000) // 234 KB
	before := len(g.logs.String())
	for i := 0; i < 50; i++ {
		c := rawConnect(t, g.mqttAddr, rawmqtt.Options{Version: 4, ClientID: "term-1", Clean: true})
		if err := c.Publish(1, false, 1, "terminals/term-2/payments/p1", nil, payload); err != nil { // outside its ACL
			t.Fatal(err)
		}
		if _, ended := c.Closed(10 * time.Second); !ended {
			t.Fatal("3.1.1 publish outside the ACL: still connected")
		}
		c.Close()
	}
	g.alive(t, "term-3")
	grown := len(g.logs.String()) - before
	t.Logf("log grew by %d bytes for 50 refused 234 KB publishes", grown)
	logs := g.logs.String()[before:]
	for _, leak := range []string{card, base64.StdEncoding.EncodeToString([]byte(`{"pan":"` + card))[:16]} {
		if strings.Contains(logs, leak) {
			t.Fatalf("the log carries the payload (%q)", leak)
		}
	}
	if grown > 100_000 {
		t.Errorf("log grew by %d bytes, want it bounded (under 100 KB)", grown)
	}
}

// Finding 11 (protocol corners): topic aliases were announced but a publish
// by alias was refused 0x87; some 3.1.1 CONNACKs carried codes 3.1.1 does
// not define (0x80, 0x82).
func TestHostileProtocolCorners(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	g := newGateway(t, kafka.Addrs, "")
	g.start()
	c := rawConnect(t, g.mqttAddr, rawmqtt.Options{ClientID: "term-1", Clean: true})
	if err := c.Publish(1, false, 1, "terminals/term-1/payments/p1", rawmqtt.PropUint16(0x23, 1), []byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(1, false, 2, "", rawmqtt.PropUint16(0x23, 1), []byte("b")); err != nil {
		t.Fatal(err)
	}
	for pid := uint16(1); pid <= 2; pid++ {
		body, err := c.ReadType(4, 10*time.Second)
		if err != nil || binary.BigEndian.Uint16(body) != pid || (len(body) > 2 && body[2] != 0) {
			t.Fatalf("publish %d (by alias: %v): PUBACK %x %v, want success", pid, pid == 2, body, err)
		}
	}
	recs := testkit.Consume(t, kafka.Addrs, []string{"payments"}).WaitN(t, 2, 60*time.Second)
	for _, r := range recs {
		if topic, _ := header(r, "mqtt.topic"); topic != "terminals/term-1/payments/p1" {
			t.Fatalf("record mqtt.topic %q", topic)
		}
	}
	// 3.1.1: a persistent session without a client id is "identifier rejected"
	v3, err := rawmqtt.Connect(g.mqttAddr, rawmqtt.Options{Version: 4, Clean: false})
	if err == nil || v3 == nil || v3.Connack[1] != 0x02 {
		t.Fatalf("3.1.1 persistent session without an id: %v, want CONNACK code 2", err)
	}
	// ... and a CONNECT with its reserved flag set gets no CONNACK at all
	nc, err := rawmqtt.Dial(g.mqttAddr, rawmqtt.Options{Version: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	body := rawmqtt.ConnectBody(rawmqtt.Options{Version: 4, ClientID: "term-1", Clean: true})
	body[7] |= 0x01
	if err := nc.Send(0x10, body); err != nil {
		t.Fatal(err)
	}
	if typ, b, err := nc.Read(10 * time.Second); err == nil {
		t.Fatalf("3.1.1 CONNECT with the reserved flag: packet type %d %x, want the connection closed", typ, b)
	}
}

// Finding 11 (certificates): a certificate with two CNs logged in as the
// last one; there was no way to revoke a terminal's certificate. Now the
// two-CN certificate is refused and mqtt.tls.crl_file revokes.
func TestHostileCertificates(t *testing.T) {
	kafka := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	ca := testkit.NewCA(t, "terminals")
	srv := ca.Server()
	good, stolen := ca.Client("term-a"), ca.Client("term-s")
	oid := asn1.ObjectIdentifier{2, 5, 4, 3}
	two := ca.ClientWithSubject("two-cns", pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{{Type: oid, Value: "term-a"}, {Type: oid, Value: "term-b"}}})
	g := newGateway(t, kafka.Addrs, "")
	tlsAddr := fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t))
	g.env = []string{
		"GATEWAY_MQTT_TLS_ADDRESS=" + tlsAddr,
		"GATEWAY_MQTT_TLS_CERT_FILE=" + srv.CertFile,
		"GATEWAY_MQTT_TLS_KEY_FILE=" + srv.KeyFile,
		"GATEWAY_MQTT_TLS_CLIENT_CA_FILE=" + ca.File,
		"GATEWAY_MQTT_TLS_CRL_FILE=" + ca.CRL(stolen),
		"GATEWAY_MQTT_ALLOW_ANONYMOUS=false",
		"GATEWAY_MQTT_TCP_ALLOW_ANONYMOUS=true",
	}
	g.start()
	login := func(cert testkit.Issued, id string) (*rawmqtt.Conn, error) {
		return rawmqtt.Connect(tlsAddr, rawmqtt.Options{ClientID: id, Clean: true,
			TLS: &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{cert.TLS}}})
	}
	c, err := login(good, "term-a")
	if err != nil {
		t.Fatalf("term-a: %v", err)
	}
	c.Close()
	if c, err := login(two, "term-b"); err == nil || !errors.Is(err, rawmqtt.ErrRefused) || c.Connack[1] != 0x86 {
		t.Fatalf("two CNs as term-b: %v, want refused 0x86", err)
	}
	if c, err := login(stolen, "term-s"); err == nil {
		c.Close()
		t.Fatal("a revoked certificate logged in")
	}
	testkit.Eventually(t, 10*time.Second, func() bool {
		return g.metricSum("gateway_mqtt_connect_refused_total", `reason="certificate_revoked"`) == 1 &&
			g.metricSum("gateway_mqtt_connect_refused_total", `reason="certificate_cn_ambiguous"`) == 1
	}, "refusals not counted")
}
