package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/edgegw/gateway/admin"
	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/internal/console"
)

const bufferUsage = `usage:
  gateway buffer stats [--data-dir DIR | --config FILE]   file, epoch, next seq, backlog per route
  gateway buffer ls    [--data-dir DIR | --config FILE]   routes: messages, bytes, oldest, seq range
  gateway buffer peek  [--data-dir DIR | --config FILE] --route NAME [-n 10]
                                        the oldest undelivered records, decoded
Read-only. The data dir is --data-dir, else data_dir of the config (--config,
else the installed one) with the unit's environment, else $GATEWAY_DATA_DIR.
A buffer file in use by a running gateway is asked through its admin endpoint
instead (--admin, --token-file, default from the same config), after checking
that the gateway answering is the one running on that data dir. --file FILE
reads a copied buffer file.
`

// cmdBuffer looks inside a buffer: the file itself when no gateway holds it
// (a stopped box, a copy), else the running gateway's admin endpoint.
func cmdBuffer(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "ls" && args[0] != "peek" && args[0] != "stats") {
		fmt.Fprint(stderr, bufferUsage)
		return exitUsage
	}
	sub := args[0]
	fs := newFlags("buffer "+sub, stderr)
	tf := addTargetFlags(fs, true)
	file := fs.String("file", "", "a buffer file (e.g. a copy), instead of --data-dir")
	route := fs.String("route", "", "peek: the route")
	n := fs.Int("n", 10, "peek: how many records")
	if err := fs.Parse(args[1:]); err != nil || fs.NArg() > 0 {
		return exitUsage
	}
	if sub == "peek" && *route == "" {
		fmt.Fprintln(stderr, "gateway buffer peek: --route NAME is required")
		return exitUsage
	}
	t, code := tf.resolve("buffer", stderr)
	if code != exitOK {
		return code
	}
	path := *file
	dataDir := t.dataDir
	if path == "" {
		if dataDir == "" {
			fmt.Fprintln(stderr, "gateway buffer: no data dir: give --data-dir DIR, --config FILE or --file FILE")
			return exitUsage
		}
		path = filepath.Join(dataDir, "buffer.db")
	} else {
		dataDir = filepath.Dir(path)
	}
	cw := console.NewWriter(stdout)
	defer cw.Flush()
	stdout = cw
	var rep buffer.Report
	var recs []buffer.Record
	var who *admin.Status
	b, err := buffer.OpenReadOnly(path)
	switch {
	case err == nil:
		defer b.Close()
		rep = b.Inspect()
		rep.FromFile = true
		if sub == "peek" {
			if recs, err = b.Peek(*route, *n); err != nil {
				fmt.Fprintln(stderr, err)
				return exitFailure
			}
		}
	case errors.Is(err, buffer.ErrInUse):
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		st, token, err := askRunning(ctx, "buffer", t, dataDir, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "gateway buffer: %s is in use by a running gateway; asking it at %s: %v\n", path, t.admin, err)
			return exitFailure
		}
		who = st
		if err := admin.FetchBuffer(ctx, t.admin, token, "", 0, &rep); err != nil {
			fmt.Fprintln(stderr, err)
			return exitFailure
		}
		if sub == "peek" {
			var p admin.BufferPeek
			if err := admin.FetchBuffer(ctx, t.admin, token, *route, *n, &p); err != nil {
				fmt.Fprintln(stderr, err)
				return exitFailure
			}
			recs = p.Records
		}
	default:
		fmt.Fprintln(stderr, err)
		return exitFailure
	}
	switch sub {
	case "stats":
		printStats(stdout, rep, who, t.admin)
	case "ls":
		printRoutes(stdout, rep)
	case "peek":
		for _, r := range recs {
			printRecord(stdout, r)
		}
		if len(recs) == 0 {
			fmt.Fprintf(stdout, "no undelivered records on route %q\n", *route)
		}
	}
	return exitOK
}

func printStats(w io.Writer, r buffer.Report, who *admin.Status, addr string) {
	src := "the running gateway"
	if who != nil {
		src = fmt.Sprintf("the running gateway %s at %s (%s)", console.Escape(orDash(who.GatewayID)), addr, admin.Identity(who))
	}
	if r.FromFile {
		src = "the file (records delivered since the last purge, at most 30 s before it stopped, still count)"
	}
	fmt.Fprintf(w, "file:      %s (%d bytes, %d-byte pages, %s)\n", console.Escape(r.Path), r.FileBytes, r.PageSize, console.Escape(r.Format))
	fmt.Fprintf(w, "epoch:     %s\nnext seq:  %d\nblocks:    %d\nread from: %s\n", console.Escape(r.Epoch), r.NextSeq, r.Blocks, src)
	var msgs, bytes int64
	for _, rt := range r.Routes {
		msgs += rt.Messages
		bytes += rt.Bytes
	}
	fmt.Fprintf(w, "backlog:   %d messages, %d bytes\n", msgs, bytes)
	printRoutes(w, r)
}

func printRoutes(w io.Writer, r buffer.Report) {
	if len(r.Routes) == 0 {
		fmt.Fprintln(w, "no undelivered messages")
		return
	}
	fmt.Fprintf(w, "%-20s %10s %12s %-25s %s\n", "ROUTE", "MESSAGES", "BYTES", "OLDEST", "SEQ")
	for _, rt := range r.Routes {
		oldest := "-"
		if !rt.Oldest.IsZero() {
			oldest = rt.Oldest.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(w, "%-20s %10d %12d %-25s %d..%d\n", console.Escape(rt.Route), rt.Messages, rt.Bytes, oldest, rt.FirstSeq, rt.LastSeq)
	}
}

func printRecord(w io.Writer, r buffer.Record) {
	fmt.Fprintf(w, "seq %d  route %s  received %s\n", r.Seq, console.Escape(r.Route), r.Received.UTC().Format(time.RFC3339Nano))
	fmt.Fprintf(w, "  kafka topic %s  key %s\n", console.Escape(r.KafkaTopic), printable(r.Key, 80))
	fmt.Fprintf(w, "  mqtt topic %s  client %s\n", console.Escape(r.MQTTTopic), console.Escape(r.ClientID))
	for _, h := range r.Headers {
		fmt.Fprintf(w, "  header %s = %s\n", console.Escape(h.Key), printable(h.Value, 80))
	}
	fmt.Fprintf(w, "  payload (%d bytes) %s\n", len(r.Payload), printable(r.Payload, 200))
}

// printable shows text as a quoted string (control characters escaped) and
// anything else as hex, cut at max bytes.
func printable(b []byte, max int) string {
	cut := ""
	if len(b) > max {
		b, cut = b[:max], "..."
	}
	if utf8.Valid(b) {
		return strconv.Quote(string(b)) + cut
	}
	return fmt.Sprintf("0x%x%s", b, cut)
}
