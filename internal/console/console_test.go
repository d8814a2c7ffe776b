package console

import (
	"bytes"
	"strings"
	"testing"
)

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"term-1":              "term-1",
		"caf\u00e9/\u6e2f":    "caf\u00e9/\u6e2f",
		"a\x1b]0;pwned\x07b":  `a\x1b]0;pwned\x07b`,
		"x\x1b[2J\x1b[Hclear": `x\x1b[2J\x1b[Hclear`,
		"line\nfake line\r":   `line\nfake line\r`,
		"tab\there":           `tab\there`,
		"c1\u009bcsi":         `c1\x9bcsi`,
		"raw\x9bbyte":         `raw\x9bbyte`,
		"bidi\u202eevil":      `bidi\u202eevil`,
		"zero\u200bwidth":     `zero\u200bwidth`,
		"sep\u2028x":          `sep\u2028x`,
		"del\x7f":             `del\x7f`,
		"nul\x00":             `nul\x00`,
		"back\\slash":         `back\slash`,
	} {
		if got := Escape(in); got != want {
			t.Errorf("Escape(%q) = %q, want %q", in, got, want)
		}
	}
}

// The writer keeps newlines and tabs (the command's own layout), escapes
// the rest, and never splits a rune between writes.
func TestWriter(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out)
	in := "ok line\tcell\nbad \x1b[31mred\x1b[0m\n\u00e9"
	for i := 0; i < len(in); i++ { // one byte at a time: runes arrive split
		if _, err := w.Write([]byte{in[i]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	want := "ok line\tcell\nbad \\x1b[31mred\\x1b[0m\n\u00e9"
	if out.String() != want {
		t.Fatalf("got %q, want %q", out.String(), want)
	}
	if strings.ContainsRune(out.String(), 0x1b) {
		t.Fatal("ESC reached the output")
	}
}
