package broker

import (
	"crypto/rand"
	"math"
	"net"
	"runtime"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/time/rate"
)

// Password logins under attack. bcrypt is meant to be slow (tens of
// milliseconds per check on an ARM core), so CONNECTs with wrong passwords
// could keep the box's CPUs busy, and terminals behind one carrier-grade NAT
// share a remote address. The bounds, none of which a terminal with the
// right password notices in normal work:
//
//   - backoff per user name and address: one (user, address) may fail
//     loginBurst times, then once per loginRefill; beyond that it is
//     refused before any bcrypt work (MQTT 5 0x9F). A terminal's mistakes,
//     or a stranger guessing its password from elsewhere, never lock out
//     another terminal behind the same address, nor this one from another;
//   - CPU: at most loginWorkers bcrypt checks run at once (half the cores,
//     at least one), so logins never take the whole box and certificate
//     logins, which need no bcrypt, never wait behind them;
//   - turns: a check waits at most loginWait for a worker (then 0x9F). A
//     (user, address) that logged in before goes first: a terminal
//     reconnecting after a power cut is not stuck behind a stranger's
//     flood of guesses. The others are served by remote address: the
//     address with the fewest recent failures first (a flood of guesses
//     sinks its own addresses, never locks them out), in turn among equals
//     (one address flooding gets one turn in each round, not the queue).
//     Knowing a user name is no shortcut: only a login that succeeded earns
//     the first lane, and an unknown name costs the same bcrypt work as a
//     known one (no user enumeration by timing).
const (
	loginBurst      = 5
	loginRefill     = 10 * time.Second
	loginWait       = 5 * time.Second
	loginKeysMax    = 10000 // (user, address) pairs remembered per map; beyond it whole allowances and old successes go
	loginGoodMaxAge = 7 * 24 * time.Hour
	// addrHalfLife is how fast an address's recent failures are forgotten
	// for its turn (halved every minute).
	addrHalfLife = time.Minute
)

// loginWorkers is how many bcrypt checks may run at once.
func loginWorkers() int { return max(1, runtime.NumCPU()/2) }

// loginGuard runs password checks under the bounds above.
type loginGuard struct {
	workers int
	wait    time.Duration

	mu     sync.Mutex
	busy   int                       // checks running
	first  []*loginWaiter            // waiting, known-good (user, address)
	byAddr map[string][]*loginWaiter // waiting, the rest, per address
	turns  []string                  // addresses with waiters, in turn order
	fails  map[string]*rate.Limiter  // (user, address) -> failure allowance
	good   map[string]time.Time      // (user, address) -> last successful login
	scores map[string]addrScore      // address -> its recent failures, for its turn
}

// addrScore is an address's failures, decaying with addrHalfLife.
type addrScore struct {
	n  float64
	at time.Time
}

func (a addrScore) decayed(now time.Time) float64 {
	if a.n == 0 {
		return 0
	}
	return a.n * math.Exp2(-float64(now.Sub(a.at))/float64(addrHalfLife))
}

type loginWaiter struct {
	addr  string
	ready chan struct{} // closed when it is given a worker
}

func newLoginGuard() *loginGuard {
	return &loginGuard{workers: loginWorkers(), wait: loginWait, byAddr: map[string][]*loginWaiter{},
		fails: map[string]*rate.Limiter{}, good: map[string]time.Time{}, scores: map[string]addrScore{}}
}

// check compares password with hash unless (user, remote) is backing off
// or no worker is free within the wait (busy).
func (g *loginGuard) check(remote, user string, hash, password []byte) (ok, busy bool) {
	addr := remote
	if h, _, err := net.SplitHostPort(remote); err == nil {
		addr = h
	}
	key := user + "\x00" + addr
	lim, known := g.allowance(key)
	if lim.Tokens() < 1 {
		return false, true
	}
	if !g.acquire(addr, known) {
		return false, true
	}
	ok = bcrypt.CompareHashAndPassword(hash, password) == nil
	g.release()
	g.mu.Lock()
	defer g.mu.Unlock()
	if ok {
		if len(g.good) >= loginKeysMax {
			g.forgetGood(time.Now())
		}
		g.good[key] = time.Now()
	} else {
		lim.Allow() // spends one of this (user, address)'s failures
		g.failed(addr, time.Now())
	}
	return ok, false
}

// failed adds a failure to addr's score. g.mu held.
func (g *loginGuard) failed(addr string, now time.Time) {
	if _, ok := g.scores[addr]; !ok && len(g.scores) >= loginKeysMax {
		for a, sc := range g.scores {
			if sc.decayed(now) < 1 {
				delete(g.scores, a)
			}
		}
		if len(g.scores) >= loginKeysMax {
			clear(g.scores)
		}
	}
	g.scores[addr] = addrScore{n: g.scores[addr].decayed(now) + 1, at: now}
}

