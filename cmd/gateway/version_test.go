package main

import (
	"bytes"
	"os"
	"regexp"
	"strings"
	"testing"
)

// `gateway version` names a semantic version, the VERSION file's when the
// build set none, and the VERSION file holds one.
func TestVersionFromFile(t *testing.T) {
	file, err := os.ReadFile("../../VERSION")
	if err != nil {
		t.Fatal(err)
	}
	want := strings.TrimSpace(string(file))
	if !regexp.MustCompile(`^\d+\.\d+\.\d+$`).MatchString(want) {
		t.Fatalf("VERSION holds %q, not a semantic version like 0.3.0", want)
	}
	var out bytes.Buffer
	if code := run([]string{"version"}, &out, &out); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	if !strings.HasPrefix(out.String(), "gateway "+want+" ") {
		t.Fatalf("version prints %q, want it to start with %q", out.String(), "gateway "+want+" ")
	}
}
