package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/internal/console"
)

// What the edges of the data path report (issue "no silent loss at the
// edges"): dead letters, routes waiting on their topic, files quarantined at
// start, and problems an operator must fix (a duplicated gateway id, an
// unusable buffer).

// RouteWait is a route waiting on its Kafka topic, as the bridge reports it.
type RouteWait struct {
	Topic  string
	Reason string // topic_missing | not_authorized
	Error  string
	Since  time.Time
	Retry  time.Time
}

// DeadLetterStore is the buffer's dead-letter store (*buffer.Buffer).
type DeadLetterStore interface {
	DeadLetters(limit int) ([]buffer.DeadLetterEntry, error)
	ResendDeadLetters(ids []uint64) (int, error)
	DropDeadLetters(ids []uint64) (int, error)
}

// WaitReport is RouteReport.Waiting.
type WaitReport struct {
	Reason            string     `json:"reason"`
	Topic             string     `json:"topic"`
	Error             string     `json:"error,omitempty"`
	Since             time.Time  `json:"since"`
	NextRetry         *time.Time `json:"next_retry,omitempty"`
	WaitingForSeconds float64    `json:"waiting_for_seconds"`
}

// edgeReports adds dead letters, waits, quarantined files and problems to a
// status document.
func edgeReports(src *Sources, st *Status, now time.Time) {
	var counts map[string]map[string]uint64
	if src.DeadLetterCounts != nil {
		counts = src.DeadLetterCounts()
	}
	var waits map[string]RouteWait
	if src.Waiting != nil {
		waits = src.Waiting()
	}
	seen := map[string]bool{}
	for _, r := range st.Routes {
		seen[r.Name] = true
	}
	var extra []string
	for name, byReason := range counts {
		if !seen[name] && len(byReason) > 0 {
			extra = append(extra, name)
			seen[name] = true
		}
	}
	for name := range waits {
		if !seen[name] {
			extra = append(extra, name)
			seen[name] = true
		}
	}
	sort.Strings(extra)
	for _, name := range extra {
		st.Routes = append(st.Routes, RouteReport{Name: name})
	}
	for i := range st.Routes {
		r := &st.Routes[i]
		if c := counts[r.Name]; len(c) > 0 {
			r.DeadLetters = map[string]uint64{}
			for reason, n := range c {
				r.DeadLetters[reason] = n
				st.DeadLettersTotal += n
			}
		}
		if w, ok := waits[r.Name]; ok {
			r.Waiting = &WaitReport{Reason: w.Reason, Topic: w.Topic, Error: w.Error, Since: w.Since,
				NextRetry: timePtr(w.Retry), WaitingForSeconds: nonNegative(now.Sub(w.Since).Seconds())}
		}
	}
	if src.QuarantinedFiles != nil {
		if q := src.QuarantinedFiles(); len(q) > 0 {
			st.QuarantinedFiles = q
		}
	}
	if src.Problems != nil {
		st.Problems = src.Problems()
	}
}

// deadLetterRequest is the body of POST /deadletters/resend and /drop.
type deadLetterRequest struct {
	IDs []uint64 `json:"ids"`
	All bool     `json:"all"`
}

// DeadLetterResult answers the dead-letter endpoints.
type DeadLetterResult struct {
	Done  int                      `json:"done"`
	Error string                   `json:"error,omitempty"`
	List  []buffer.DeadLetterEntry `json:"list,omitempty"`
}

