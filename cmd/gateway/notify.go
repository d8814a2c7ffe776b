package main

import (
	"log/slog"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// notifier speaks systemd's notify protocol (the unit is Type=notify with a
// WatchdogSec): READY=1 once the gateway is ready in the sense of /readyz
// (MQTT listens and the buffer accepts writes), WATCHDOG=1 at half the
// watchdog interval for as long as it stays ready, STOPPING=1 when shutdown
// begins. A gateway that stops being ready stops pinging, so systemd restarts
// it after WatchdogSec. Without NOTIFY_SOCKET (not under systemd) every send
// is a no-op.
type notifier struct {
	log   *slog.Logger
	ready func() bool
	poll  time.Duration // how often readiness is checked before READY=1

	quit chan struct{}
	done chan struct{}
	once sync.Once
}

// startNotifier starts telling systemd about g; stopping() ends it.
func startNotifier(g *gateway, log *slog.Logger) *notifier {
	n := &notifier{
		log: log,
		// The very function /readyz answers with, whatever it checks.
		ready: g.adminSources(g.cfg.Load(), g.reg).Ready,
		poll:  100 * time.Millisecond,
		quit:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	go n.run()
	return n
}

func (n *notifier) send(state string) bool {
	sent, err := daemon.SdNotify(false, state)
	if err != nil {
		n.log.Warn("systemd notify failed", "state", state, "error", err)
	}
	return sent
}

func (n *notifier) run() {
	defer close(n.done)
	t := time.NewTicker(n.poll)
	defer t.Stop()
	for !n.ready() {
		select {
		case <-n.quit:
			return
		case <-t.C:
		}
	}
	if n.send(daemon.SdNotifyReady) {
		n.log.Info("told systemd the gateway is ready")
	}
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		n.log.Warn("systemd watchdog settings unreadable; not pinging", "error", err)
		return
	}
	if interval <= 0 {
		return
	}
	t.Reset(interval / 2)
	healthy := true
	for {
		select {
		case <-n.quit:
			return
		case <-t.C:
		}
		ok := n.ready()
		if ok {
			n.send(daemon.SdNotifyWatchdog)
		}
		if ok != healthy {
			healthy = ok
			if ok {
				n.log.Info("ready again: pinging the systemd watchdog again")
			} else {
				n.log.Error("not ready (see /readyz): no longer pinging the systemd watchdog; systemd restarts the gateway after WatchdogSec unless it recovers", "watchdog", interval)
			}
		}
	}
}

// stopping tells systemd that shutdown has begun and stops the pings; safe
// to call twice.
func (n *notifier) stopping() {
	n.once.Do(func() {
		close(n.quit)
		<-n.done
		n.send(daemon.SdNotifyStopping)
	})
}
