package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/edgegw/gateway/admin"
	"github.com/edgegw/gateway/bridge"
	"github.com/edgegw/gateway/broker"
	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/fleet"
	"github.com/edgegw/gateway/receipts"
	"github.com/edgegw/gateway/rules"
)

// gateway holds the running components. Start order: buffer, admin, broker,
// receipts, bridge. Stop order, with the database last: broker (listeners,
// then the ackers finishing their commits), receipts (no terminal can ack any
// more: it commits the offsets of what it stored and appends the last
// confirmations to the still-open buffer), bridge (in-flight Kafka sends),
// admin, buffer.
type gateway struct {
	log   *slog.Logger
	buf   *buffer.Buffer
	brk   *broker.Broker
	brg   *bridge.Bridge
	rcp   *receipts.Receipts
	adm   *admin.Server
	rules atomic.Pointer[rules.Set] // swapped by a reload

	// Hot reload (reload.go): the config in force, the registry its
	// metrics go to, the file watcher, and extra appliers for parts that
	// follow a reload (e.g. the buffer's budgets).
	cfg      atomic.Pointer[config.Config]
	reg      *prometheus.Registry
	reloader *reloader
	onReload []func(*config.Config)

	fleet *fleet.Agent // status records up, signed overlays down (fleet.go)

	stopOnce sync.Once
	stopErr  error
}

// startGateway starts every component; on failure it stops what started.
func startGateway(cfg *config.Config, log *slog.Logger) (_ *gateway, err error) {
	g := &gateway{log: log}
	g.rules.Store(rules.Compile(cfg))
	g.cfg.Store(cfg)
	defer func() {
		if err != nil {
			g.stop()
		}
	}()
	reg := prometheus.NewRegistry()
	g.reg = reg
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	bopts := buffer.Options{
		Path:   filepath.Join(cfg.DataDir, "buffer.db"),
		Logger: log.With("component", "buffer"),
		Limits: bufferLimits(cfg, g.rules.Load()),
		// the operator's trade of PUBACK latency for flash wear
		CommitWait:       cfg.Buffer.CommitWait,
		CommitMinRecords: cfg.Buffer.CommitMinRecords,
		PurgeInterval:    cfg.Buffer.PurgeInterval,
	}
	if testBufferOptions != nil {
		testBufferOptions(&bopts)
	}
	g.buf, err = buffer.Open(bopts)
	if err != nil {
		return nil, err
	}
	reg.MustRegister(g.buf.Collector())
	if _, ok := processWriteBytes(); ok {
		reg.MustRegister(storageWritten())
	}
	g.brk, err = broker.New(broker.Options{
		Config:     cfg,
		Rules:      g.rules.Load(),
		Buffer:     g.buf,
		Logger:     log.With("component", "broker"),
		Registerer: reg,
	})
	if err != nil {
		return nil, err
	}
	g.brg, err = bridge.New(g.buf, bridge.Options{
		Kafka:      cfg.Kafka,
		GatewayID:  cfg.ID,
		Link:       cfg.Link,
		Priority:   g.rules.Load().Priority,
		Logger:     log.With("component", "bridge"),
		Registerer: reg,
	})
	if err != nil {
		return nil, err
	}
	g.rcp, err = receipts.New(receipts.Options{
		Config:     cfg,
		Broker:     g.brk,
		Buffer:     g.buf,
		Logger:     log.With("component", "receipts"),
		Registerer: reg,
	})
	if err != nil {
		return nil, err
	}
	if cfg.Admin.Address != "" {
		src := g.adminSources(cfg, reg)
		src.Pprof = cfg.Admin.Pprof
		if cfg.Admin.TokenFile != "" {
			if src.Token, err = admin.ReadToken(cfg.Admin.TokenFile); err != nil {
				return nil, err
			}
		}
		g.adm, err = admin.New(cfg.Admin.Address, src, log.With("component", "admin"))
		if err != nil {
			return nil, err
		}
		if err = g.adm.Start(); err != nil {
			return nil, fmt.Errorf("admin.address %s: %w", cfg.Admin.Address, err)
		}
	}
	if err = g.brk.Start(); err != nil {
		return nil, err
	}
	g.rcp.Start()
	g.brg.Start()
	if h, err := os.Hostname(); err == nil && cfg.ID == h {
		log.Warn("the gateway id is the host name (the default when id is not set); boxes flashed from one image share it and their records would share gw.id: set a unique id per box",
			"id", cfg.ID)
	}
	log.Info("gateway started", "id", cfg.ID, "mqtt", g.brk.Addr("tcp"), "admin", cfg.Admin.Address,
		"kafka", cfg.Kafka.Brokers, "data_dir", cfg.DataDir, "backlog", backlogCount(g.buf))
	return g, nil
}

// testBufferOptions, when a test sets it, adjusts the buffer's options (e.g.
// a small compaction threshold).
var testBufferOptions func(*buffer.Options)

