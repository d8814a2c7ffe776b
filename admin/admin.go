// Package admin serves the gateway's HTTP admin endpoint (CONTRACT §5):
// /healthz, /readyz, /metrics and /status, and holds the client side of
// `gateway status`.
//
// Admin owns no state. Everything it reports is read, at request or scrape
// time, through the functions in Sources, so /status and /metrics can never
// disagree with the components they describe.
package admin

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/edgegw/gateway/buffer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Link states the admin endpoint knows by name. The bridge may report others
// (for example "connecting"); any state but LinkUp counts as not up.
const (
	LinkUp   = "up"
	LinkDown = "down"
)

// Sources are the read-only views admin reports on. Every function may be
// called concurrently from HTTP handlers and must not block for long.
// Ready, Routes, Backlog and Link are required; the rest may be nil (or
// zero), which reports "not available" rather than an error.
type Sources struct {
	GatewayID string
	Version   string
	// DataDir is the gateway's data_dir as an absolute path, and Epoch its
	// buffer's epoch: with the process id they say which gateway answered,
	// so a tool pointed at one data dir never reads another gateway's
	// endpoint by mistake (two gateways on one box).
	DataDir string
	Epoch   func() string
	// Ready reports whether MQTT listens and the buffer is open. Kafka being
	// unreachable must not make it false: buffering is normal work.
	Ready func() bool
	// Routes are the configured routes, in config order.
	Routes func() []RouteInfo
	// Backlog is the undelivered backlog per route (buffer.Stats).
	Backlog func() map[string]buffer.RouteStats
	// DiskUsed is the bytes held by undelivered data (buffer.Total bytes).
	DiskUsed func() int64
	// DiskFile is the size of the buffer file on disk.
	DiskFile func() int64
	// Quarantined is the path a corrupt buffer file was moved to at start, or "".
	Quarantined func() string
	// Buffer answers GET /buffer and /buffer/peek; nil: 404.
	Buffer BufferView
	// DiskBudget is buffer.max_disk_bytes; 0 means no budget is reported.
	DiskBudget int64
	// DiskBudgetNow, if set, is read instead of DiskBudget at request time,
	// so a budget changed by a config reload shows.
	DiskBudgetNow func() int64
	// Drops maps route -> reason ("max_age", "drop_oldest", "rejected") -> count.
	Drops func() map[string]map[string]uint64
	// Link is the uplink's state as the bridge sees it.
	Link func() LinkStatus
	// ReceiptsPending maps device -> receipts waiting in its outbox.
	ReceiptsPending func() map[string]int
	// ReceiptsDropped maps reason ("max_age", "invalid_device") -> receipts
	// dropped undelivered since start.
	ReceiptsDropped func() map[string]uint64
	// Gatherer holds everyone else's metrics; served on /metrics next to
	// admin's own gauges. Nil serves admin's gauges only.
	Gatherer prometheus.Gatherer
	// Config is the running configuration as key path -> value with
	// secrets redacted, served on GET /config; nil: 404.
	Config func() map[string]string

	// DeadLetterCounts maps route -> reason -> records in the dead-letter
	// store; nil: not reported.
	DeadLetterCounts func() map[string]map[string]uint64
	// DeadLetters serves /deadletters (list, resend, drop); nil: 404.
	DeadLetters DeadLetterStore
	// Waiting lists the routes waiting on a missing or unauthorized topic.
	Waiting func() map[string]RouteWait
	// QuarantinedFiles maps a state file (sessions.db, receipts.db) that
	// could not be opened at start to where it was moved.
	QuarantinedFiles func() map[string]string
	// Problems are conditions an operator must fix (e.g. another box uses
	// this gateway's id; the buffer is unusable).
	Problems func() []string
	// Token, when set, is required as "Authorization: Bearer <token>" on
	// every request but /healthz (admin.token_file).
	Token string
	// Pprof serves /debug/pprof/ (admin.pprof); off by default, as profiles
	// show memory contents and cost CPU.
	Pprof bool
}

// RouteInfo is one configured route, as far as the admin endpoint shows it.
type RouteInfo struct {
	Name       string
	Match      string
	KafkaTopic string
	Priority   int           // 0 drains first
	MaxAge     time.Duration // 0 = no limit
	MaxBytes   int64         // 0 = only the global budget applies
	OnFull     string        // reject | drop_oldest
}

// LinkStatus is the uplink's state, mapped by the caller from the bridge.
type LinkStatus struct {
	State      string    // LinkUp, LinkDown, or another bridge state
	LastAck    time.Time // last Kafka acknowledgement; zero if none yet
	DownSince  time.Time // when the link stopped being up; zero while up
	LastError  string    // the most recent error talking to Kafka, if any
	RecentRate float64   // records/s drained recently; 0 if nothing drained
	// OutsideWindow: link.windows are set and none is open, so only urgent
	// routes drain; NextWindow is when the next one opens.
	OutsideWindow bool
	NextWindow    time.Time
}

