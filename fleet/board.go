package fleet

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/edgegw/gateway/internal/console"
)

// Trouble classes, worst first: how `gateway fleet ls` sorts boxes.
const (
	TroubleNone      = iota
	TroubleLoss      // something was dropped or dead-lettered
	TroubleBacklog   // undelivered data older than two status intervals
	TroubleAttention // problems, quarantined files, a refused overlay, an outage just ended
	TroubleSilent    // not heard from for three status intervals: link down, or worse
)

// silentAfter is how many status intervals without a record make a box
// silent.
const silentAfter = 3

// Summary is one box's line of the board.
type Summary struct {
	Gateway      string
	Link         string
	Backlog      int64
	OldestS      float64
	Drops        uint64
	Version      string
	FleetVersion uint64
	Refused      int
	At           time.Time
	SilentS      float64 // since the record was made
	Class        int
	Why          string
}

// Summarize reads a record at time now.
func Summarize(r *Record, now time.Time) Summary {
	s := Summary{Gateway: r.Gateway, Link: r.Link.State, Version: r.Version, FleetVersion: r.Config.FleetVersion,
		Refused: len(r.Config.Refused), At: r.At, SilentS: max(now.Sub(r.At).Seconds(), 0)}
	dead := uint64(0)
	for _, rt := range r.Routes {
		s.Backlog += rt.BacklogMessages
		s.OldestS = max(s.OldestS, rt.OldestAgeS)
		for _, n := range rt.Drops {
			s.Drops += n
		}
		for _, n := range rt.DeadLetters {
			dead += n
		}
	}
	interval := r.IntervalS
	if interval <= 0 {
		interval = 60
	}
	var why []string
	switch {
	case s.SilentS > silentAfter*interval:
		s.Class = TroubleSilent
		s.Link = "silent"
		why = append(why, "silent for "+Age(s.SilentS))
	case len(r.Problems) > 0 || len(r.Quarantined) > 0 || s.Refused > 0 || r.Link.State != "up":
		s.Class = TroubleAttention
	case s.OldestS > 2*interval:
		s.Class = TroubleBacklog
	case s.Drops > 0 || dead > 0:
		s.Class = TroubleLoss
	}
	if len(r.Problems) > 0 {
		why = append(why, strconv.Itoa(len(r.Problems))+" problem(s): "+r.Problems[0])
	}
	if len(r.Quarantined) > 0 {
		why = append(why, strconv.Itoa(len(r.Quarantined))+" file(s) set aside")
	}
	if s.Refused > 0 {
		last := r.Config.Refused[len(r.Config.Refused)-1]
		why = append(why, fmt.Sprintf("config %s@%d refused: %s", last.Key, last.Version, last.Reason))
	}
	if s.OldestS > 2*interval && s.Class != TroubleSilent {
		why = append(why, "oldest undelivered "+Age(s.OldestS))
	}
	if dead > 0 {
		why = append(why, strconv.FormatUint(dead, 10)+" dead letters")
	}
	if r.LastOutage.Ended != nil && now.Sub(*r.LastOutage.Ended) < time.Duration(silentAfter*interval*float64(time.Second)) {
		why = append(why, "back from a "+Age(r.LastOutage.Seconds)+" outage")
		if s.Class < TroubleAttention {
			s.Class = TroubleAttention
		}
	}
	s.Why = strings.Join(why, "; ")
	return s
}

// SortByTrouble orders the worst first: trouble class, then the oldest
// undelivered data, the drops, the longest silence, then by name.
func SortByTrouble(ss []Summary) {
	sort.SliceStable(ss, func(i, j int) bool {
		a, b := ss[i], ss[j]
		switch {
		case a.Class != b.Class:
			return a.Class > b.Class
		case a.Class == TroubleSilent && a.SilentS != b.SilentS:
			return a.SilentS > b.SilentS
		case a.OldestS != b.OldestS:
			return a.OldestS > b.OldestS
		case a.Drops != b.Drops:
			return a.Drops > b.Drops
		}
		return a.Gateway < b.Gateway
	})
}

// PrintBoard writes one line per box, worst first.
func PrintBoard(w io.Writer, ss []Summary) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "GATEWAY\tLINK\tBACKLOG\tOLDEST\tDROPS\tVERSION\tCONFIG\tLAST SEEN\tTROUBLE")
	for _, s := range ss {
		cv := "-"
		if s.FleetVersion > 0 {
			cv = strconv.FormatUint(s.FleetVersion, 10)
		}
		if s.Refused > 0 {
			cv += "!"
		}
		oldest := "-"
		if s.OldestS > 0 {
			oldest = Age(s.OldestS)
		}
		why := s.Why
		if why == "" {
			why = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\t%s\t%s ago\t%s\n", Printable(s.Gateway), Printable(s.Link), s.Backlog, oldest,
			s.Drops, Printable(s.Version), cv, Age(s.SilentS), Printable(why))
	}
	tw.Flush()
}

// Age prints seconds the way an operator reads them: 45s, 12m, 3h, 2d.
func Age(sec float64) string {
	d := time.Duration(sec * float64(time.Second))
	switch {
	case d < time.Minute:
		return strconv.Itoa(int(d.Seconds())) + "s"
	case d < time.Hour:
		return strconv.Itoa(int(d.Minutes())) + "m"
	case d < 48*time.Hour:
		return strconv.Itoa(int(d.Hours())) + "h"
	}
	return strconv.Itoa(int(d.Hours()/24)) + "d"
}

// Printable keeps what a box wrote (its id, release, problems, refusal
// details) from steering the operator's terminal.
func Printable(s string) string { return console.Escape(s) }
