package broker

import (
	"bytes"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/rules"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A first start on an empty data_dir logs no ERROR (mochi's bbolt hook used
// to log "failed to get data ... key=SYS" for the session store's missing
// system info; the gateway's own session store stores no $SYS at all), and
// neither does a second start.
func TestFirstStartLogsNoError(t *testing.T) {
	dir := t.TempDir()
	cfg, err := config.Parse([]byte(baseYAML), []string{"GATEWAY_DATA_DIR=" + dir})
	if err != nil {
		t.Fatal(err)
	}
	for i, what := range []string{"first start", "restart"} {
		var out syncBuffer
		lg := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))
		buf, err := buffer.Open(buffer.Options{Path: filepath.Join(dir, "buffer.db")})
		if err != nil {
			t.Fatal(err)
		}
		brk, err := New(Options{Config: cfg, Rules: rules.Compile(cfg), Buffer: buf, Logger: lg})
		if err != nil {
			t.Fatal(err)
		}
		if err := brk.Start(); err != nil {
			t.Fatal(err)
		}
		brk.Close()
		buf.Close()
		if s := out.String(); strings.Contains(s, "level=ERROR") {
			t.Fatalf("%s (%d) logged an error:\n%s", what, i, s)
		}
	}
}
