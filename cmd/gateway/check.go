package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/edgegw/gateway/config"
)

// cmdCheck is `gateway check [--config FILE] [--as USER] [--against ADDR]`:
// the config validated as the service reads it (the installed one by
// default, with the unit's environment file), and every file it names
// opened and parsed as the user the check runs as, or as USER.
func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("check", stderr)
	path := fs.String("config", "", "the config file (default: the installed one, "+installedConfig+" or $GATEWAY_CONFIG)")
	envFile := fs.String("env-file", "", "environment file of the gateway's unit (default: "+installedEnvFile+" or $GATEWAY_ENV_FILE, with the installed config)")
	as := fs.String("as", "", "check as this user (the service's, e.g. gateway): needs root")
	against := fs.String("against", "", "admin address of a running gateway: show what the file would change in it")
	tokenFile := fs.String("token-file", "", "--against: admin token file (default: admin.token_file of the config)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "gateway check: takes no arguments (the file is --config FILE)")
		return exitUsage
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if *path == "" {
		*path = defaultConfigPath()
		if _, err := os.Stat(*path); errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(stderr, "gateway check: --config FILE is required (no %s)\n", *path)
			return exitUsage
		}
	}
	if !given["env-file"] && sameFile(*path, defaultConfigPath()) {
		*envFile = defaultEnvFile()
	}
	fileEnv, err := readEnvFile(*envFile)
	switch {
	case err == nil:
	case given["env-file"]:
		fmt.Fprintf(stderr, "gateway check: --env-file: %v\n", err)
		return exitUsage
	case !errors.Is(err, os.ErrNotExist):
		// systemd reads the unit's environment file as root, not the
		// service user: one it cannot read is no problem for the service.
		fmt.Fprintf(stderr, "gateway check: note: not reading the unit's environment file: %v\n", err)
	}
	environ := append(fileEnv, os.Environ()...)
	if *as != "" {
		return checkAs(*as, *path, environ, args, stdout, stderr)
	}
	cfg, err := config.LoadEnv(*path, environ)
	if err != nil {
		printLoadError(stdout, err)
		return exitUsage
	}
	if os.Geteuid() == 0 && namesFiles(cfg) {
		fmt.Fprintf(stderr, "gateway check: note: checked as root, who reads every file; the service runs as its own user: `gateway check --as gateway --config %s` checks what it can read\n", *path)
	}
	if *against != "" {
		token := ""
		tf := *tokenFile
		if tf == "" {
			tf = cfg.Admin.TokenFile // the file checked names the token of the gateway it will run
		}
		if tf != "" {
			if token, err = (&target{tokenFile: tf}).token(); err != nil {
				fmt.Fprintf(stderr, "gateway check: %v\n", err)
				return exitUsage
			}
		}
		return checkAgainst(cfg, *against, token, stdout, stderr)
	}
	fmt.Fprintln(stdout, "ok")
	return explainFleet(cfg, *path, environ, stdout)
}

// namesFiles reports whether cfg names files a user could be unable to read.
func namesFiles(cfg *config.Config) bool {
	m, k := &cfg.MQTT, &cfg.Kafka
	return m.TLS.Address != "" || m.UsersFile != "" || cfg.Admin.TokenFile != "" ||
		k.TLS.Enabled && (k.TLS.CAFile != "" || k.TLS.CertFile != "")
}

// checkAs runs the same check in a child process as another user (its uid,
// primary group and supplementary groups, as systemd starts the service),
// with the environment this process read, so that every file is opened
// with that user's rights. It prints the child's answer under a line
// naming the user.
func checkAs(name, path string, environ, args []string, stdout, stderr io.Writer) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(stderr, "gateway check: --as needs root (only root can take another user's identity)")
		return exitUsage
	}
	u, err := user.Lookup(name)
	if err != nil {
		fmt.Fprintf(stderr, "gateway check: --as: %v\n", err)
		return exitUsage
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		fmt.Fprintf(stderr, "gateway check: --as: user %s has uid %q gid %q\n", name, u.Uid, u.Gid)
		return exitUsage
	}
	var groups []uint32
	if gids, err := u.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				groups = append(groups, uint32(n))
			}
		}
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		fmt.Fprintf(stderr, "gateway check: %v\n", err)
		return exitUsage
	}
	// /proc/self/exe reaches this binary without the directories above it,
	// which the other user may not be allowed to enter.
	self := "/proc/self/exe"
	if _, err := os.Stat(self); err != nil {
		if self, err = os.Executable(); err != nil {
			fmt.Fprintf(stderr, "gateway check: --as: %v\n", err)
			return exitFailure
		}
	}
	// The same flags, with the config made absolute, without --as, and
	// with the environment file already read into the environment.
	childArgs := []string{"check", "--config", abs, "--env-file", ""}
	fs := newFlags("check", io.Discard)
	keep := map[string]*string{"against": fs.String("against", "", ""), "token-file": fs.String("token-file", "", "")}
	fs.String("config", "", "")
	fs.String("env-file", "", "")
	fs.String("as", "", "")
	_ = fs.Parse(args)
	for _, name := range []string{"against", "token-file"} {
		if *keep[name] != "" {
			childArgs = append(childArgs, "--"+name, *keep[name])
		}
	}
	cmd := exec.Command(self, childArgs...)
	cmd.Env = environ
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}}
	fmt.Fprintf(stdout, "as user %s (uid %d, gid %d, groups %s):\n", name, uid, gid, strings.Trim(fmt.Sprint(groups), "[]"))
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		fmt.Fprintf(stderr, "gateway check: --as %s: %v\n", name, err)
		return exitFailure
	}
	return exitOK
}
