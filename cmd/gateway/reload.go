package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgegw/gateway/admin"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/internal/console"
	"github.com/edgegw/gateway/rules"
)

// Hot reload (CONTRACT §2): a changed config file is validated with the same
// code as at start; a file that does not validate changes nothing (DESIGN
// invariant 7). Of a valid file, routes, unrouted, buffer, link, acl and log
// are applied at once; every other changed key is logged as needing a
// restart and left as it runs. Buffered messages keep the Kafka topic and
// key stored with them; priority follows the new routes by name.

// logSwitch is the process log handler; a reload may change its level and
// its format (text or JSON). Loggers derived with With keep working across
// a format change.
type logSwitch struct {
	w     io.Writer
	level slog.LevelVar
	cur   atomic.Pointer[slog.Handler]
}

func newLogSwitch(c config.Log, w io.Writer) *logSwitch {
	ls := &logSwitch{w: w}
	ls.set(c)
	return ls
}

// set applies a log config (level and format).
func (ls *logSwitch) set(c config.Log) {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level)) // validated by config
	ls.level.Set(level)
	opts := &slog.HandlerOptions{Level: &ls.level}
	var h slog.Handler
	if c.Format == "json" {
		h = slog.NewJSONHandler(ls.w, opts)
	} else {
		h = slog.NewTextHandler(ls.w, opts)
	}
	ls.cur.Store(&h)
}

func (ls *logSwitch) logger() *slog.Logger { return slog.New(&switchHandler{ls: ls}) }

// switchHandler forwards to the logSwitch's current handler with the
// attributes and groups it was derived with, replayed in order.
type switchHandler struct {
	ls  *logSwitch
	ops []func(slog.Handler) slog.Handler
	// keys set at the top level by With so far (read-only once built);
	// grouped: a group is open, later attributes nest and cannot repeat.
	keys    map[string]bool
	grouped bool

	cache atomic.Pointer[derivedHandler]
}

type derivedHandler struct {
	base *slog.Handler
	h    slog.Handler
}

func (s *switchHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= s.ls.level.Level()
}

func (s *switchHandler) handler() slog.Handler {
	base := s.ls.cur.Load()
	if d := s.cache.Load(); d != nil && d.base == base {
		return d.h
	}
	h := *base
	for _, op := range s.ops {
		h = op(h)
	}
	s.cache.Store(&derivedHandler{base: base, h: h})
	return h
}

func (s *switchHandler) Handle(ctx context.Context, r slog.Record) error {
	return s.handler().Handle(ctx, r)
}

func (s *switchHandler) with(op func(slog.Handler) slog.Handler) *switchHandler {
	ops := append(append([]func(slog.Handler) slog.Handler(nil), s.ops...), op)
	return &switchHandler{ls: s.ls, ops: ops, keys: s.keys, grouped: s.grouped}
}

// WithAttrs drops a top-level attribute whose key an outer With already set:
// components add their own "component" to the logger they are given, and
// slog's handlers would print both ("component=bridge component=bridge").
// The outer value wins: it is the one the wiring chose.
func (s *switchHandler) WithAttrs(as []slog.Attr) slog.Handler {
	if !s.grouped {
		var keep []slog.Attr
		for _, a := range as {
			if !s.keys[a.Key] {
				keep = append(keep, a)
			}
		}
		if len(keep) == 0 {
			return s
		}
		as = keep
	}
	n := s.with(func(h slog.Handler) slog.Handler { return h.WithAttrs(as) })
	if !s.grouped {
		n.keys = make(map[string]bool, len(s.keys)+len(as))
		for k := range s.keys {
			n.keys[k] = true
		}
		for _, a := range as {
			n.keys[a.Key] = true
		}
	}
	return n
}

func (s *switchHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return s
	}
	n := s.with(func(h slog.Handler) slog.Handler { return h.WithGroup(name) })
	n.grouped = true
	return n
}

