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
	// notify sends one state; daemon.SdNotify (tests record instead).
	notify   func(state string) (bool, error)
	watchdog func() (time.Duration, error) // daemon.SdWatchdogEnabled

	quit chan struct{}
	done chan struct{}
	once sync.Once
}

const (
	notReadyMsg   = "not ready (see /readyz): no longer pinging the systemd watchdog; systemd restarts the gateway after WatchdogSec unless it recovers"
	readyAgainMsg = "ready again: pinging the systemd watchdog again"
)

// startNotifier starts telling systemd about g; stopping() ends it.
func startNotifier(g *gateway, log *slog.Logger) *notifier {
	n := &notifier{
		log: log,
		// The very function /readyz answers with, whatever it checks.
		ready: g.adminSources(g.cfg.Load(), g.reg).Ready,
		poll:  100 * time.Millisecond,
	}
	n.start()
	return n
}

// start fills the defaults and runs the notifier.
func (n *notifier) start() {
	if n.notify == nil {
		n.notify = func(state string) (bool, error) { return daemon.SdNotify(false, state) }
	}
	if n.watchdog == nil {
		n.watchdog = func() (time.Duration, error) { return daemon.SdWatchdogEnabled(false) }
	}
	n.quit = make(chan struct{})
	n.done = make(chan struct{})
	go n.run()
}

func (n *notifier) send(state string) bool {
	sent, err := n.notify(state)
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
	interval, err := n.watchdog()
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
		if ok != healthy {
			healthy = ok
			if ok {
				n.log.Info(readyAgainMsg)
			} else {
				n.log.Error(notReadyMsg, "watchdog", interval)
			}
		}
		if ok {
			n.send(daemon.SdNotifyWatchdog)
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
