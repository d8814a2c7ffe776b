package logonce

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Every logs each key at most once per Interval, and says how many were
// left out since: for events one client can repeat at will (a refused
// packet, a panic), where once per process would hide a second offender and
// every time would let one terminal write the flash card full.
//
// At most MaxKeys keys are remembered; when more arrive the oldest half is
// forgotten, so a flood of new keys costs bounded memory and at worst logs
// a little more. The zero value logs each key at most once a minute and
// remembers 4,096 keys.
type Every struct {
	Interval time.Duration
	MaxKeys  int

	mu   sync.Mutex
	keys map[string]*everyKey
}

type everyKey struct {
	last    time.Time
	skipped int
}

// Log logs msg at level unless key was logged less than Interval ago; the
// first record after a gap carries "suppressed": how many were skipped.
func (e *Every) Log(log *slog.Logger, level slog.Level, key, msg string, args ...any) {
	if !log.Enabled(context.Background(), level) {
		return
	}
	skipped, ok := e.Allow(key, time.Now())
	if !ok {
		return
	}
	if skipped > 0 {
		args = append(args, "suppressed", skipped)
	}
	log.Log(context.Background(), level, msg, args...)
}

// Allow reports whether key may be logged at now and how many were
// skipped before.
func (e *Every) Allow(key string, now time.Time) (skipped int, ok bool) {
	interval, maxKeys := e.Interval, e.MaxKeys
	if interval <= 0 {
		interval = time.Minute
	}
	if maxKeys <= 0 {
		maxKeys = 4096
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.keys == nil {
		e.keys = map[string]*everyKey{}
	}
	k := e.keys[key]
	if k != nil && now.Sub(k.last) < interval {
		k.skipped++
		return 0, false
	}
	if k == nil {
		if len(e.keys) >= maxKeys {
			e.forgetOldest(len(e.keys) / 2)
		}
		k = &everyKey{}
		e.keys[key] = k
	}
	skipped, k.skipped, k.last = k.skipped, 0, now
	return skipped, true
}

// forgetOldest drops n of the least recently logged keys. e.mu held.
func (e *Every) forgetOldest(n int) {
	var cut time.Time
	// The n-th oldest time, found without sorting every key: a rough cut
	// is enough (everything at or before the median goes).
	times := make([]time.Time, 0, len(e.keys))
	for _, k := range e.keys {
		times = append(times, k.last)
	}
	cut = nthSmallest(times, n)
	for key, k := range e.keys {
		if !k.last.After(cut) {
			delete(e.keys, key)
		}
	}
}

// nthSmallest returns the n-th smallest time (quickselect, average O(len)).
func nthSmallest(ts []time.Time, n int) time.Time {
	lo, hi := 0, len(ts)-1
	if n > hi {
		n = hi
	}
	for lo < hi {
		p := ts[(lo+hi)/2]
		i, j := lo, hi
		for i <= j {
			for ts[i].Before(p) {
				i++
			}
			for p.Before(ts[j]) {
				j--
			}
			if i <= j {
				ts[i], ts[j] = ts[j], ts[i]
				i++
				j--
			}
		}
		switch {
		case n <= j:
			hi = j
		case n >= i:
			lo = i
		default:
			return ts[n]
		}
	}
	return ts[n]
}
