package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/edgegw/gateway/admin"
	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/internal/boltfile"
	"github.com/edgegw/gateway/internal/console"
)

const deadLetterUsage = `usage:
  gateway deadletter ls     [--data-dir DIR | --config FILE] [--admin ADDR] [--token-file FILE] [--limit N]
  gateway deadletter resend [--data-dir DIR | --config FILE] [--admin ADDR] [--token-file FILE] (--all | ID...)
  gateway deadletter drop   [--data-dir DIR | --config FILE] [--admin ADDR] [--token-file FILE] (--all | ID...)

Records Kafka refuses for good wait in the buffer's dead-letter store. With the
gateway stopped the command works on DIR/buffer.db directly (ls only reads it);
while it runs (it holds the file) the command goes through its admin endpoint,
after checking that the gateway answering is the one running on DIR. The data
dir, admin address and token come from the flags, else from the config
(--config, else the installed one) with the unit's environment, else from
$GATEWAY_DATA_DIR, $GATEWAY_ADMIN_ADDRESS, $GATEWAY_ADMIN_TOKEN_FILE.
resend appends the records again with their topic, key, headers and receive
time, under new gw.seq values.
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
	tf := addTargetFlags(fs, true)
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
	t, code := tf.resolve("deadletter", stderr)
	if code != exitOK {
		return code
	}
	cw := console.NewWriter(stdout)
	defer cw.Flush()
	stdout = cw
	// With a data dir: the file when no gateway holds it, else the
	// gateway that does (and only that one).
	if t.dataDir != "" {
		path := filepath.Join(t.dataDir, "buffer.db")
		if op == "ls" {
			buf, err := buffer.OpenReadOnly(path)
			switch {
			case err == nil:
				defer buf.Close()
				return deadLetterLocal(buf, op, ids, *all, *limit, stdout, stderr)
			case !errors.Is(err, buffer.ErrInUse):
				fmt.Fprintf(stderr, "gateway deadletter: %v\n", err)
				return exitFailure
			}
		} else {
			buf, err := openForDeadLetters(path)
			switch {
			case errors.Is(err, berrors.ErrTimeout):
				// a running gateway holds the file
			case err != nil:
				fmt.Fprintf(stderr, "gateway deadletter: %v\n", err)
				return exitFailure
			default:
				defer buf.Close()
				return deadLetterLocal(buf, op, ids, *all, *limit, stdout, stderr)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, token, err := askRunning(ctx, "deadletter", t, t.dataDir, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "gateway deadletter %s via %s: %v\n", op, t.admin, err)
		return exitFailure
	}
	res, err := admin.DeadLetterCall(ctx, t.admin, token, op, ids, *all, *limit)
	if err != nil {
		fmt.Fprintf(stderr, "gateway deadletter %s via %s: %v\n", op, t.admin, err)
		return exitFailure
	}
	if op == "ls" {
		printDeadLetters(stdout, res.List)
	} else {
		fmt.Fprintf(stdout, "%s: %d\n", doneWord(op), res.Done)
	}
	return exitOK
}

// openForDeadLetters opens a stopped gateway's buffer to resend or drop
// dead letters. It writes, so it refuses what a read-only look refuses
// (links, special files in the data dir) and, run as root, a data dir that
// belongs to another user: files it writes there would become root's and
// the service could no longer open them.
func openForDeadLetters(path string) (*buffer.Buffer, error) {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 && st.Uid != 0 {
		owner := strconv.FormatUint(uint64(st.Uid), 10)
		if u, err := user.LookupId(owner); err == nil {
			owner = u.Username
		}
		return nil, fmt.Errorf("%s belongs to %s: run this as that user (sudo -u %s gateway deadletter ...), or with the gateway running, so the files stay the service's", dir, owner, owner)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("no buffer file: %w", err)
	}
	for _, p := range []string{path, path + ".journal-0", path + ".journal-1"} {
		if li, err := os.Lstat(p); err == nil && !li.Mode().IsRegular() {
			return nil, fmt.Errorf("%s is not a regular file (%s): refusing to write through it", p, li.Mode().Type())
		}
	}
	// Check first: opening a corrupt file as a buffer would move it aside.
	err = boltfile.Verify(path, &bolt.Options{Timeout: 2 * time.Second, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, err
	}
	return buffer.Open(buffer.Options{Path: path})
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
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\n", e.ID, console.Escape(e.Route), console.Escape(e.Reason), console.Escape(e.Topic), e.Size,
			e.At.UTC().Format(time.RFC3339), console.Escape(e.Error))
	}
	_ = tw.Flush()
}