// reloader applies config file changes to a running gateway.
type reloader struct {
	g    *gateway
	path string
	log  *slog.Logger
	logs *logSwitch
	w    *config.Watcher

	mu sync.Mutex // one reload at a time

	// layers are the fleet's signed overlays merged over the file at every
	// reload (fleet.go); onLayers hears whether they validate over it.
	layers   [][]byte
	onLayers func(ok bool, why error)

	ok, failed  prometheus.Counter
	lastOK      prometheus.Gauge
	lastSuccess prometheus.Gauge
}

// watchConfig starts applying changes of the file at path to g. The
// gateway's stop closes the watcher first.
func (g *gateway) watchConfig(path string, logs *logSwitch) error {
	r := &reloader{
		g:    g,
		path: path,
		log:  g.log.With("component", "config"),
		logs: logs,
		ok: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gateway_config_reloads_total",
			Help: "Config file changes applied (including changes that only need a restart, which are logged).",
		}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gateway_config_reload_failures_total",
			Help: "Config file changes refused because the file did not validate; the running config stayed.",
		}),
		lastOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gateway_config_last_reload_successful",
			Help: "1 if the config file on disk is the one running (its last change validated), 0 if it was refused.",
		}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gateway_config_last_reload_success_timestamp_seconds",
			Help: "Unix time the config was last loaded successfully (at start or by a reload).",
		}),
	}
	r.lastOK.Set(1)
	r.lastSuccess.SetToCurrentTime()
	if g.reg != nil {
		for _, c := range []prometheus.Collector{r.ok, r.failed, r.lastOK, r.lastSuccess} {
			if err := g.reg.Register(c); err != nil {
				return fmt.Errorf("config reload metrics: %w", err)
			}
		}
	}
	w, err := config.Watch(path, config.WatchOptions{Logger: r.log}, r.changed)
	if err != nil {
		return err
	}
	r.w = w
	g.reloader = r
	r.log.Info("watching config file for changes", "path", path)
	return nil
}

func (r *reloader) close() {
	if r != nil && r.w != nil {
		r.w.Close()
	}
}

// changed is the watcher's callback: one call per distinct file content.
func (r *reloader) changed(next *config.Config, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.failed.Inc()
		r.lastOK.Set(0)
		var problems config.Problems
		if errors.As(err, &problems) {
			r.log.Error("config file changed but does not validate; keeping the running config",
				"path", r.path, "problems", strings.Join(problems, "; "))
		} else {
			r.log.Error("config file changed but cannot be loaded; keeping the running config", "path", r.path, "error", err)
		}
		return
	}
	if len(r.layers) > 0 {
		next = r.withLayers(next)
	}
	r.apply(next, "config file changed")
	r.ok.Inc()
	r.lastOK.Set(1)
	r.lastSuccess.SetToCurrentTime()
}

// withLayers merges the fleet overlays over the file that just validated.
// If the file with them does not validate, the file runs alone: the local
// file is the base an operator on board can always fall back on.
func (r *reloader) withLayers(file *config.Config) *config.Config {
	data, err := os.ReadFile(r.path)
	if err == nil {
		var eff *config.Config
		if eff, err = config.ParseLayers(data, r.layers, os.Environ()); err == nil {
			if r.onLayers != nil {
				r.onLayers(true, nil)
			}
			return eff
		}
	}
	r.log.Error("the fleet overlay does not validate over the changed file; running the file alone", "path", r.path, "error", err)
	if r.onLayers != nil {
		r.onLayers(false, err)
	}
	return file
}

