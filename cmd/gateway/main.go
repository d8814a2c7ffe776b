// Command gateway is the edge MQTT-to-Kafka gateway: terminals publish over
// MQTT, every message is stored on disk before it is acknowledged, and a
// store-and-forward bridge drains the buffer to Kafka whenever the link allows.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/edgegw/gateway/admin"
	"github.com/edgegw/gateway/config"
)

// Set at build time with -ldflags "-X main.version=... -X main.commit=...";
// `make` sets the version from `git describe --tags` (or the VERSION file).
// Without it, the VERSION file embedded in the module applies (version.go).
var (
	version = ""
	commit  = "unknown"
)

const usage = `usage:
  gateway run --config FILE      run until SIGINT/SIGTERM
  gateway check [--config FILE] [--as USER]
                                 validate a config file and open every file it
                                 names (as USER: what the service can read)
  gateway check [--config FILE] --against ADDR
                                 and show what it would change in the gateway
                                 running behind admin address ADDR
  gateway status                 summary from a running gateway's admin endpoint
  gateway buffer ls|peek|stats   read-only look inside the buffer
  gateway deadletter ls|resend|drop [--all | ID...]
                                 records Kafka refused for good
  gateway passwd [--file FILE] USER
                                 read a password; print a users-file line
                                 (bcrypt), or write it into FILE (0640)
  gateway fleet keygen|push|ls|exporter
                                 the central side: signing keys, signed config
                                 overlays, every box's status (gateway fleet help)
  gateway version                version, commit, Go version, platform

status, buffer, deadletter and check act on the gateway the service runs:
  --config FILE      its config (default: /etc/gateway/config.yaml when it
                     exists and --admin is not given; or $GATEWAY_CONFIG)
  --env-file FILE    its unit's environment file, read with the installed
                     config (default: /etc/default/gateway; or $GATEWAY_ENV_FILE);
                     the process environment (GATEWAY_*) wins over it
  --data-dir DIR     buffer, deadletter: its data dir (default: the config's
                     data_dir, else $GATEWAY_DATA_DIR)
  --admin ADDR       its admin endpoint (default: the config's admin.address,
                     else $GATEWAY_ADMIN_ADDRESS, else 127.0.0.1:9100)
  --token-file FILE  the admin token (default: the config's admin.token_file,
                     else $GATEWAY_ADMIN_TOKEN_FILE)
A command given a data dir that a running gateway holds asks that gateway's
admin endpoint, and refuses an answer from another gateway.

Exit codes: 0 ok, 1 failure (unreachable, unreadable), 2 bad usage or config.
`

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // runtime failure, or status: gateway unreachable
	exitUsage   = 2 // bad usage or invalid config
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the exit, so tests can call it.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "status":
		return cmdStatus(args[1:], stdout, stderr)
	case "buffer":
		return cmdBuffer(args[1:], stdout, stderr)
	case "deadletter":
		return cmdDeadLetter(args[1:], stdout, stderr)
	case "passwd":
		return cmdPasswd(args[1:], os.Stdin, stdout, stderr)
	case "fleet":
		return cmdFleet(args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintf(stdout, "gateway %s (commit %s) %s %s/%s\n", version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return exitOK
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "gateway: unknown command %q\n%s", args[0], usage)
	return exitUsage
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("gateway "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// loadConfig parses --config and loads the file; problems go to stderr one
// per line, naming the key.
func loadConfig(name string, args []string, stderr io.Writer) (*config.Config, int) {
	fs := newFlags(name, stderr)
	path := fs.String("config", "", "path to the YAML config file")
	if err := fs.Parse(args); err != nil {
		return nil, exitUsage
	}
	if *path == "" || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "gateway %s: --config FILE is required (and takes no other arguments)\n", name)
		return nil, exitUsage
	}
	cfg, err := config.Load(*path)
	if err != nil {
		var problems config.Problems
		if errors.As(err, &problems) {
			for _, p := range problems {
				fmt.Fprintln(stderr, p)
			}
		} else {
			fmt.Fprintln(stderr, err)
		}
		return nil, exitUsage
	}
	return cfg, exitOK
}

func cmdRun(args []string, stderr io.Writer) int {
	cfg, code := loadConfig("run", args, stderr)
	if code != exitOK {
		return code
	}
	cfg, fb, err := bootFleet(cfg, configFlag(args))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitUsage
	}
	logs := newLogSwitch(cfg.Log, stderr)
	log := logs.logger()
	// A log pipe whose reader went away (journald restarting, `make run |
	// tee` after a Ctrl-C) must not kill the gateway in the middle of its
	// work: a write fails instead, and the log line is lost.
	signal.Ignore(syscall.SIGPIPE)
	// Signals are caught before anything starts: /readyz answers 200 while
	// the fleet agent and the notifier still start, and a SIGTERM then must
	// stop the gateway cleanly (it waits in sig until gw.wait reads it), not
	// end the process with the default action.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	gw, err := startGateway(cfg, log)
	err = explainLocked(err, cfg.DataDir)
	if err != nil {
		log.Error("gateway failed to start", "error", err)
		return exitFailure
	}
	if err := gw.watchConfig(configFlag(args), logs); err != nil {
		log.Error("config file watch failed to start", "error", err)
		gw.stop()
		return exitFailure
	}
	if err := gw.startFleet(fb, log); err != nil {
		log.Error("fleet agent failed to start", "error", err)
		gw.stop()
		return exitFailure
	}
	sd := startNotifier(gw, log)
	s, ferr := gw.wait(sig)
	signal.Stop(sig)
	sd.stopping()
	if ferr != nil {
		// systemd restarts the process on the file that is on disk; what was
		// acknowledged is in it (or in the compaction copy beside it).
		log.Error("the buffer is unusable; stopping so the gateway restarts", "error", ferr)
		gw.stop()
		return exitFailure
	}
	log.Info("shutting down", "signal", s.String())
	if err := gw.stop(); err != nil {
		log.Error("shutdown", "error", err)
		return exitFailure
	}
	log.Info("stopped cleanly")
	return exitOK
}

func cmdStatus(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("status", stderr)
	tf := addTargetFlags(fs, false)
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return exitUsage
	}
	t, code := tf.resolve("status", stderr)
	if code != exitOK {
		return code
	}
	token, err := t.token()
	if err != nil {
		fmt.Fprintf(stderr, "gateway status: %v\n", err)
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := admin.FetchStatusWithToken(ctx, t.admin, token)
	if err != nil {
		fmt.Fprintf(stderr, "gateway status: %v\n", err)
		return exitFailure
	}
	admin.PrintStatus(stdout, st)
	return exitOK
}
