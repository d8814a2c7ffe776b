package main

import (
	"github.com/edgegw/gateway/broker"
	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/rules"
)

// bufferLimits turns the configured routes and budget into the buffer's
// rules. Backlog of a route no longer configured keeps the defaults: never
// evicted or expired, drained last.
func bufferLimits(cfg *config.Config, set *rules.Set) buffer.Limits {
	return buffer.Limits{
		MaxDiskBytes: cfg.Buffer.MaxDiskBytes,
		Routes: func(name string) (buffer.Policy, bool) {
			r := set.ByName(name)
			if r == nil {
				return buffer.Policy{}, false
			}
			return buffer.Policy{Priority: r.Priority, MaxAge: r.MaxAge, MaxBytes: r.MaxBytes, OnFull: r.OnFull}, true
		},
	}
}

// drops merges what the buffer dropped by rule (max_age, drop_oldest) with
// what the broker refused (rejected), per route.
func drops(buf *buffer.Buffer, brk *broker.Broker) map[string]map[string]uint64 {
	out := buf.Drops()
	for route, n := range brk.Refused() {
		if route == "" {
			continue // unrouted publishes belong to no route
		}
		if out[route] == nil {
			out[route] = map[string]uint64{}
		}
		out[route]["rejected"] += n
	}
	return out
}
