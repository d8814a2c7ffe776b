package main

import (
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/edgegw/gateway/admin"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/fleet"
)

// The fleet on the box (docs/fleet.md): status records up and signed config
// overlays down, wired to the same /status snapshot and the same reload
// path as the rest of the gateway.

// processStarted is when this process started (a status record's uptime_s).
var processStarted = time.Now()

// fleetBoot is what a start needs before the components exist: the keys
// overlays are verified with, and the applied overlays merged over the file.
type fleetBoot struct {
	keys   []fleet.PublicKey
	layers [][]byte
	// notInForce says why the applied overlays do not run (the file with
	// them does not validate): the file runs alone.
	notInForce error
}

// bootFleet merges the overlays kept in data_dir over the local file. It
// returns the config to start with; an error is a broken fleet.config_keys
// (a problem with the file, like any other).
func bootFleet(file *config.Config, path string) (*config.Config, *fleetBoot, error) {
	fb := &fleetBoot{}
	if file.Fleet.ConfigTopic == "" {
		return file, fb, nil
	}
	keys, err := fleet.LoadPublicKeys(file.Fleet.ConfigKeys)
	if err != nil {
		return nil, nil, err
	}
	fb.keys = keys
	stored, err := fleet.LoadStore(file.DataDir)
	if err != nil {
		fb.notInForce = err
		return file, fb, nil
	}
	ok, _ := fleet.VerifyStored(stored, keys, file.ID) // the agent reports the refused ones
	fb.layers = fleet.Layers(ok, file.ID)
	if len(fb.layers) == 0 {
		return file, fb, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("config: %w", err)
	}
	eff, err := config.ParseLayers(data, fb.layers, os.Environ())
	if err != nil {
		fb.notInForce = err
		return file, fb, nil
	}
	return eff, fb, nil
}

// startFleet starts the fleet agent once the gateway and its config
// watcher run. Without fleet.status_topic and fleet.config_topic it does
// nothing.
func (g *gateway) startFleet(fb *fleetBoot, log *slog.Logger) error {
	cfg := g.cfg.Load()
	if cfg.Fleet.StatusTopic == "" && cfg.Fleet.ConfigTopic == "" {
		return nil
	}
	src := g.adminSources(cfg, g.reg)
	opts := fleet.Options{
		Config:        cfg,
		Version:       version,
		Started:       processStarted,
		Snapshot:      func() *admin.Status { return admin.BuildStatus(&src, time.Now()) },
		Link:          src.Link,
		UrgentBacklog: g.urgentBacklog,
		Stored:        func() uint64 { return g.buf.Counters().Records },
		Backlog:       func() int64 { n, _ := g.buf.Total(); return n },
		Clients: func() (int, int) {
			srv := g.brk.Server()
			sessions := 0
			for _, cl := range srv.Clients.GetAll() {
				if !cl.Net.Inline { // the in-process publisher of receipts
					sessions++
				}
			}
			return int(atomic.LoadInt64(&srv.Info.ClientsConnected)), sessions
		},
		WrittenBytes: processWriteBytes,
		Running:      g.cfg.Load,
		Keys:         fb.keys,
		Logger:       log.With("component", "fleet"),
		Registerer:   g.reg,
	}
	if cfg.Fleet.ConfigTopic != "" {
		r := g.reloader
		if r == nil {
			return fmt.Errorf("fleet: remote config needs the config file watcher")
		}
		opts.Check = r.checkLayers
		opts.Apply = r.applyLayers
	}
	a, err := fleet.New(opts)
	if err != nil {
		return err
	}
	if g.reloader != nil {
		g.reloader.mu.Lock()
		g.reloader.layers = fb.layers
		g.reloader.onLayers = a.SetInForce
		g.reloader.mu.Unlock()
	}
	if fb.notInForce != nil {
		a.SetInForce(false, fb.notInForce)
	}
	g.fleet = a
	a.Start()
	log.Info("fleet agent started", "status_topic", cfg.Fleet.StatusTopic, "status_interval", cfg.Fleet.StatusInterval,
		"config_topic", cfg.Fleet.ConfigTopic, "overlays", len(fb.layers))
	return nil
}

// urgentBacklog is the backlog of the most urgent configured route(s): a
// status record waits behind it.
func (g *gateway) urgentBacklog() int64 {
	routes := g.rules.Load().Routes()
	if len(routes) == 0 {
		return 0
	}
	top := routes[0].Priority
	for _, r := range routes {
		top = min(top, r.Priority)
	}
	stats := g.buf.Stats()
	var n int64
	for _, r := range routes {
		if r.Priority == top {
			n += stats[r.Name].Messages
		}
	}
	return n
}
