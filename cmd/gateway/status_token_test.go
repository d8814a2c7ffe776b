package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/gateway/admin"
	"github.com/edgegw/gateway/buffer"
)

// `gateway status` sends the admin token, from --token-file or from the
// admin.token_file of --config; without it the endpoint refuses.
func TestStatusSendsToken(t *testing.T) {
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "token")
	os.WriteFile(tokFile, []byte("t0ken\n"), 0o600)
	srv, err := admin.New("127.0.0.1:0", admin.Sources{
		Ready:   func() bool { return true },
		Routes:  func() []admin.RouteInfo { return nil },
		Backlog: func() map[string]buffer.RouteStats { return nil },
		Link:    func() admin.LinkStatus { return admin.LinkStatus{State: admin.LinkUp} },
		Token:   "t0ken",
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Close(ctx)
	})
	var out, errs bytes.Buffer
	if code := cmdStatus([]string{"--admin", srv.Addr()}, &out, &errs); code != exitFailure || !strings.Contains(errs.String(), "401") {
		t.Fatalf("without token: exit %d, %s", code, errs.String())
	}
	errs.Reset()
	if code := cmdStatus([]string{"--admin", srv.Addr(), "--token-file", tokFile}, &out, &errs); code != exitOK {
		t.Fatalf("--token-file: exit %d, %s", code, errs.String())
	}
	cfg := filepath.Join(dir, "gateway.yaml")
	os.WriteFile(cfg, []byte("kafka: {brokers: ['127.0.0.1:1']}\ndata_dir: "+dir+"\nadmin: {address: '"+srv.Addr()+"', token_file: "+tokFile+"}\n"), 0o600)
	errs.Reset()
	if code := cmdStatus([]string{"--config", cfg}, &out, &errs); code != exitOK {
		t.Fatalf("--config with admin.token_file: exit %d, %s", code, errs.String())
	}
}
