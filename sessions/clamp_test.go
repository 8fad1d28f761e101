package sessions

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func TestCtlClamp(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"plain text", "hello\r\n", "hello\r\n"},
		{"REP clamped to the screen", "A\x1b[999999999b", "A\x1b[1920b"},
		{"ECH clamped", "\x1b[999999999X", "\x1b[1920X"},
		{"CHT and CBT clamped", "\x1b[999999999I\x1b[999999999Z", "\x1b[1920I\x1b[1920Z"},
		{"small counts untouched", "\x1b[5b\x1b[2X\x1b[3;4H", "\x1b[5b\x1b[2X\x1b[3;4H"},
		{"other numbers to four digits", "\x1b[999999;999999H", "\x1b[9999;9999H"},
		{"private modes keep their digits", "\x1b[?1049h\x1b[?2004l", "\x1b[?1049h\x1b[?2004l"},
		{"SGR untouched", "\x1b[38;2;255;0;0m\x1b[0m", "\x1b[38;2;255;0;0m\x1b[0m"},
		{"empty parameters kept", "\x1b[;5H\x1b[m", "\x1b[;5H\x1b[m"},
		{"8-bit CSI", "\x9b999999999b", "\x9b1920b"},
		{"a control inside is run, the count still clamped", "\x1b[99999\x07999b", "\x07\x1b[1920b"},
		{"ESC abandons a sequence", "\x1b[99999\x1b[2J", "\x1b[2J"},
		{"CAN abandons a sequence", "\x1b[99999\x18b", "\x18b"},
		{"other escapes pass", "\x1b]0;title\x07\x1b(B\x1bM", "\x1b]0;title\x07\x1b(B\x1bM"},
		{"too many parameters dropped", "\x1b[" + strings.Repeat("1;", 40) + "m", "\x1b[" + strings.Repeat("1;", 31) + "1m"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c ctlClamp
			if got := string(c.filter([]byte(tt.in), 24, 80)); got != tt.want {
				t.Errorf("one write: %q, want %q", got, tt.want)
			}
			// Byte by byte, as the guest may send it.
			var c2 ctlClamp
			var out []byte
			for i := range len(tt.in) {
				out = append(out, c2.filter([]byte{tt.in[i]}, 24, 80)...)
			}
			if string(out) != tt.want {
				t.Errorf("byte by byte: %q, want %q", out, tt.want)
			}
		})
	}
}

// TestTerminalOutputCannotHangTheSupervisor: the sequence that kept the
// supervisor's terminal emulator looping for minutes is clamped, and a
// listing never waits for the emulator.
func TestTerminalOutputCannotHangTheSupervisor(t *testing.T) {
	p := newPTY(1, []string{"sh"}, time.Now(), true, 24, 80)
	done := make(chan struct{})
	go func() {
		p.output(0, []byte("A\x1b[999999999b\x1b[999999999X\x1b[999999999I\x1b[999999999Zend"))
		close(done)
	}()
	select {
	case <-done:
		defer p.close()
	case <-time.After(30 * time.Second):
		t.Fatal("the emulator is still busy with one line of output")
	}
	if !strings.Contains(p.screen().Text, "end") {
		t.Fatalf("screen %q", p.screen().Text)
	}
}

// The guest writes every byte its terminals print: no input may keep the
// emulator (behind the clamp) busy for long, nor panic it.
func FuzzTerminalOutput(f *testing.F) {
	for _, s := range []string{"A\x1b[999999999b", "\x1b[999999999X", "\x1b[?1049h\x1b[999;999H", "\x1b]0;" + strings.Repeat("x", 4096),
		"\x1bP" + strings.Repeat("q", 4096) + "\x1b\\", "\x9b99999999I", "\x1b[" + strings.Repeat("9", 200) + "Z"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := newPTY(1, nil, time.Now(), true, 24, 80)
		done := make(chan struct{})
		go func() {
			defer close(done)
			// In random pieces, as reads from the guest come.
			r := rand.New(rand.NewPCG(uint64(len(data)), 1))
			var off uint64
			for rest := data; len(rest) > 0; {
				n := 1 + r.IntN(len(rest))
				p.output(off, bytes.Clone(rest[:n]))
				off += uint64(n)
				rest = rest[n:]
			}
			p.screen()
		}()
		select {
		case <-done:
			p.close()
		case <-time.After(5 * time.Second):
			t.Fatalf("%d bytes of output kept the emulator busy for 5 s: %q", len(data), data)
		}
	})
}
