package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/term"

	"github.com/edgegw/gateway/config"
)

// cmdPasswd is `gateway passwd [--file FILE] USER`: it reads a password
// (twice, without echo, from a terminal; one line from stdin otherwise, for
// scripts) and prints the users-file line "USER:bcrypt-hash", or with
// --file adds it to the users file (replacing USER's line if there is one),
// which it creates readable by its owner and group only.
func cmdPasswd(args []string, stdin *os.File, stdout, stderr io.Writer) int {
	fs := newFlags("passwd", stderr)
	cost := fs.Int("cost", bcrypt.DefaultCost, "bcrypt cost (each step doubles the work per login)")
	file := fs.String("file", "", "add the line to this users file (created 0640, group of its directory) instead of printing it")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() != 1 || fs.Arg(0) == "" || strings.ContainsAny(fs.Arg(0), ":\n\r") || strings.TrimSpace(fs.Arg(0)) != fs.Arg(0) {
		fmt.Fprintln(stderr, "gateway passwd: takes one USER (no ':', no spaces around it)")
		return exitUsage
	}
	if *cost < bcrypt.MinCost || *cost > bcrypt.MaxCost {
		fmt.Fprintf(stderr, "gateway passwd: --cost must be between %d and %d\n", bcrypt.MinCost, bcrypt.MaxCost)
		return exitUsage
	}
	user := fs.Arg(0)
	var pw []byte
	if term.IsTerminal(int(stdin.Fd())) {
		fmt.Fprintf(stderr, "password for %s: ", user)
		p1, err := term.ReadPassword(int(stdin.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			fmt.Fprintf(stderr, "gateway passwd: %v\n", err)
			return exitFailure
		}
		fmt.Fprint(stderr, "again: ")
		p2, err := term.ReadPassword(int(stdin.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			fmt.Fprintf(stderr, "gateway passwd: %v\n", err)
			return exitFailure
		}
		if string(p1) != string(p2) {
			fmt.Fprintln(stderr, "gateway passwd: the passwords differ")
			return exitUsage
		}
		pw = p1
	} else {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && err != io.EOF {
			fmt.Fprintf(stderr, "gateway passwd: %v\n", err)
			return exitFailure
		}
		pw = []byte(strings.TrimRight(line, "\r\n"))
	}
	if len(pw) == 0 {
		fmt.Fprintln(stderr, "gateway passwd: empty password")
		return exitUsage
	}
	if len(pw) > 72 {
		fmt.Fprintln(stderr, "gateway passwd: bcrypt takes at most 72 bytes of password")
		return exitUsage
	}
	hash, err := bcrypt.GenerateFromPassword(pw, *cost)
	if err != nil {
		fmt.Fprintf(stderr, "gateway passwd: %v\n", err)
		return exitFailure
	}
	line := fmt.Sprintf("%s:%s", user, hash)
	if *file == "" {
		fmt.Fprintln(stdout, line)
		return exitOK
	}
	what, err := setUsersLine(*file, user, line)
	if err != nil {
		fmt.Fprintf(stderr, "gateway passwd: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "%s: %s in %s (restart the gateway to apply: systemctl restart gateway)\n", user, what, *file)
	return exitOK
}

// usersFileMode is a new users file's mode: the hashes are secrets to
// whoever could guess weak passwords offline.
const usersFileMode = 0o640

// setUsersLine puts line as user's entry in the users file at path: it
// replaces the user's line or appends one, writing a new file beside it and
// renaming it over the old one, so the file is never seen half written nor,
// for a moment, with looser permissions. A new file is 0640 with the group
// of its directory (/etc/gateway is root:gateway, so the service reads it);
// an existing one keeps its owner and group, and loses any permission for
// others.
func setUsersLine(path, user, line string) (string, error) {
	var old []byte
	mode := os.FileMode(usersFileMode)
	uid, gid := -1, -1
	fi, err := os.Lstat(path)
	switch {
	case err == nil:
		if !fi.Mode().IsRegular() {
			return "", fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
		}
		if old, err = config.ReadBounded(path, 64<<20); err != nil {
			return "", err
		}
		mode = fi.Mode().Perm() &^ 0o007
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			uid, gid = int(st.Uid), int(st.Gid)
		}
	case errors.Is(err, os.ErrNotExist):
		if di, err := os.Stat(filepath.Dir(path)); err == nil {
			if st, ok := di.Sys().(*syscall.Stat_t); ok {
				gid = int(st.Gid)
			}
		}
	default:
		return "", err
	}
	var out bytes.Buffer
	what := "added"
	for _, l := range strings.SplitAfter(string(old), "\n") {
		if l == "" {
			continue
		}
		if name, _, ok := strings.Cut(strings.TrimSpace(l), ":"); ok && name == user {
			if what == "added" {
				out.WriteString(line + "\n")
			}
			what = "password replaced"
			continue
		}
		out.WriteString(l)
		if !strings.HasSuffix(l, "\n") {
			out.WriteString("\n")
		}
	}
	if what == "added" {
		out.WriteString(line + "\n")
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".new-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	err = tmp.Chmod(mode)
	if err == nil && (uid >= 0 || gid >= 0) {
		// Root gives it the old file's owner, or the directory's group; a
		// user who is not a member of that group keeps their own.
		if cerr := tmp.Chown(uid, gid); cerr != nil && os.Geteuid() == 0 {
			err = cerr
		}
	}
	if err == nil {
		_, err = tmp.Write(out.Bytes())
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return what, nil
}
