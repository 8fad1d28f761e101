package termio

import (
	"bytes"
	"testing"
)

func TestParseDetachKeys(t *testing.T) {
	tests := []struct {
		in   string
		want []byte
		ok   bool
	}{
		{"ctrl-]", []byte{0x1d}, true},
		{"ctrl-p,ctrl-q", []byte{0x10, 0x11}, true},
		{"ctrl-a", []byte{1}, true},
		{"ctrl-@", []byte{0}, true},
		{"ctrl-_", []byte{0x1f}, true},
		{"x", []byte{'x'}, true},
		{"ctrl-p,x", []byte{0x10, 'x'}, true},
		{"", nil, false},
		{"ctrl-", nil, false},
		{"ctrl-1", nil, false},
		{"alt-x", nil, false},
		{"xy", nil, false},
		{"ctrl-p,,ctrl-q", nil, false},
		{"\x01", nil, false},
	}
	for _, tt := range tests {
		got, err := ParseDetachKeys(tt.in)
		if (err == nil) != tt.ok || !bytes.Equal(got, tt.want) {
			t.Errorf("ParseDetachKeys(%q) = %v, %v; want %v ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestDetachMatcher(t *testing.T) {
	seq := []byte{0x10, 0x11} // ctrl-p, ctrl-q
	tests := []struct {
		name   string
		feeds  []string
		want   string
		detach bool
	}{
		{"plain", []string{"ls\r"}, "ls\r", false},
		{"sequence", []string{"ab\x10\x11cd"}, "ab", true},
		{"split across reads", []string{"a\x10", "\x11"}, "a", true},
		{"false start passes through", []string{"\x10x"}, "\x10x", false},
		{"false start then sequence", []string{"\x10\x10\x11"}, "\x10", true},
		{"held at the end", []string{"a\x10"}, "a", false},
	}
	for _, tt := range tests {
		m := NewDetachMatcher(seq)
		var got []byte
		detach := false
		for _, f := range tt.feeds {
			out, d := m.Feed([]byte(f))
			got = append(got, out...)
			if d {
				detach = true
				break
			}
		}
		if string(got) != tt.want || detach != tt.detach {
			t.Errorf("%s: forwarded %q detach=%v; want %q detach=%v", tt.name, got, detach, tt.want, tt.detach)
		}
	}
	m := NewDetachMatcher([]byte{0x1d})
	if out, d := m.Feed([]byte("x\x1dy")); string(out) != "x" || !d {
		t.Errorf("ctrl-]: %q %v", out, d)
	}
}
