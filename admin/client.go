package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/edgegw/gateway/internal/console"
)

// FetchStatus reads GET /status from the admin endpoint at addr ("host:port"
// or a full http:// URL). A listen address such as ":9100" or "0.0.0.0:9100"
// is reached on the loopback interface, so `gateway status` can take the
// admin.address of the config as it is.
func FetchStatus(ctx context.Context, addr string) (*Status, error) {
	return FetchStatusWithToken(ctx, addr, "")
}

// FetchStatusWithToken is FetchStatus for an endpoint that requires a
// bearer token (admin.token_file); "" sends none.
func FetchStatusWithToken(ctx context.Context, addr, token string) (*Status, error) {
	url, err := statusURL(addr)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("admin: status request %s: %w", url, err)
	}
	req.Header.Set("Accept", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin: fetch status: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("admin: fetch status %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	var st Status
	// Unknown fields are accepted: a newer gateway may add to the contract.
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("admin: decode status from %s: %w", url, err)
	}
	return &st, nil
}

func statusURL(addr string) (string, error) {
	if strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://") {
		return strings.TrimSuffix(addr, "/") + "/status", nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("admin: address %q: %w", addr, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/status", nil
}

// PrintStatus writes a compact summary of st for a person at a console:
// link, disk, one row per route, receipts. Ages are relative to st.Time, the
// gateway's own clock. Text a device or Kafka controls (device names, error
// texts) is printed escaped: no escape sequence reaches the console.
func PrintStatus(w io.Writer, st *Status) {
	cw := console.NewWriter(w)
	defer cw.Flush()
	w = cw
	now := st.Time
	ver := st.Version
	if ver == "" {
		ver = "unknown"
	}
	ready := "ready"
	if !st.Ready {
		ready = "NOT READY"
	}
	fmt.Fprintf(w, "gateway %s (version %s), %s, at %s\n", orDash(console.Escape(st.GatewayID)), console.Escape(ver), ready, formatTime(now))
	if id := Identity(st); id != "" {
		fmt.Fprintln(w, id)
	}

	fmt.Fprintln(w, linkLine(&st.Link, now))
	fmt.Fprintln(w, diskLine(&st.Disk))

	if len(st.Routes) == 0 {
		fmt.Fprintln(w, "routes: none configured, nothing buffered")
	} else {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ROUTE\tPRIO\tBACKLOG\tBYTES\tOLDEST\tDROPS(max_age/drop_oldest/rejected)\tETA")
		removed := false
		for _, r := range st.Routes {
			name, prio := console.Escape(r.Name), "-"
			if r.Priority != nil {
				prio = fmt.Sprint(*r.Priority)
			}
			if !r.Configured {
				name += "*"
				removed = true
			}
			bytes := FormatBytes(r.BacklogBytes)
			if r.MaxBytes > 0 {
				bytes += "/" + FormatBytes(r.MaxBytes)
			}
			oldest := "-"
			if r.BacklogMessages > 0 {
				oldest = FormatDuration(secondsDuration(r.OldestAgeSeconds))
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d/%d/%d\t%s\n", name, prio, r.BacklogMessages, bytes, oldest,
				r.Drops.MaxAge, r.Drops.DropOldest, r.Drops.Rejected, etaText(r))
		}
		_ = tw.Flush()
		if removed {
			fmt.Fprintln(w, "* no longer configured; what it buffered drains first (older than anything newer routes hold)")
		}
		fmt.Fprintln(w)
	}

	fmt.Fprintln(w, receiptsLine(st.Receipts))
	edgeLines(w, st)
}

func linkLine(l *LinkReport, now time.Time) string {
	var b strings.Builder
	state := console.Escape(l.State)
	if state == "" {
		state = "unknown"
	}
	if l.Up {
		b.WriteString("link: up")
	} else {
		b.WriteString("link: " + strings.ToUpper(state))
		if l.DownSince != nil {
			fmt.Fprintf(&b, " for %s (since %s)", FormatDuration(secondsDuration(l.DownForSeconds)), formatTime(*l.DownSince))
		}
	}
	if l.LastAck != nil {
		fmt.Fprintf(&b, ", last Kafka ack %s ago", FormatDuration(now.Sub(*l.LastAck)))
	} else {
		b.WriteString(", no Kafka ack since start")
	}
	if l.RateRecordsPerSecond > 0 {
		fmt.Fprintf(&b, ", draining %s records/s", formatRate(l.RateRecordsPerSecond))
	}
	if l.OutsideWindow {
		b.WriteString(", outside the drain window (urgent routes only)")
		if l.NextWindow != nil {
			fmt.Fprintf(&b, " until %s", formatTime(*l.NextWindow))
		}
	}
	if l.LastError != "" && !l.Up {
		fmt.Fprintf(&b, "\n  last error: %s", console.Escape(l.LastError))
	}
	return b.String()
}

func diskLine(d *DiskReport) string {
	s := "disk: " + FormatBytes(d.UsedBytes)
	if d.BudgetBytes > 0 {
		s += " of " + FormatBytes(d.BudgetBytes)
		if d.UsedPercent != nil {
			s += fmt.Sprintf(" (%.1f%%)", *d.UsedPercent)
		}
	} else {
		s += " used, no budget reported"
	}
	if d.FileBytes > 0 {
		s += ", buffer file " + FormatBytes(d.FileBytes)
	}
	if d.QuarantinedFile != "" {
		s += "\nWARNING: the buffer file was corrupt at start; kept as " + console.Escape(d.QuarantinedFile) + ", a fresh one is in use"
	}
	return s
}

func receiptsLine(r *ReceiptsReport) string {
	if r == nil {
		return "receipts: not reported"
	}
	if r.PendingTotal == 0 {
		return "receipts: none pending" + droppedText(r)
	}
	s := fmt.Sprintf("receipts: %d pending for %d device%s", r.PendingTotal, r.PendingDevices, plural(r.PendingDevices))
	top := append([]DevicePending(nil), r.ByDevice...)
	sort.SliceStable(top, func(i, j int) bool { return top[i].Pending > top[j].Pending })
	if len(top) > 3 {
		top = top[:3]
	}
	if len(top) > 0 {
		parts := make([]string, len(top))
		for i, d := range top {
			parts[i] = fmt.Sprintf("%s %d", console.Escape(d.Device), d.Pending)
		}
		s += " (most: " + strings.Join(parts, ", ") + ")"
	}
	return s + droppedText(r)
}

// droppedText is ", N dropped undelivered (reason n, ...)" when any were.
func droppedText(r *ReceiptsReport) string {
	if r.DroppedTotal == 0 {
		return ""
	}
	var reasons []string
	for reason, n := range r.Dropped {
		if n > 0 {
			reasons = append(reasons, fmt.Sprintf("%s %d", console.Escape(reason), n))
		}
	}
	sort.Strings(reasons)
	return fmt.Sprintf("; %d dropped undelivered (%s)", r.DroppedTotal, strings.Join(reasons, ", "))
}

func etaText(r RouteReport) string {
	switch {
	case r.BacklogMessages <= 0:
		return "-"
	case r.EstimatedDrainSeconds == nil:
		return "unknown"
	default:
		return FormatDuration(secondsDuration(*r.EstimatedDrainSeconds))
	}
}

// FormatDuration renders d for a person, in its two largest units: "3s",
// "4m5s", "2h13m", "4d2h". Negative durations print as "0s".
func FormatDuration(d time.Duration) string {
	if d < time.Second {
		return "0s"
	}
	s := int64(d / time.Second)
	const minute, hour, day = 60, 3600, 86400
	two := func(a int64, ua string, b int64, ub string) string {
		if b == 0 {
			return fmt.Sprintf("%d%s", a, ua)
		}
		return fmt.Sprintf("%d%s%d%s", a, ua, b, ub)
	}
	switch {
	case s < minute:
		return fmt.Sprintf("%ds", s)
	case s < hour:
		return two(s/minute, "m", s%minute, "s")
	case s < day:
		return two(s/hour, "h", s%hour/minute, "m")
	default:
		return two(s/day, "d", s%day/hour, "h")
	}
}

// FormatBytes renders n in binary units: "512B", "120.3MiB", "1.00GiB".
func FormatBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%dB", n)
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v := float64(n)
	i := -1
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if i >= 2 { // a GiB is a lot on a box like this: show the finer digit
		return fmt.Sprintf("%.2f%s", v, units[i])
	}
	return fmt.Sprintf("%.1f%s", v, units[i])
}

func secondsDuration(s float64) time.Duration {
	if math.IsNaN(s) || s <= 0 {
		return 0
	}
	if s >= math.MaxInt64/float64(time.Second) {
		return math.MaxInt64
	}
	return time.Duration(s * float64(time.Second))
}

func formatRate(r float64) string {
	if r >= 100 {
		return fmt.Sprintf("%.0f", r)
	}
	return fmt.Sprintf("%.1f", r)
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format("2006-01-02 15:04:05Z07:00")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// Identity says which gateway answered: its data dir, buffer epoch and
// process id ("" when the gateway does not report them, an older release).
func Identity(st *Status) string {
	if st.DataDir == "" && st.Epoch == "" {
		return ""
	}
	return fmt.Sprintf("data dir %s, epoch %s, pid %d", orDash(console.Escape(st.DataDir)), orDash(console.Escape(st.Epoch)), st.PID)
}
