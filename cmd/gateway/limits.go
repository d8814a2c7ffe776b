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
		Reserve:      systemReserve(cfg.Buffer.MaxDiskBytes),
		Routes: func(name string) (buffer.Policy, bool) {
			if name == rules.ConfirmRoute {
				// Confirmations are the proof a receipt was delivered: never
				// evicted, and room kept for them beyond the budget.
				return buffer.Policy{Priority: 0, OnFull: "reject", UseReserve: true}, true
			}
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

// systemReserve is the room beyond buffer.max_disk_bytes kept for receipt
// confirmations: 1% of the budget, at least 256 KiB (~1,000 confirmations)
// and at most 16 MiB.
func systemReserve(budget int64) int64 {
	if budget <= 0 {
		return 0
	}
	return min(max(budget/100, 256<<10), 16<<20)
}