// Server is the admin HTTP endpoint. Create it with New, then Start.
type Server struct {
	addr string
	src  Sources
	log  *slog.Logger
	now  func() time.Time // replaced in tests for deterministic ages

	handler http.Handler

	mu      sync.Mutex
	srv     *http.Server
	ln      net.Listener
	started bool
	closed  bool
	done    chan struct{} // closed when Serve returned
}

// New checks addr and src and builds the handlers; it does not listen.
func New(addr string, src Sources, logger *slog.Logger) (*Server, error) {
	if addr == "" {
		return nil, errors.New("admin: address is empty")
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("admin: address %q: %w", addr, err)
	}
	switch {
	case src.Ready == nil:
		return nil, errors.New("admin: Sources.Ready is required")
	case src.Routes == nil:
		return nil, errors.New("admin: Sources.Routes is required")
	case src.Backlog == nil:
		return nil, errors.New("admin: Sources.Backlog is required")
	case src.Link == nil:
		return nil, errors.New("admin: Sources.Link is required")
	case src.DiskBudget < 0:
		return nil, fmt.Errorf("admin: Sources.DiskBudget %d is negative", src.DiskBudget)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{addr: addr, src: src, log: logger, now: time.Now}

	// Admin's gauges live in a registry of its own so that they are read
	// from Sources at scrape time and never collide with registration order
	// in the caller's registry.
	own := prometheus.NewRegistry()
	if err := own.Register(&collector{s: s}); err != nil {
		return nil, fmt.Errorf("admin: register collector: %w", err)
	}
	gatherers := prometheus.Gatherers{own}
	if src.Gatherer != nil {
		gatherers = append(gatherers, src.Gatherer)
	}
	metrics := promhttp.HandlerFor(gatherers, promhttp.HandlerOpts{
		// A broken metric elsewhere should not hide the rest from an
		// operator whose link is already in trouble.
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      promLogger{logger},
	})

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok"))
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /status", s.status)
	mux.HandleFunc("GET /config", s.config)
	s.bufferHandlers(mux)
	s.deadLetterRoutes(mux)
	// Profiles for diagnosing a box in the field, only when asked for.
	if src.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	s.handler = mux
	if src.Token != "" {
		s.handler = requireToken(src.Token, mux)
	}
	return s, nil
}

// requireToken lets /healthz through (a liveness probe holds no secret) and
// every other request only with the bearer token.
func requireToken(token string, next http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" && subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="gateway admin"`)
			http.Error(w, "unauthorized: this endpoint needs Authorization: Bearer <admin.token_file's token>", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// ReadToken reads a bearer token from a file (admin.token_file): the first
// line, trimmed. An empty token is an error: it would protect nothing.
func ReadToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("admin.token_file: %w", err)
	}
	tok, _, _ := strings.Cut(string(data), "\n")
	tok = strings.TrimSpace(tok)
	if tok == "" {
		return "", fmt.Errorf("admin.token_file: %s holds no token", path)
	}
	return tok, nil
}

// Handler is the endpoint's HTTP handler, for callers that serve it on a
// listener of their own.
func (s *Server) Handler() http.Handler { return s.handler }

// Start listens on the configured address and serves in the background.
// It returns the listen error, if any.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("admin: start after close")
	}
	if s.started {
		return errors.New("admin: already started")
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("admin: listen %s: %w", s.addr, err)
	}
	s.ln = ln
	s.srv = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	s.done = make(chan struct{})
	s.started = true
	go func(srv *http.Server, done chan struct{}) {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin: serve stopped", "addr", ln.Addr().String(), "err", err)
		}
	}(s.srv, s.done)
	s.log.Info("admin endpoint listening", "addr", ln.Addr().String())
	return nil
}

// Addr is the address actually listened on (useful with port 0), or the
// configured address before Start.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return s.ln.Addr().String()
	}
	return s.addr
}

// Close stops accepting connections and waits, until ctx ends, for requests
// in progress. It is safe to call more than once and before Start.
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	srv, done := s.srv, s.done
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	err := srv.Shutdown(ctx)
	if err != nil {
		// The deadline passed with requests still running: cut them off
		// so that nothing of ours outlives Close.
		_ = srv.Close()
		err = fmt.Errorf("admin: shutdown: %w", err)
	}
	<-done
	return err
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !s.src.Ready() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("not ready"))
		return
	}
	_, _ = w.Write([]byte("ready"))
}

// promLogger adapts slog to promhttp's Println-style error log.
type promLogger struct{ l *slog.Logger }

func (p promLogger) Println(v ...any) {
	p.l.Warn("admin: metrics", "err", fmt.Sprint(v...))
}
