package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// config serves GET /config: the running configuration as a JSON object of
// key path -> value (config.Flatten), secrets redacted by the source. It is
// what `gateway check --against` compares a file with.
func (s *Server) config(w http.ResponseWriter, _ *http.Request) {
	if s.src.Config == nil {
		http.Error(w, "the running configuration is not available", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(s.src.Config()); err != nil {
		s.log.Debug("admin: write config", "err", err)
	}
}

// FetchConfig reads GET /config from the admin endpoint at addr (as for
// FetchStatus).
func FetchConfig(ctx context.Context, addr string) (map[string]string, error) {
	return FetchConfigWithToken(ctx, addr, "")
}

// FetchConfigWithToken is FetchConfig with a bearer token ("" sends none).
func FetchConfigWithToken(ctx context.Context, addr, token string) (map[string]string, error) {
	url, err := statusURL(addr)
	if err != nil {
		return nil, err
	}
	url = strings.TrimSuffix(url, "/status") + "/config"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("admin: config request %s: %w", url, err)
	}
	req.Header.Set("Accept", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin: fetch config: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("admin: fetch config %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	var m map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		return nil, fmt.Errorf("admin: decode config from %s: %w", url, err)
	}
	return m, nil
}