// checkLayers validates the file with layers merged over it; nothing changes.
func (r *reloader) checkLayers(layers [][]byte) error {
	data, err := os.ReadFile(r.path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	_, err = config.ParseLayers(data, layers, os.Environ())
	return err
}

// applyLayers makes the gateway run the file with layers merged over it,
// through the same diff and hot reload as a changed file; a result that does
// not validate changes nothing. It returns the changed keys that wait for a
// restart.
func (r *reloader) applyLayers(layers [][]byte) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	data, err := os.ReadFile(r.path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	next, err := config.ParseLayers(data, layers, os.Environ())
	if err != nil {
		r.failed.Inc()
		return nil, err
	}
	r.layers = layers
	restart := r.apply(next, "fleet config overlay")
	r.ok.Inc()
	r.lastOK.Set(1)
	r.lastSuccess.SetToCurrentTime()
	return restart, nil
}

// apply swaps in the hot-reloadable parts of next and logs the rest, which
// it returns (the keys that need a restart).
func (r *reloader) apply(next *config.Config, why string) []string {
	g := r.g
	running := g.cfg.Load()
	var hot, restart []string
	for _, c := range config.Diff(running, next) {
		if c.Hot {
			hot = append(hot, c.String())
		} else {
			restart = append(restart, c.Key)
		}
	}
	if running.Kafka.SASL.Password != next.Kafka.SASL.Password {
		restart = append(restart, "kafka.sasl.password") // redacted in the diff, compared here
	}
	if len(restart) > 0 {
		r.log.Warn("config keys changed that need a restart; not applied", "keys", strings.Join(restart, ", "))
	}
	if len(hot) == 0 {
		r.log.Info(why+"; nothing to apply without a restart", "path", r.path)
		return restart
	}
	eff := config.WithRestartKeys(next, running)
	g.applyHot(eff)
	if r.logs != nil {
		r.logs.set(eff.Log)
	}
	g.cfg.Store(eff)
	r.log.Info("config reloaded", "cause", why, "path", r.path, "changes", strings.Join(hot, "; "))
	return restart
}

// applyHot swaps every hot-reloadable part of cfg into the running
// components. Rules first: new publishes route by them at once; the drain
// ranks the backlog by the new priorities from its next batch.
func (g *gateway) applyHot(cfg *config.Config) {
	rs := rules.Compile(cfg)
	g.rules.Store(rs)
	if g.buf != nil {
		g.buf.SetLimits(bufferLimits(cfg, rs))
		g.buf.SetCommitWait(cfg.Buffer.CommitWait, cfg.Buffer.CommitMinRecords)
		g.buf.SetPurgeInterval(cfg.Buffer.PurgeInterval)
	}
	if g.brk != nil {
		g.brk.SetRules(rs)
		g.brk.SetACL(cfg.ACL)
	}
	if g.brg != nil {
		g.brg.SetPriority(rs.Priority)
		g.brg.SetLink(cfg.Link)
	}
	for _, f := range g.onReload {
		f(cfg)
	}
}

// runningConfig is the config in force, flattened with secrets redacted,
// for GET /config.
func (g *gateway) runningConfig() map[string]string { return config.Flatten(g.cfg.Load()) }

// configFlag returns the --config argument of args ("" if none).
func configFlag(args []string) string {
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	path := fs.String("config", "", "")
	_ = fs.Parse(args)
	return *path
}

// checkAgainst is the --against part of `gateway check --config FILE
// --against ADDR`: print what cfg would change in the gateway running
// behind the admin endpoint ADDR, one line per key, each marked hot reload
// or needs restart. Exit 0 (valid, whatever the diff), 1 unreachable.
func checkAgainst(cfg *config.Config, addr, token string, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if st, err := admin.FetchStatusWithToken(ctx, addr, token); err == nil {
		fmt.Fprintf(stdout, "against gateway %s at %s (%s)\n", console.Escape(orDash(st.GatewayID)), addr, orDash(admin.Identity(st)))
	}
	running, err := admin.FetchConfigWithToken(ctx, addr, token)
	if err != nil {
		fmt.Fprintf(stderr, "gateway check: %v\n", err)
		return exitFailure
	}
	changes := config.DiffFlat(running, config.Flatten(cfg))
	if len(changes) == 0 {
		fmt.Fprintln(stdout, "ok: no changes against the running gateway")
		return exitOK
	}
	nHot := 0
	cw := console.NewWriter(stdout)
	defer cw.Flush()
	for _, c := range changes {
		if c.Hot {
			nHot++
		}
		fmt.Fprintln(cw, c.String())
	}
	fmt.Fprintf(cw, "ok: %d changes: %d hot reload, %d need a restart\n", len(changes), nHot, len(changes)-nHot)
	return exitOK
}
