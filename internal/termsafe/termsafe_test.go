package termsafe

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain /path?q=1 ünïcödé", "plain /path?q=1 ünïcödé"},
		{"\x1b]52;c;aGk=\x07", `\x1b]52;c;aGk=\x07`},
		{"a\u009bb", `a\x9bb`},
		{"raw \x9b byte", `raw \x9b byte`},
		{"line\nbreak\ttab", `line\x0abreak\x09tab`},
		{"admin\u202eexe.txt", `admin\u202eexe.txt`},
		{"bad \xff byte", `bad \xff byte`},
		{"del\x7f", `del\x7f`},
	}
	for _, tt := range tests {
		if got := String(tt.in); got != tt.want {
			t.Errorf("String(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	if got := Text("two\nlines\tand \x1b[2J"); got != "two\nlines\tand \\x1b[2J" {
		t.Errorf("Text: %q", got)
	}
}

func TestJSON(t *testing.T) {
	in, _ := json.Marshal(map[string]string{"label": "a\u009b\u202eb\x1b"})
	out := JSON(in)
	if strings.ContainsAny(string(out), "\u009b\u202e\x1b") {
		t.Fatalf("%q", out)
	}
	var back map[string]string
	if err := json.Unmarshal(out, &back); err != nil || back["label"] != "a\u009b\u202eb\x1b" {
		t.Fatalf("round trip: %q %v", back, err)
	}
}

func TestWriter(t *testing.T) {
	var out bytes.Buffer
	w := &Writer{W: &out}
	in := "é\x1b]52;c;x\x07ok\n"
	for i := range len(in) { // byte by byte: é is split
		w.Write([]byte{in[i]})
	}
	if got := out.String(); got != `é\x1b]52;c;x\x07ok`+"\n" {
		t.Fatalf("%q", got)
	}
}

func TestStyleOnly(t *testing.T) {
	tests := []struct{ in, want string }{
		{"\x1b[1;31mred\x1b[m plain", "\x1b[1;31mred\x1b[m plain"},
		{"\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"},
		{"\x1b]52;c;aGk=\x07after", "after"},
		{"\x1b[2J\x1b[Htop", "top"},
		{"bell\x07 and \x1bPdcs\x1b\\ done", "bell and  done"},
		{"\x1b]0;title", ""},
	}
	for _, tt := range tests {
		if got := StyleOnly(tt.in); got != tt.want {
			t.Errorf("StyleOnly(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// What StyleOnly keeps can only style text: no escape sequence but SGR.
func FuzzStyleOnly(f *testing.F) {
	f.Add("\x1b[1mx\x1b]8;;u\x07y")
	f.Fuzz(func(t *testing.T, s string) {
		out := StyleOnly(s)
		for i := 0; i < len(out); i++ {
			if out[i] != 0x1b {
				if out[i] < 0x20 && out[i] != '\n' {
					t.Fatalf("control %#x kept in %q", out[i], out)
				}
				continue
			}
			j := i + 2
			if !strings.HasPrefix(out[i:], "\x1b[") {
				t.Fatalf("non-CSI escape kept in %q", out)
			}
			for j < len(out) && strings.IndexByte("0123456789;:", out[j]) >= 0 {
				j++
			}
			if j >= len(out) || out[j] != 'm' {
				t.Fatalf("a CSI other than SGR kept in %q", out)
			}
			i = j
		}
		if strings.ContainsRune(String(s), 0x1b) {
			t.Fatalf("String kept an ESC: %q", String(s))
		}
	})
}
