package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"text/tabwriter"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/edgegw/gateway/admin"
	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/internal/boltfile"
)

const deadLetterUsage = `usage:
  gateway deadletter ls     [--data-dir DIR | --config FILE] [--admin ADDR] [--limit N]
  gateway deadletter resend [--data-dir DIR | --config FILE] [--admin ADDR] (--all | ID...)
  gateway deadletter drop   [--data-dir DIR | --config FILE] [--admin ADDR] (--all | ID...)

Records Kafka refuses for good wait in the buffer's dead-letter store. With the
gateway stopped the command works on DIR/buffer.db directly; while it runs (it
holds the file) the command goes through its admin endpoint (--admin, else
admin.address of --config, else 127.0.0.1:9100). resend appends the records
again with their topic, key, headers and receive time, under new gw.seq values.
`

// cmdDeadLetter is `gateway deadletter ls|resend|drop`.
func cmdDeadLetter(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, deadLetterUsage)
		return exitUsage
	}
	op := args[0]
	if op != "ls" && op != "resend" && op != "drop" {
		fmt.Fprintf(stderr, "gateway deadletter: unknown operation %q\n%s", op, deadLetterUsage)
		return exitUsage
	}
	fs := newFlags("deadletter "+op, stderr)
	dataDir := fs.String("data-dir", "", "the gateway's data_dir")
	cfgPath := fs.String("config", "", "read data_dir and admin.address from this config file")
	addr := fs.String("admin", "", "admin endpoint of a running gateway")
	all := fs.Bool("all", false, "resend or drop every dead letter")
	limit := fs.Int("limit", 0, "ls: list at most N (0 = all)")
	if err := fs.Parse(args[1:]); err != nil {
		return exitUsage
	}
	var ids []uint64
	for _, a := range fs.Args() {
		id, err := strconv.ParseUint(a, 10, 64)
		if err != nil || op == "ls" {
			fmt.Fprintf(stderr, "gateway deadletter %s: %q is not a dead-letter id\n", op, a)
			return exitUsage
		}
		ids = append(ids, id)
	}
	if op != "ls" && len(ids) == 0 && !*all {
		fmt.Fprintf(stderr, "gateway deadletter %s: name the ids (from `gateway deadletter ls`) or give --all\n", op)
		return exitUsage
	}
	if *cfgPath != "" {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return exitUsage
		}
		if *dataDir == "" {
			*dataDir = cfg.DataDir
		}
		if *addr == "" {
			*addr = cfg.Admin.Address
		}
	}
	viaAdmin := *dataDir == ""
	if !viaAdmin {
		path := filepath.Join(*dataDir, "buffer.db")
		if _, err := os.Stat(path); err != nil {
			fmt.Fprintf(stderr, "gateway deadletter: no buffer file: %v\n", err)
			return exitFailure
		}
		// Check first: opening a corrupt file as a buffer would move it
		// aside, which a listing command must not do.
		err := boltfile.Verify(path, &bolt.Options{Timeout: 2 * time.Second, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
		var buf *buffer.Buffer
		if err == nil {
			buf, err = buffer.Open(buffer.Options{Path: path})
		}
		switch {
		case errors.Is(err, berrors.ErrTimeout):
			viaAdmin = true // a running gateway holds the file
		case err != nil:
			fmt.Fprintf(stderr, "gateway deadletter: %v\n", err)
			return exitFailure
		default:
			defer buf.Close()
			return deadLetterLocal(buf, op, ids, *all, *limit, stdout, stderr)
		}
	}
	if *addr == "" {
		*addr = "127.0.0.1:9100"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := admin.DeadLetterCall(ctx, *addr, op, ids, *all, *limit)
	if err != nil {
		fmt.Fprintf(stderr, "gateway deadletter %s via %s: %v\n", op, *addr, err)
		return exitFailure
	}
	if op == "ls" {
		printDeadLetters(stdout, res.List)
	} else {
		fmt.Fprintf(stdout, "%s: %d\n", doneWord(op), res.Done)
	}
	return exitOK
}

func deadLetterLocal(buf *buffer.Buffer, op string, ids []uint64, all bool, limit int, stdout, stderr io.Writer) int {
	if op == "ls" {
		list, err := buf.DeadLetters(limit)
		if err != nil {
			fmt.Fprintf(stderr, "gateway deadletter ls: %v\n", err)
			return exitFailure
		}
		printDeadLetters(stdout, list)
		return exitOK
	}
	if all {
		list, err := buf.DeadLetters(0)
		if err != nil {
			fmt.Fprintf(stderr, "gateway deadletter %s: %v\n", op, err)
			return exitFailure
		}
		for _, e := range list {
			ids = append(ids, e.ID)
		}
	}
	do := buf.DropDeadLetters
	if op == "resend" {
		do = buf.ResendDeadLetters
	}
	n, err := do(ids)
	if err != nil {
		fmt.Fprintf(stderr, "gateway deadletter %s: %v (%d done)\n", op, err, n)
		return exitFailure
	}
	fmt.Fprintf(stdout, "%s: %d\n", doneWord(op), n)
	return exitOK
}

func doneWord(op string) string {
	if op == "resend" {
		return "re-sent (appended to the buffer again)"
	}
	return "dropped"
}

func printDeadLetters(w io.Writer, list []buffer.DeadLetterEntry) {
	if len(list) == 0 {
		fmt.Fprintln(w, "no dead letters")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tROUTE\tREASON\tTOPIC\tBYTES\tSET ASIDE\tERROR")
	for _, e := range list {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\n", e.ID, e.Route, e.Reason, e.Topic, e.Size,
			e.At.UTC().Format(time.RFC3339), e.Error)
	}
	_ = tw.Flush()
}
