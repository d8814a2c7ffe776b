package admin

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// With a token, every path but /healthz answers 401 without it; pprof is
// absent unless enabled.
func TestTokenAndPprof(t *testing.T) {
	f := &fakeSources{routes: []RouteInfo{{Name: "payments"}}}
	f.ready.Store(true)
	src := f.sources()
	src.Token = "s3cret-token"
	_, base := startServer(t, src)

	if code, _, _ := get(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz without token: %d", code)
	}
	for _, p := range []string{"/status", "/metrics", "/readyz", "/config", "/debug/pprof/"} {
		if code, _, _ := get(t, base+p); code != http.StatusUnauthorized {
			t.Errorf("%s without token: %d, want 401", p, code)
		}
	}
	withToken := func(path, tok string) int {
		req, _ := http.NewRequest("GET", base+path, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := withToken("/status", "wrong"); code != http.StatusUnauthorized {
		t.Fatalf("/status with a wrong token: %d", code)
	}
	if code := withToken("/status", "s3cret-token"); code != 200 {
		t.Fatalf("/status with the token: %d", code)
	}
	if code := withToken("/debug/pprof/", "s3cret-token"); code != http.StatusNotFound {
		t.Fatalf("/debug/pprof/ while admin.pprof is off: %d, want 404", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := FetchStatus(ctx, base); err == nil {
		t.Fatal("FetchStatus without the token succeeded")
	}
	if _, err := FetchStatusWithToken(ctx, base, "s3cret-token"); err != nil {
		t.Fatalf("FetchStatusWithToken: %v", err)
	}

	src = f.sources()
	src.Pprof = true
	_, base2 := startServer(t, src)
	if code, _, _ := get(t, base2+"/debug/pprof/"); code != 200 {
		t.Fatalf("/debug/pprof/ with admin.pprof: %d", code)
	}
}

func TestReadToken(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "tok")
	os.WriteFile(p, []byte("  abc \nignored\n"), 0o600)
	if tok, err := ReadToken(p); err != nil || tok != "abc" {
		t.Fatalf("ReadToken = %q, %v", tok, err)
	}
	os.WriteFile(p, []byte("\n"), 0o600)
	if _, err := ReadToken(p); err == nil {
		t.Fatal("an empty token file was accepted")
	}
}