// wait blocks until a signal arrives (a clean stop) or the buffer becomes
// unusable (DESIGN invariant 13: components report, main exits). It returns
// the signal, or nil and the buffer's error.
func (g *gateway) wait(sig <-chan os.Signal) (os.Signal, error) {
	select {
	case s := <-sig:
		return s, nil
	case <-g.buf.Failed():
		return nil, g.buf.Err()
	}
}

func backlogCount(b *buffer.Buffer) int64 { n, _ := b.Total(); return n }

func (g *gateway) adminSources(cfg *config.Config, reg *prometheus.Registry) admin.Sources {
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		dataDir = cfg.DataDir
	}
	return admin.Sources{
		GatewayID: cfg.ID,
		Version:   version,
		DataDir:   dataDir,
		Epoch:     g.buf.Epoch,
		// Ready only while the buffer can take writes: a buffer made
		// unusable (a failed compaction swap) is 503 until the process exits.
		// And only while the broker serves: its event loop stuck (a client
		// wedged inside mochi) is 503 too, so the watchdog restarts us.
		Ready: func() bool { return g.brk != nil && g.brk.Ready() == nil && g.buf.Err() == nil },
		Routes: func() []admin.RouteInfo {
			var out []admin.RouteInfo
			for _, r := range g.rules.Load().Routes() {
				out = append(out, admin.RouteInfo{Name: r.Name, Match: r.Match, KafkaTopic: r.KafkaTopic,
					Priority: r.Priority, MaxAge: r.MaxAge, MaxBytes: r.MaxBytes, OnFull: r.OnFull})
			}
			return out
		},
		Backlog:    g.buf.Stats,
		DiskUsed:   func() int64 { _, b := g.buf.Total(); return b },
		DiskFile:   g.buf.FileSize,
		DiskBudget: cfg.Buffer.MaxDiskBytes,
		// A reload may change it.
		DiskBudgetNow: func() int64 { return g.cfg.Load().Buffer.MaxDiskBytes },
		Drops:         func() map[string]map[string]uint64 { return drops(g.buf, g.brk) },
		Quarantined:   g.buf.Quarantined,
		Buffer:        g.buf,
		Link: func() admin.LinkStatus {
			l := g.brg.Link()
			return admin.LinkStatus{State: l.State, LastAck: l.LastAck, DownSince: l.DownSince,
				LastError: l.LastError, RecentRate: l.RecentRate, OutsideWindow: l.OutsideWindow, NextWindow: l.NextWindow}
		},
		ReceiptsPending: g.rcp.Pending,
		ReceiptsDropped: g.rcp.DroppedByReason,
		Gatherer:        reg,
		Config:          g.runningConfig,

		DeadLetterCounts: func() map[string]map[string]uint64 {
			c, err := g.buf.DeadLetterCounts()
			if err != nil {
				g.log.Warn("reading the dead-letter counts failed", "error", err)
			}
			return c
		},
		DeadLetters: g.buf,
		Waiting: func() map[string]admin.RouteWait {
			out := map[string]admin.RouteWait{}
			for r, w := range g.brg.Waiting() {
				out[r] = admin.RouteWait{Topic: w.Topic, Reason: w.Reason, Error: w.Error, Since: w.Since, Retry: w.Retry}
			}
			return out
		},
		QuarantinedFiles: g.quarantinedFiles,
		Problems:         g.problems,
	}
}

// problems are conditions the operator must fix, for /status.
func (g *gateway) problems() []string {
	var out []string
	if err := g.buf.Err(); err != nil {
		out = append(out, "buffer unusable (the gateway exits to be restarted): "+err.Error())
	}
	if err := g.brk.Ready(); err != nil && g.brk.Listening() {
		out = append(out, "MQTT broker stuck (not ready; the watchdog restarts the gateway): "+err.Error())
	}
	if d := g.brg.DuplicateID(); d != "" {
		out = append(out, fmt.Sprintf("another gateway uses the id %q: %s", g.cfg.Load().ID, d))
	}
	return out
}

// stop shuts down in reverse start order; safe to call twice.
func (g *gateway) stop() error {
	g.stopOnce.Do(func() {
		var errs []error
		if g.fleet != nil {
			errs = append(errs, g.fleet.Close()) // no status or overlay during shutdown
		}
		g.reloader.close() // no reload during shutdown
		if g.brk != nil {
			errs = append(errs, g.brk.Close())
		}
		if g.rcp != nil {
			errs = append(errs, g.rcp.Close())
		}
		if g.brg != nil {
			errs = append(errs, g.brg.Close())
		}
		if g.adm != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			errs = append(errs, g.adm.Close(ctx))
			cancel()
		}
		if g.buf != nil {
			errs = append(errs, g.buf.Close())
		}
		g.stopErr = errors.Join(errs...)
	})
	return g.stopErr
}

// quarantinedFiles are the state files moved aside at start because they
// could not be read (the buffer's own is reported under disk).
func (g *gateway) quarantinedFiles() map[string]string {
	out := map[string]string{}
	if q := g.brk.Quarantined(); q != "" {
		out["sessions.db"] = q
	}
	if q := g.rcp.Quarantined(); q != "" {
		out["receipts.db"] = q
	}
	return out
}