// allowance returns the failure allowance of key and whether key logged in
// successfully before.
func (g *loginGuard) allowance(key string) (*rate.Limiter, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	at, known := g.good[key]
	known = known && time.Since(at) < loginGoodMaxAge
	if lim, ok := g.fails[key]; ok {
		return lim, known
	}
	if len(g.fails) >= loginKeysMax {
		for k, l := range g.fails {
			if l.Tokens() >= loginBurst {
				delete(g.fails, k)
			}
		}
	}
	lim := rate.NewLimiter(rate.Every(loginRefill), loginBurst)
	g.fails[key] = lim
	return lim, known
}

// forgetGood drops old successes, or half of them when none is old. g.mu
// held.
func (g *loginGuard) forgetGood(now time.Time) {
	n := len(g.good)
	for k, t := range g.good {
		if now.Sub(t) > loginGoodMaxAge {
			delete(g.good, k)
		}
	}
	for k := range g.good {
		if len(g.good) <= n/2 {
			break
		}
		delete(g.good, k)
	}
}

// acquire waits for a worker, up to g.wait, in the turn described above.
func (g *loginGuard) acquire(addr string, known bool) bool {
	g.mu.Lock()
	if g.busy < g.workers && len(g.first) == 0 && len(g.turns) == 0 {
		g.busy++
		g.mu.Unlock()
		return true
	}
	w := &loginWaiter{addr: addr, ready: make(chan struct{})}
	if known {
		g.first = append(g.first, w)
	} else {
		if len(g.byAddr[addr]) == 0 {
			g.turns = append(g.turns, addr)
		}
		g.byAddr[addr] = append(g.byAddr[addr], w)
	}
	g.mu.Unlock()
	t := time.NewTimer(g.wait)
	defer t.Stop()
	select {
	case <-w.ready:
		return true
	case <-t.C:
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-w.ready:
		return true // given a worker just now
	default:
	}
	g.remove(w)
	return false
}

// release hands the worker to the next waiter in turn, or frees it.
func (g *loginGuard) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if w := g.next(); w != nil {
		close(w.ready)
		return
	}
	g.busy--
}

// next takes the waiter whose turn it is. g.mu held.
func (g *loginGuard) next() *loginWaiter {
	if len(g.first) > 0 {
		w := g.first[0]
		g.first[0] = nil
		g.first = g.first[1:]
		return w
	}
	for len(g.turns) > 0 {
		// the address with the fewest recent failures; the earliest turn
		// among equals
		now, best, bestScore := time.Now(), 0, 0.0
		for i, a := range g.turns {
			if sc := g.scores[a].decayed(now); i == 0 || sc < bestScore {
				best, bestScore = i, sc
			}
		}
		addr := g.turns[best]
		g.turns = append(g.turns[:best], g.turns[best+1:]...)
		q := g.byAddr[addr]
		if len(q) == 0 {
			delete(g.byAddr, addr)
			continue
		}
		w := q[0]
		q[0] = nil
		if q = q[1:]; len(q) > 0 {
			g.byAddr[addr] = q
			g.turns = append(g.turns, addr) // its next one waits for the next round
		} else {
			delete(g.byAddr, addr)
		}
		return w
	}
	return nil
}

// remove takes a waiter that gave up out of its queue. g.mu held.
func (g *loginGuard) remove(w *loginWaiter) {
	for i, x := range g.first {
		if x == w {
			g.first = append(g.first[:i], g.first[i+1:]...)
			return
		}
	}
	q := g.byAddr[w.addr]
	for i, x := range q {
		if x == w {
			q = append(q[:i], q[i+1:]...)
			break
		}
	}
	if len(q) == 0 {
		delete(g.byAddr, w.addr)
		for i, a := range g.turns {
			if a == w.addr {
				g.turns = append(g.turns[:i], g.turns[i+1:]...)
				break
			}
		}
		return
	}
	g.byAddr[w.addr] = q
}

// dummyHash is a bcrypt hash of a random password at the highest cost found
// among the users (the cost an attacker would time), compared against when a
// user name is unknown.
func dummyHash(users map[string][]byte) []byte {
	cost := bcrypt.MinCost
	for _, h := range users {
		if c, err := bcrypt.Cost(h); err == nil && c > cost {
			cost = c
		}
	}
	pw := make([]byte, 16)
	_, _ = rand.Read(pw)
	h, err := bcrypt.GenerateFromPassword(pw, cost)
	if err != nil {
		return nil // CompareHashAndPassword then fails fast; never reached with a valid cost
	}
	return h
}
