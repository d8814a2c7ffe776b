package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/edgegw/gateway/broker"
)

// The printed line is one the users file loader accepts, and it checks the
// password that was read.
func TestPasswdPrintsUsersFileLine(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	os.WriteFile(in, []byte("correct horse\n"), 0o600)
	f, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out, errs bytes.Buffer
	if code := cmdPasswd([]string{"--cost", "4", "term-a"}, f, &out, &errs); code != 0 {
		t.Fatalf("exit %d: %s", code, errs.String())
	}
	users := filepath.Join(dir, "users")
	os.WriteFile(users, out.Bytes(), 0o600)
	m, err := broker.LoadUsers(users)
	if err != nil {
		t.Fatal(err)
	}
	if bcrypt.CompareHashAndPassword(m["term-a"], []byte("correct horse")) != nil {
		t.Fatalf("line %q does not check the password", out.String())
	}
	for _, bad := range [][]string{{}, {"a:b"}, {"a", "b"}} {
		if code := cmdPasswd(bad, f, &out, &errs); code != exitUsage {
			t.Errorf("passwd %v: exit %d", bad, code)
		}
	}
	if !strings.HasPrefix(out.String(), "term-a:$2a$04$") {
		t.Fatalf("output %q", out.String())
	}
}

// With --file, passwd writes the users file itself: created 0640 with the
// group of its directory, a user's line replaced rather than repeated, and
// an existing file's permission for others taken away.
func TestPasswdWritesUsersFile(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users")
	set := func(user, pw string) string {
		t.Helper()
		in := filepath.Join(t.TempDir(), "in")
		os.WriteFile(in, []byte(pw+"\n"), 0o600)
		f, err := os.Open(in)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var out, errs bytes.Buffer
		if code := cmdPasswd([]string{"--cost", "4", "--file", users, user}, f, &out, &errs); code != 0 {
			t.Fatalf("exit %d: %s", code, errs.String())
		}
		return out.String()
	}
	if out := set("term-1", "one"); !strings.Contains(out, "term-1: added") {
		t.Fatalf("output %q", out)
	}
	fi, err := os.Stat(users)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 {
		t.Fatalf("new users file mode %v, want 0640", fi.Mode().Perm())
	}
	di, _ := os.Stat(dir)
	if fi.Sys().(*syscall.Stat_t).Gid != di.Sys().(*syscall.Stat_t).Gid {
		t.Errorf("new users file's group is not its directory's")
	}
	set("term-2", "two")
	if out := set("term-1", "uno"); !strings.Contains(out, "password replaced") {
		t.Fatalf("output %q", out)
	}
	m, err := broker.LoadUsers(users)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(users)
	if len(m) != 2 || strings.Count(string(data), "term-1:") != 1 ||
		bcrypt.CompareHashAndPassword(m["term-1"], []byte("uno")) != nil || bcrypt.CompareHashAndPassword(m["term-2"], []byte("two")) != nil {
		t.Fatalf("users file:\n%s", data)
	}
	// a file someone made world-readable is tightened
	os.Chmod(users, 0o644)
	set("term-3", "three")
	if fi, _ := os.Stat(users); fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v after writing a 0644 file, want 0640", fi.Mode().Perm())
	}
}
