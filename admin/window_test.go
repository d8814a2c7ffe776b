package admin

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/gateway/buffer"
)

// Outside link.windows the link is still up, and /status and `gateway
// status` say that only urgent routes drain, and until when.
func TestStatusOutsideDrainWindow(t *testing.T) {
	now := time.Date(2025, 3, 10, 12, 0, 0, 0, time.UTC)
	next := time.Date(2025, 3, 10, 22, 0, 0, 0, time.UTC)
	link := LinkStatus{State: LinkUp, LastAck: now.Add(-time.Second), OutsideWindow: true, NextWindow: next}
	src := Sources{
		Ready:   func() bool { return true },
		Routes:  func() []RouteInfo { return nil },
		Backlog: func() map[string]buffer.RouteStats { return nil },
		Link:    func() LinkStatus { return link },
	}
	st := buildStatus(&src, now)
	if !st.Link.Up || !st.Link.OutsideWindow || st.Link.NextWindow == nil || !st.Link.NextWindow.Equal(next) {
		t.Fatalf("link report %+v", st.Link)
	}
	var out bytes.Buffer
	PrintStatus(&out, st)
	if !strings.Contains(out.String(), "outside the drain window (urgent routes only) until") {
		t.Errorf("gateway status output:\n%s", out.String())
	}
	link.OutsideWindow, link.NextWindow = false, time.Time{}
	if st := buildStatus(&src, now); st.Link.OutsideWindow || st.Link.NextWindow != nil {
		t.Errorf("inside a window: %+v", st.Link)
	}
}
