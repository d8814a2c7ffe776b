package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/edgegw/gateway/admin"
	"github.com/edgegw/gateway/buffer"
)

const bufferUsage = `usage:
  gateway buffer stats --data-dir DIR   file, epoch, next seq, backlog per route
  gateway buffer ls --data-dir DIR      routes: messages, bytes, oldest, seq range
  gateway buffer peek --data-dir DIR --route NAME [-n 10]
                                        the oldest undelivered records, decoded
Read-only. A buffer file in use by a running gateway is asked through its
admin endpoint instead (--admin ADDR, default 127.0.0.1:9100; --token-file
when the endpoint needs a token). --file FILE reads a copied buffer file.
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
	dataDir := fs.String("data-dir", "", "the gateway's data_dir")
	file := fs.String("file", "", "a buffer file (e.g. a copy), instead of --data-dir")
	adminAddr := fs.String("admin", "127.0.0.1:9100", "admin address of a running gateway")
	tokenFile := fs.String("token-file", "", "file holding the admin bearer token")
	route := fs.String("route", "", "peek: the route")
	n := fs.Int("n", 10, "peek: how many records")
	if err := fs.Parse(args[1:]); err != nil {
		return exitUsage
	}
	path := *file
	if path == "" {
		if *dataDir == "" {
			fmt.Fprintln(stderr, "gateway buffer: --data-dir DIR or --file FILE is required")
			return exitUsage
		}
		path = filepath.Join(*dataDir, "buffer.db")
	}
	if sub == "peek" && *route == "" {
		fmt.Fprintln(stderr, "gateway buffer peek: --route NAME is required")
		return exitUsage
	}
	var rep buffer.Report
	var recs []buffer.Record
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
		token, terr := readToken(*tokenFile)
		if terr != nil {
			fmt.Fprintln(stderr, terr)
			return exitFailure
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := admin.FetchBuffer(ctx, *adminAddr, token, "", 0, &rep); err != nil {
			fmt.Fprintf(stderr, "gateway buffer: %s is in use by a running gateway, and its admin endpoint did not answer: %v\n", path, err)
			return exitFailure
		}
		if sub == "peek" {
			var p admin.BufferPeek
			if err := admin.FetchBuffer(ctx, *adminAddr, token, *route, *n, &p); err != nil {
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
		printStats(stdout, rep)
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

func readToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("gateway buffer: token file: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}

func printStats(w io.Writer, r buffer.Report) {
	src := "the running gateway"
	if r.FromFile {
		src = "the file (records delivered since the last purge, at most 30 s before it stopped, still count)"
	}
	fmt.Fprintf(w, "file:      %s (%d bytes, %d-byte pages, %s)\n", r.Path, r.FileBytes, r.PageSize, r.Format)
	fmt.Fprintf(w, "epoch:     %s\nnext seq:  %d\nblocks:    %d\nread from: %s\n", r.Epoch, r.NextSeq, r.Blocks, src)
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
		fmt.Fprintf(w, "%-20s %10d %12d %-25s %d..%d\n", rt.Route, rt.Messages, rt.Bytes, oldest, rt.FirstSeq, rt.LastSeq)
	}
}

func printRecord(w io.Writer, r buffer.Record) {
	fmt.Fprintf(w, "seq %d  route %s  received %s\n", r.Seq, r.Route, r.Received.UTC().Format(time.RFC3339Nano))
	fmt.Fprintf(w, "  kafka topic %s  key %s\n", r.KafkaTopic, printable(r.Key, 80))
	fmt.Fprintf(w, "  mqtt topic %s  client %s\n", r.MQTTTopic, r.ClientID)
	for _, h := range r.Headers {
		fmt.Fprintf(w, "  header %s = %s\n", h.Key, printable(h.Value, 80))
	}
	fmt.Fprintf(w, "  payload (%d bytes) %s\n", len(r.Payload), printable(r.Payload, 200))
}

// printable shows text as a quoted string and anything else as hex, cut at
// max bytes.
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
