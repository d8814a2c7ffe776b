package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/term"
)

// cmdPasswd is `gateway passwd USER`: it reads a password (twice, without
// echo, from a terminal; one line from stdin otherwise, for scripts) and
// prints the users-file line "USER:bcrypt-hash".
func cmdPasswd(args []string, stdin *os.File, stdout, stderr io.Writer) int {
	fs := newFlags("passwd", stderr)
	cost := fs.Int("cost", bcrypt.DefaultCost, "bcrypt cost (each step doubles the work per login)")
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
	fmt.Fprintf(stdout, "%s:%s\n", user, hash)
	return exitOK
}
