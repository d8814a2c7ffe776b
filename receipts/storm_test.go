package receipts

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/edgegw/gateway/internal/testkit"
)

// 1,000 devices with 10 receipts each; half of them offline while the
// receipts are produced (half of those with a persistent session, half never
// connected), then all of those reconnect at once. Every receipt reaches its
// own device exactly once, in order. Under -race (or -short) it runs with
// fewer devices.
func TestReconnectStorm(t *testing.T) {
	devices, per := 1000, 10
	if raceEnabled || testing.Short() {
		devices = 200
	}
	e := newEnv(t, "")
	id := func(i int) string { return fmt.Sprintf("storm-%04d", i) }
	terms := make([]*terminal, devices)
	connectAll := func(idx []int, fn func(i int)) {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 100)
		for _, i := range idx {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				fn(i)
			}()
		}
		wg.Wait()
	}
	var online, persistent, fresh []int
	for i := 0; i < devices; i++ {
		switch {
		case i%2 == 0:
			online = append(online, i)
		case i%4 == 1:
			persistent = append(persistent, i)
		default:
			fresh = append(fresh, i)
		}
	}
	connectAll(online, func(i int) {
		terms[i] = connect(t, e.addr, id(i), true)
		terms[i].subscribe(t, "terminals/"+id(i)+"/receipts")
	})
	connectAll(persistent, func(i int) {
		tm := connect(t, e.addr, id(i), false)
		tm.subscribe(t, "terminals/"+id(i)+"/receipts")
		tm.c.Disconnect(50)
	})
	// offline means offline for the broker too: a disconnect not yet
	// processed would take (and acknowledge) receipts meant to wait
	testkit.Eventually(t, 30*time.Second, func() bool {
		for _, i := range persistent {
			if cl, ok := e.brk.Server().Clients.Get(id(i)); ok && !cl.Closed() {
				return false
			}
		}
		return true
	}, "persistent devices disconnected")

	start := time.Now()
	for i := 0; i < devices; i++ {
		e.produce(id(i), 0, per)
	}
	for _, i := range online {
		waitReceived(t, terms[i], want(id(i), 0, per))
	}
	t.Logf("%d receipts to %d online devices within %v of the first produce", len(online)*per, len(online), time.Since(start))
	testkit.Eventually(t, 60*time.Second, func() bool { return e.totalPending() == (devices-len(online))*per },
		"pending %d, want %d", e.totalPending(), (devices-len(online))*per)

	start = time.Now()
	connectAll(append(append([]int(nil), persistent...), fresh...), func(i int) {
		terms[i] = connect(t, e.addr, id(i), i%4 != 1)
		if i%4 != 1 {
			terms[i].subscribe(t, "terminals/"+id(i)+"/receipts")
		}
	})
	for i := 0; i < devices; i++ {
		waitReceived(t, terms[i], want(id(i), 0, per))
	}
	t.Logf("%d receipts to %d reconnecting devices within %v", (devices-len(online))*per, devices-len(online), time.Since(start))
	testkit.Eventually(t, 30*time.Second, func() bool { return e.totalPending() == 0 }, "pending %d", e.totalPending())
}
