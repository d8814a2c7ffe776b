package broker

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/edgegw/gateway/internal/testkit"
)

// Waiting password checks are served by turn of remote address, a (user,
// address) that logged in before first; one that waits too long gives up
// without holding anything.
func TestLoginTurns(t *testing.T) {
	g := newLoginGuard()
	g.workers, g.wait = 1, 10*time.Second
	if !g.acquire("x", false) {
		t.Fatal("a free worker was not taken")
	}
	var mu sync.Mutex
	var order []string
	waiting := func() int {
		g.mu.Lock()
		defer g.mu.Unlock()
		n := len(g.first)
		for _, q := range g.byAddr {
			n += len(q)
		}
		return n
	}
	var wg sync.WaitGroup
	enqueue := func(name, addr string, known bool) {
		n := waiting()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !g.acquire(addr, known) {
				t.Errorf("%s gave up", name)
				return
			}
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
			g.release()
		}()
		testkit.Eventually(t, 5*time.Second, func() bool { return waiting() == n+1 }, "%s queued", name)
	}
	for i := 1; i <= 3; i++ {
		enqueue(fmt.Sprint("flood", i), "10.0.0.66", false)
	}
	enqueue("neighbour", "10.0.0.7", false)
	enqueue("known", "10.0.0.66", true)
	g.release()
	wg.Wait()
	want := "[known flood1 neighbour flood2 flood3]"
	if got := fmt.Sprint(order); got != want {
		t.Fatalf("served %s, want %s", got, want)
	}

	// an address with recent failures waits behind one without
	if !g.acquire("x", false) {
		t.Fatal("worker not taken")
	}
	g.mu.Lock()
	g.failed("10.0.0.66", time.Now())
	g.mu.Unlock()
	order = nil
	enqueue("flood1", "10.0.0.66", false)
	enqueue("flood2", "10.0.0.66", false)
	enqueue("neighbour", "10.0.0.7", false)
	g.release()
	wg.Wait()
	if got, want := fmt.Sprint(order), "[neighbour flood1 flood2]"; got != want {
		t.Fatalf("served %s, want %s", got, want)
	}

	// a waiter that times out leaves the queue
	g.wait = 50 * time.Millisecond
	if !g.acquire("x", false) {
		t.Fatal("worker not taken")
	}
	if g.acquire("10.0.0.9", false) {
		t.Fatal("a second check ran with one worker")
	}
	if n := waiting(); n != 0 || len(g.turns) != 0 {
		t.Fatalf("%d waiters, %d turns left after a timeout", n, len(g.turns))
	}
	g.release()
	if g.busy != 0 {
		t.Fatalf("busy %d after the last release", g.busy)
	}
}
