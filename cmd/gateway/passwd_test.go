package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
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
