package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"strconv"
	"strings"

	"github.com/edgegw/gateway/buffer"
)

// BufferView is what GET /buffer reads: the running gateway's own look
// inside its buffer, for `gateway buffer` while the file is in use.
type BufferView interface {
	Inspect() buffer.Report
	Peek(route string, n int) ([]buffer.Record, error)
}

// BufferPeek is one GET /buffer/peek answer.
type BufferPeek struct {
	Route   string          `json:"route"`
	Records []buffer.Record `json:"records"`
}

func (s *Server) bufferHandlers(mux *http.ServeMux) {
	mux.HandleFunc("GET /buffer", func(w http.ResponseWriter, _ *http.Request) {
		if s.src.Buffer == nil {
			http.Error(w, "no buffer", http.StatusNotFound)
			return
		}
		writeJSON(w, s.src.Buffer.Inspect())
	})
	mux.HandleFunc("GET /buffer/peek", func(w http.ResponseWriter, r *http.Request) {
		if s.src.Buffer == nil {
			http.Error(w, "no buffer", http.StatusNotFound)
			return
		}
		n, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil || n <= 0 || n > 1000 {
			n = 10
		}
		route := r.URL.Query().Get("route")
		recs, err := s.src.Buffer.Peek(route, n)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, BufferPeek{Route: route, Records: recs})
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// FetchBuffer reads GET /buffer (peek == "") or GET /buffer/peek from the
// admin endpoint at addr into out.
func FetchBuffer(ctx context.Context, addr, token, peek string, n int, out any) error {
	base, err := statusURL(addr)
	if err != nil {
		return err
	}
	url := strings.TrimSuffix(base, "/status") + "/buffer"
	if peek != "" {
		url += fmt.Sprintf("/peek?route=%s&n=%d", neturl.QueryEscape(peek), n)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("admin: %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