func (s *Server) deadLetterRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /deadletters", func(w http.ResponseWriter, r *http.Request) {
		if s.src.DeadLetters == nil {
			http.NotFound(w, r)
			return
		}
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		list, err := s.src.DeadLetters.DeadLetters(limit)
		writeDL(w, DeadLetterResult{Done: len(list), List: list}, err)
	})
	act := func(do func([]uint64) (int, error)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if s.src.DeadLetters == nil {
				http.NotFound(w, r)
				return
			}
			var req deadLetterRequest
			if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
				writeDLCode(w, http.StatusBadRequest, DeadLetterResult{}, fmt.Errorf("body: %w", err))
				return
			}
			ids := req.IDs
			if req.All {
				list, err := s.src.DeadLetters.DeadLetters(0)
				if err != nil {
					writeDL(w, DeadLetterResult{}, err)
					return
				}
				ids = ids[:0]
				for _, e := range list {
					ids = append(ids, e.ID)
				}
			}
			n, err := do(ids)
			writeDL(w, DeadLetterResult{Done: n}, err)
		}
	}
	mux.HandleFunc("POST /deadletters/resend", func(w http.ResponseWriter, r *http.Request) {
		act(s.src.DeadLetters.ResendDeadLetters)(w, r)
	})
	mux.HandleFunc("POST /deadletters/drop", func(w http.ResponseWriter, r *http.Request) {
		act(s.src.DeadLetters.DropDeadLetters)(w, r)
	})
}

func writeDL(w http.ResponseWriter, res DeadLetterResult, err error) {
	writeDLCode(w, http.StatusInternalServerError, res, err)
}

// writeDLCode answers with res; with an error, status code and its text.
func writeDLCode(w http.ResponseWriter, code int, res DeadLetterResult, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		res.Error = err.Error()
		w.WriteHeader(code)
	}
	_ = json.NewEncoder(w).Encode(res)
}

// DeadLetterCall runs a dead-letter action on the gateway behind the admin
// address: op is "ls", "resend" or "drop". token is the admin bearer token
// ("" sends none).
func DeadLetterCall(ctx context.Context, addr, token, op string, ids []uint64, all bool, limit int) (*DeadLetterResult, error) {
	base, err := statusURL(addr)
	if err != nil {
		return nil, err
	}
	base = strings.TrimSuffix(base, "/status")
	var req *http.Request
	switch op {
	case "ls":
		req, err = http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/deadletters?limit=%d", base, limit), nil)
	case "resend", "drop":
		body, _ := json.Marshal(deadLetterRequest{IDs: ids, All: all})
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, base+"/deadletters/"+op, strings.NewReader(string(body)))
	default:
		return nil, fmt.Errorf("unknown dead-letter operation %q", op)
	}
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		// not the endpoint's answer (401 without the token, 404 from an
		// older release): its text says why
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("admin %s: %s: %s", addr, resp.Status, strings.TrimSpace(string(body)))
	}
	var res DeadLetterResult
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&res); err != nil {
		return nil, fmt.Errorf("admin %s: %s: %w", addr, resp.Status, err)
	}
	if res.Error != "" {
		return &res, errors.New(res.Error)
	}
	return &res, nil
}

// edgeLines prints what edgeReports added, for `gateway status`.
func edgeLines(w io.Writer, st *Status) {
	for _, p := range st.Problems {
		fmt.Fprintf(w, "PROBLEM: %s\n", console.Escape(p))
	}
	for file, kept := range st.QuarantinedFiles {
		fmt.Fprintf(w, "quarantined: %s could not be opened; moved aside as %s, a fresh one is in use\n", console.Escape(file), console.Escape(kept))
	}
	for _, r := range st.Routes {
		if r.Waiting != nil {
			fmt.Fprintf(w, "route %s WAITING on topic %s (%s) for %s: %s\n", console.Escape(r.Name), console.Escape(r.Waiting.Topic),
				console.Escape(r.Waiting.Reason), FormatDuration(secondsDuration(r.Waiting.WaitingForSeconds)), console.Escape(r.Waiting.Error))
		}
	}
	if st.DeadLettersTotal > 0 {
		var parts []string
		for _, r := range st.Routes {
			for reason, n := range r.DeadLetters {
				parts = append(parts, fmt.Sprintf("%s/%s %d", console.Escape(r.Name), console.Escape(reason), n))
			}
		}
		sort.Strings(parts)
		fmt.Fprintf(w, "dead letters: %d (%s); see `gateway deadletter ls`\n", st.DeadLettersTotal, strings.Join(parts, ", "))
	}
}
