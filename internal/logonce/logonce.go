// Package logonce logs a state change once per key, so a flood of one kind of
// event (refusals, drops, read errors) does not flood the log; counters in
// /metrics carry the rest.
package logonce

import (
	"log/slog"
	"sync"
)

// Set remembers which keys were logged. The zero value is ready to use.
type Set struct {
	seen sync.Map // key -> struct{}
}

// Warn logs msg at warning level the first time key is seen.
func (s *Set) Warn(log *slog.Logger, key, msg string, args ...any) {
	if _, seen := s.seen.LoadOrStore(key, struct{}{}); !seen {
		log.Warn(msg, args...)
	}
}
