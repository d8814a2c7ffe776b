package testkit

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func TestProxiedKafkaAdvertisesProxy(t *testing.T) {
	k := Kafka(t, Topics(3, "t"), WithProxy(), Brokers(2))
	if len(k.Proxies) != 2 || len(k.Addrs) != 2 {
		t.Fatalf("proxies %d addrs %v", len(k.Proxies), k.Addrs)
	}
	for i, p := range k.Proxies {
		if k.Addrs[i] != p.Addr() {
			t.Fatalf("broker %d advertises %s, proxy is %s", i, k.Addrs[i], p.Addr())
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Addrs[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	resp, err := kmsg.NewPtrMetadataRequest().RequestWith(context.Background(), cl)
	if err != nil {
		t.Fatal(err)
	}
	proxies := map[string]bool{}
	for _, p := range k.Proxies {
		proxies[p.Addr()] = true
	}
	for _, b := range resp.Brokers {
		addr := net.JoinHostPort(b.Host, itoa(b.Port))
		if !proxies[addr] {
			t.Errorf("metadata advertises %s, not a proxy", addr)
		}
	}
}

func itoa(p int32) string { return (&net.TCPAddr{Port: int(p)}).String()[1:] }

func TestProxyModes(t *testing.T) {
	k := Kafka(t, Topics(1, "t"), WithProxy())
	produce := func(cl *kgo.Client, v string, wait time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		return cl.ProduceSync(ctx, &kgo.Record{Topic: "t", Value: []byte(v)}).FirstErr()
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Addrs...), kgo.RequestTimeoutOverhead(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := produce(cl, "pass-1", 10*time.Second); err != nil {
		t.Fatalf("pass: %v", err)
	}

	// Hang: TCP connects, nothing answers, for old and new connections alike.
	k.SetMode(t, Hang)
	c, err := net.DialTimeout("tcp", k.Addrs[0], 2*time.Second)
	if err != nil {
		t.Fatalf("hang must accept TCP: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	c.Write([]byte{0, 0, 0, 1, 0})
	if _, err := c.Read(make([]byte, 1)); !isTimeout(err) {
		t.Fatalf("hang: read got %v, want timeout", err)
	}
	c.Close()
	hangDone := make(chan error, 1)
	cl.Produce(context.Background(), &kgo.Record{Topic: "t", Value: []byte("hang")}, func(_ *kgo.Record, err error) { hangDone <- err })
	if Poll(1500*time.Millisecond, func() bool { return len(hangDone) > 0 }) {
		t.Fatalf("hang: produce completed (%v), want it to stall", <-hangDone)
	}

	// Refuse: nothing listens.
	k.SetMode(t, Refuse)
	if c, err := net.DialTimeout("tcp", k.Addrs[0], 2*time.Second); err == nil {
		c.Close()
		t.Fatal("refuse: dial succeeded")
	}
	fresh, err := kgo.NewClient(kgo.SeedBrokers(k.Addrs...))
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	err = fresh.Ping(ctx)
	cancel()
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("refuse: ping returned %v, want a connection error", err)
	}

	// Back: the same client recovers on the same address.
	k.SetMode(t, Pass)
	if err := produce(cl, "pass-2", 20*time.Second); err != nil {
		t.Fatalf("pass again: %v", err)
	}
	if err := <-hangDone; err != nil {
		t.Fatalf("record produced during the hang: %v", err)
	}
	recs := ReadAll(t, k.Addrs, "t")
	var vals []string
	for _, r := range recs {
		vals = append(vals, string(r.Value))
	}
	if len(vals) != 3 || vals[0] != "pass-1" || vals[1] != "hang" || vals[2] != "pass-2" {
		t.Fatalf("records %q", vals)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestKafkaLaterOnFixedPort(t *testing.T) {
	port := FreePort(t)
	k := Kafka(t, Ports(port), Topics(2, "a", "b"))
	if k.Addrs[0] != net.JoinHostPort("127.0.0.1", itoa(int32(port))) {
		t.Fatalf("addrs %v, want port %d", k.Addrs, port)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Addrs...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for i := 0; i < 10; i++ {
		r := &kgo.Record{Topic: "a", Key: []byte{byte(i)}, Value: []byte("v"), Headers: []kgo.RecordHeader{{Key: "h", Value: []byte("x")}}}
		if err := cl.ProduceSync(context.Background(), r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	recs := ReadAll(t, k.Addrs, "a")
	if len(recs) != 10 || len(recs[0].Headers) != 1 {
		t.Fatalf("got %d records", len(recs))
	}
	if got := Consume(t, k.Addrs, []string{"a"}).WaitN(t, 10, 10*time.Second); len(got) != 10 {
		t.Fatalf("consumer got %d", len(got))
	}
	if got := ReadAll(t, k.Addrs, "b"); len(got) != 0 {
		t.Fatalf("b has %d", len(got))
	}
}

func TestEventually(t *testing.T) {
	n := 0
	Eventually(t, 5*time.Second, func() bool { n++; return n > 3 }, "never")
	if Poll(30*time.Millisecond, func() bool { return false }) {
		t.Fatal("Poll true for a false condition")
	}
}
