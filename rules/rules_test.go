package rules

import (
	"testing"

	"github.com/edgegw/gateway/config"
)

func TestMatchFilter(t *testing.T) {
	cases := []struct {
		filter, topic string
		want          bool
	}{
		{"terminals/+/payments/#", "terminals/t1/payments/p1", true},
		{"terminals/+/payments/#", "terminals/t1/payments", true}, // # matches the parent level
		{"terminals/+/payments/#", "terminals/t1/telemetry/x", false},
		{"terminals/+/payments/#", "terminals/payments", false},
		{"#", "a/b/c", true},
		{"#", "$SYS/x", false},
		{"+/b", "$SYS/b", false},
		{"$SYS/#", "$SYS/x", true},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+", "a", false},
		{"a/+", "a/", true},
		{"a/b", "a/b", true},
		{"a/b", "a/b/", false},
		{"+/+", "/x", true},
		{"a/b/c", "a/b", false},
	}
	for _, c := range cases {
		if got := MatchString(c.filter, c.topic); got != c.want {
			t.Errorf("MatchString(%q, %q) = %v, want %v", c.filter, c.topic, got, c.want)
		}
	}
}

func TestFirstMatchWinsAndKeys(t *testing.T) {
	cfg, err := config.Parse([]byte(`
id: gw1
kafka: {brokers: ["127.0.0.1:9092"]}
routes:
  - {name: pay, match: "terminals/+/payments/#", kafka_topic: payments}
  - {name: all, match: "terminals/#", kafka_topic: other, key: "{topic.1}-{username}", priority: 3}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := Compile(cfg)
	if r := s.Match("terminals/t1/payments/1"); r == nil || r.Name != "pay" {
		t.Fatalf("payments matched %v", r)
	}
	r := s.Match("terminals/t1/telemetry")
	if r == nil || r.Name != "all" {
		t.Fatalf("telemetry matched %v", r)
	}
	if k := string(r.Key("c1", "bob", "terminals/t1/telemetry")); k != "t1-bob" {
		t.Fatalf("key = %q", k)
	}
	if k := string(s.Match("terminals/t9/payments").Key("c9", "", "x")); k != "c9" {
		t.Fatalf("default key = %q", k)
	}
	if s.Match("other/x") != nil {
		t.Fatal("unrouted topic matched")
	}
	if s.Priority("all") != 3 || s.Priority("gone") >= 0 {
		t.Fatal("priorities wrong")
	}
}
