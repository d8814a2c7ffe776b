package broker

import (
	"crypto/rand"
	"net"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/time/rate"
)

// Failed-login backoff. bcrypt is meant to be slow (tens of milliseconds per
// check on an ARM core), so a stranger sending CONNECTs with wrong
// passwords could keep the box's CPUs busy. Three bounds, none of which a
// terminal with the right password notices in normal work:
//   - one remote address may fail loginBurstPerIP times, then once per
//     loginRefillPerIP; beyond that it is refused before any bcrypt work;
//   - all checks together run at most loginsPerSecond (burst loginBurst),
//     waiting up to loginWait for their turn (a reconnect storm is slowed,
//     not refused, as long as it fits in the wait);
//   - one bcrypt check runs at a time: logins never take more than one core.
const (
	loginBurstPerIP  = 5
	loginRefillPerIP = 10 * time.Second
	loginsPerSecond  = 20
	loginBurst       = 40
	loginWait        = 5 * time.Second
	loginIPsTracked  = 10000 // beyond it, addresses whose allowance is whole are forgotten
)

// loginGuard runs password checks under the bounds above.
type loginGuard struct {
	global *rate.Limiter
	cpu    chan struct{} // one bcrypt at a time

	mu    sync.Mutex
	perIP map[string]*rate.Limiter
}

func newLoginGuard() *loginGuard {
	return &loginGuard{
		global: rate.NewLimiter(loginsPerSecond, loginBurst),
		cpu:    make(chan struct{}, 1),
		perIP:  map[string]*rate.Limiter{},
	}
}

// check compares password with hash unless the remote address is backing
// off or the global budget has no turn within loginWait (busy).
func (g *loginGuard) check(remote string, hash, password []byte) (ok, busy bool) {
	ip := remote
	if h, _, err := net.SplitHostPort(remote); err == nil {
		ip = h
	}
	lim := g.ipLimiter(ip)
	if lim.Tokens() < 1 {
		return false, true
	}
	r := g.global.Reserve()
	if d := r.Delay(); d > loginWait {
		r.Cancel()
		return false, true
	} else if d > 0 {
		time.Sleep(d)
	}
	g.cpu <- struct{}{}
	ok = bcrypt.CompareHashAndPassword(hash, password) == nil
	<-g.cpu
	if !ok {
		lim.Allow() // spends one of this address's failures
	}
	return ok, false
}

func (g *loginGuard) ipLimiter(ip string) *rate.Limiter {
	g.mu.Lock()
	defer g.mu.Unlock()
	if lim, ok := g.perIP[ip]; ok {
		return lim
	}
	if len(g.perIP) >= loginIPsTracked {
		for k, l := range g.perIP {
			if l.Tokens() >= loginBurstPerIP {
				delete(g.perIP, k)
			}
		}
	}
	lim := rate.NewLimiter(rate.Every(loginRefillPerIP), loginBurstPerIP)
	g.perIP[ip] = lim
	return lim
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
