// Package console makes text that devices control (client ids, topics,
// user names, keys, error texts from Kafka) safe to print on an operator's
// terminal: escape sequences written by a terminal in its client id must not
// move the cursor, rewrite lines or retitle the window of whoever runs
// `gateway status` or `gateway buffer peek` as root.
package console

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"
)

// unsafeRune reports whether a terminal could act on r, or would hide it:
// control characters (C0, DEL, C1: ESC starts every escape sequence, and
// 0x9b is CSI for terminals in 8-bit mode), format characters (bidi
// overrides that reorder what is shown, zero-width ones) and the Unicode
// line and paragraph separators.
func unsafeRune(r rune) bool {
	return unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == '\u2028' || r == '\u2029'
}

// Escape returns s with every unsafe rune written as a Go escape (\x1b,
// \n, \u202e) and every byte that is not UTF-8 as \xNN. Anything else is
// kept as it is, so ordinary names read as themselves.
func Escape(s string) string {
	if isSafe(s, false) {
		return s
	}
	var b strings.Builder
	writeEscaped(&b, s, false)
	return b.String()
}

func isSafe(s string, keepLines bool) bool {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size <= 1 {
			return false
		}
		if unsafeRune(r) && !(keepLines && (r == '\n' || r == '\t')) {
			return false
		}
		i += size
	}
	return true
}

func writeEscaped(b *strings.Builder, s string, keepLines bool) {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			fmt.Fprintf(b, `\x%02x`, s[i])
		case keepLines && (r == '\n' || r == '\t'):
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x100 && unsafeRune(r):
			fmt.Fprintf(b, `\x%02x`, r)
		case unsafeRune(r):
			fmt.Fprintf(b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
}

// Writer passes text through to an underlying writer with every unsafe rune
// escaped but newlines and tabs: a net under a command's whole output, for
// any device-controlled text a caller did not Escape itself. It works line
// by line (so a rune is never split between two writes); Flush writes what
// is left after the last newline.
type Writer struct {
	w   io.Writer
	buf []byte
}

// NewWriter returns a Writer onto w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write escapes and forwards every complete line of p, keeping the rest.
func (w *Writer) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	i := bytes.LastIndexByte(w.buf, '\n')
	if i < 0 {
		return len(p), nil
	}
	if err := w.emit(w.buf[:i+1]); err != nil {
		return 0, err
	}
	w.buf = append(w.buf[:0], w.buf[i+1:]...)
	return len(p), nil
}

// Flush writes what follows the last newline.
func (w *Writer) Flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	err := w.emit(w.buf)
	w.buf = w.buf[:0]
	return err
}

func (w *Writer) emit(p []byte) error {
	s := string(p)
	if isSafe(s, true) {
		_, err := io.WriteString(w.w, s)
		return err
	}
	var b strings.Builder
	writeEscaped(&b, s, true)
	_, err := io.WriteString(w.w, b.String())
	return err
}
