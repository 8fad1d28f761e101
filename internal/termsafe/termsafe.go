// Package termsafe makes text that a guest chose (a URL path, an SSH user
// name, a console line, an agent's error) safe to print on the user's
// terminal: an escape sequence in it could otherwise write the user's
// clipboard (OSC 52), retitle or reconfigure the terminal, or hide what
// is printed around it.
package termsafe

import (
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"
)

// String returns s with every control character (C0, DEL, C1), every
// bidirectional override or isolate and every invalid UTF-8 byte written
// as a Go escape (\x1b, \u202e), so that it prints as one line of plain
// text.
func String(s string) string { return escape(s, false) }

// Text is String keeping newlines and tabs: for multi-line text such as
// a console log.
func Text(s string) string { return escape(s, true) }

func escape(s string, multiline bool) string {
	if safe(s, multiline) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case multiline && (r == '\n' || r == '\t'):
			b.WriteRune(r)
		case dangerous(r):
			if r < 0x100 {
				fmt.Fprintf(&b, `\x%02x`, r)
			} else {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

func safe(s string, multiline bool) bool {
	for _, r := range s {
		if r == utf8.RuneError || (dangerous(r) && !(multiline && (r == '\n' || r == '\t'))) {
			return false
		}
	}
	return true
}

// dangerous reports runes a terminal acts on instead of printing, and
// those that reorder what is printed around them.
func dangerous(r rune) bool {
	switch {
	case r < 0x20, r == 0x7f, r >= 0x80 && r < 0xa0:
		return true
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069, r == 0x200e, r == 0x200f, r == 0x061c:
		return true
	}
	return !unicode.IsPrint(r) && !unicode.IsSpace(r)
}

// JSON escapes, as \uXXXX, the runes in encoded JSON that a terminal
// acts on or that reorder text (encoding/json escapes C0 controls itself,
// not C1 controls or bidirectional overrides): the result decodes to the
// same value.
func JSON(b []byte) []byte {
	s := string(b)
	if safe(s, true) {
		return b
	}
	var out strings.Builder
	for _, r := range s {
		if dangerous(r) && r >= 0x80 {
			fmt.Fprintf(&out, `\u%04x`, r)
			continue
		}
		out.WriteRune(r)
	}
	return []byte(out.String())
}

// Writer escapes what is written through it as Text does, for a stream
// (a console log printed on a terminal). A rune split across two writes
// is kept until the next write completes it.
type Writer struct {
	W       io.Writer
	partial []byte
}

func (w *Writer) Write(p []byte) (int, error) {
	buf := append(w.partial, p...)
	w.partial = nil
	// Keep an incomplete rune at the end for the next write.
	cut := len(buf)
	for i := len(buf) - 1; i >= 0 && i >= len(buf)-utf8.UTFMax; i-- {
		if utf8.RuneStart(buf[i]) {
			if !utf8.FullRune(buf[i:]) {
				cut = i
			}
			break
		}
	}
	w.partial = append(w.partial[:0], buf[cut:]...)
	if _, err := io.WriteString(w.W, Text(string(buf[:cut]))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// StyleOnly keeps the text of s and its SGR sequences (colours, bold) and
// drops every other escape sequence and control character: for a
// rendering of a guest's screen shown inside the dashboard, where a
// hyperlink (OSC 8) or any other sequence would act on the user's
// terminal.
func StyleOnly(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == 0x1b && i+1 < len(s) && s[i+1] == '[':
			j := i + 2
			for j < len(s) && (s[j] >= '0' && s[j] <= '9' || s[j] == ';' || s[j] == ':') {
				j++
			}
			if j < len(s) && s[j] == 'm' {
				b.WriteString(s[i : j+1])
				i = j + 1
				continue
			}
			i = skipCSI(s, i+2)
		case c == 0x1b:
			i = skipEscape(s, i+1)
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			if !(r == utf8.RuneError && size == 1) && !dangerous(r) || r == '\n' {
				b.WriteString(s[i : i+size])
			}
			i += size
		}
	}
	return b.String()
}

// skipCSI returns the index after the CSI sequence whose parameters start
// at i.
func skipCSI(s string, i int) int {
	for i < len(s) && !(s[i] >= 0x40 && s[i] <= 0x7e) {
		i++
	}
	return min(i+1, len(s))
}

// skipEscape returns the index after the escape sequence whose first byte
// after ESC is at i: a string (OSC, DCS, APC, PM, SOS) runs to its
// terminator (BEL or ST).
func skipEscape(s string, i int) int {
	if i >= len(s) {
		return i
	}
	switch s[i] {
	case ']', 'P', '_', '^', 'X':
		for j := i + 1; j < len(s); j++ {
			if s[j] == 0x07 {
				return j + 1
			}
			if s[j] == 0x1b && j+1 < len(s) && s[j+1] == '\\' {
				return j + 2
			}
		}
		return len(s)
	}
	// ESC with intermediates, then a final byte.
	for i < len(s) && s[i] >= 0x20 && s[i] <= 0x2f {
		i++
	}
	return min(i+1, len(s))
}
