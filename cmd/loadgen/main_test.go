package main

import (
	"net"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// startBroker runs an in-process mochi broker on a free loopback port.
func startBroker(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := mochi.New(&mochi.Options{InlineClient: false})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddListener(listeners.NewNet("t", ln)); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return "tcp://" + ln.Addr().String()
}

func testConfig(t *testing.T, args ...string) config {
	t.Helper()
	cfg, err := parseFlags(args)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestPublishRunAcksEverythingItSent(t *testing.T) {
	url := startBroker(t)
	for _, qos := range []string{"0", "1"} {
		cfg := testConfig(t, "-broker", url, "-clients", "3", "-inflight", "4", "-qos", qos,
			"-duration", "300ms", "-size", "50")
		res := run(cfg)
		if res.Connected != 3 || res.Errors != 0 {
			t.Fatalf("qos %s: connected %d errors %d (%s)", qos, res.Connected, res.Errors, res.FirstError)
		}
		if res.Acked == 0 || res.Acked != res.Sent {
			t.Fatalf("qos %s: sent %d acked %d", qos, res.Sent, res.Acked)
		}
		if res.P50ms > res.P99ms || res.P99ms > res.Maxms {
			t.Fatalf("qos %s: percentiles out of order: %+v", qos, res)
		}
	}
}

func TestRateLimitBoundsMessages(t *testing.T) {
	url := startBroker(t)
	// 200 msg/s for 500ms is at most ~100 messages, whatever the machine.
	res := run(testConfig(t, "-broker", url, "-clients", "4", "-rate", "200", "-duration", "500ms"))
	if res.Errors != 0 || res.Acked == 0 || res.Sent > 120 {
		t.Fatalf("sent %d acked %d errors %d (%s)", res.Sent, res.Acked, res.Errors, res.FirstError)
	}
}

func TestIdleHoldsConnections(t *testing.T) {
	url := startBroker(t)
	res := run(testConfig(t, "-broker", url, "-clients", "20", "-idle", "-duration", "100ms"))
	if res.Connected != 20 || res.ConnectedEnd != 20 || res.Sent != 0 {
		t.Fatalf("%+v", res)
	}
}

func TestConnectFailureIsCounted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there any more
	res := run(testConfig(t, "-broker", "tcp://"+addr, "-clients", "2", "-duration", "50ms", "-timeout", "2s"))
	if res.Connected != 0 || res.ConnectErrs != 2 || res.FirstError == "" {
		t.Fatalf("%+v", res)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-clients", "0"}, {"-qos", "2"}, {"-inflight", "0"}, {"-duration", "0s"}, {"-rate", "-1"}, {"extra"},
	} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	if pct(d, 0.5) != 50 || pct(d, 0.99) != 99 || pct(nil, 0.5) != 0 || pct(d[:1], 0.99) != 1 {
		t.Fatal("percentile")
	}
}
