package netpolicy

import (
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

// chunkReader returns src in pieces of the given sizes (cycling), and
// with eofWithData the last piece together with io.EOF, as some readers
// do.
type chunkReader struct {
	src         []byte
	sizes       []int
	i           int
	eofWithData bool
	err         error // returned instead of io.EOF at the end, when set
}

func (c *chunkReader) Read(p []byte) (int, error) {
	end := c.err
	if end == nil {
		end = io.EOF
	}
	if len(c.src) == 0 {
		return 0, end
	}
	n := min(len(p), len(c.src), c.sizes[c.i%len(c.sizes)])
	c.i++
	copy(p, c.src[:n])
	c.src = c.src[n:]
	if len(c.src) == 0 && c.eofWithData {
		return n, end
	}
	return n, nil
}

func (c *chunkReader) Close() error { return nil }

// oneShot is the reference the streaming replacer must match:
// strings.Replacer over the whole input, with the pairs in the order the
// replacer prefers them (longest old string first).
func oneShot(pairs []scrubPair, s string) string {
	pairs = slices.Clone(pairs)
	slices.SortStableFunc(pairs, func(a, b scrubPair) int { return len(b.old) - len(a.old) })
	var args []string
	for _, p := range pairs {
		if p.old != "" {
			args = append(args, p.old, p.new)
		}
	}
	if len(args) == 0 {
		return s
	}
	return strings.NewReplacer(args...).Replace(s)
}

// scrubStream runs src through a scrubReader fed in pieces of sizes and
// read with buffers of readSizes, checking the held tail after every
// read from the source.
func scrubStream(t testing.TB, r *replacer, src string, sizes, readSizes []int, eofWithData bool) string {
	s := newScrubReader(&chunkReader{src: []byte(src), sizes: sizes, eofWithData: eofWithData}, func() *replacer { return r }, nil)
	var out []byte
	for i := 0; ; i++ {
		p := make([]byte, readSizes[i%len(readSizes)])
		n, err := s.Read(p)
		out = append(out, p[:n]...)
		if len(s.in) > r.maxLen-1 {
			t.Fatalf("holds %d input bytes, more than the longest string (%d) less one", len(s.in), r.maxLen)
		}
		if err == io.EOF {
			return string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestReplacer(t *testing.T) {
	ph := tokenPH
	tests := []struct {
		name  string
		pairs []scrubPair
		in    string
		want  string
	}{
		{name: "value in the middle", pairs: []scrubPair{{tokenValue, ph}}, in: "auth: Bearer " + tokenValue + "\n", want: "auth: Bearer " + ph + "\n"},
		{name: "value at both ends and twice in a row", pairs: []scrubPair{{tokenValue, ph}}, in: tokenValue + "-" + tokenValue + tokenValue, want: ph + "-" + ph + ph},
		{name: "only the value", pairs: []scrubPair{{tokenValue, ph}}, in: tokenValue, want: ph},
		{name: "empty input", pairs: []scrubPair{{tokenValue, ph}}, in: "", want: ""},
		{name: "overlapping candidates: leftmost match, the rest left", pairs: []scrubPair{{"abab", "X"}}, in: "ababab", want: "Xab"},
		{name: "a near miss is left alone", pairs: []scrubPair{{tokenValue, ph}}, in: tokenValue[:len(tokenValue)-1] + "!", want: tokenValue[:len(tokenValue)-1] + "!"},
		// A body that ends inside a value passes the part it has:
		// only whole values are recognised (the one-shot result).
		{name: "cut-off value at the end", pairs: []scrubPair{{tokenValue, ph}}, in: "x " + tokenValue[:10], want: "x " + tokenValue[:10]},
		{name: "at one place the longest string wins", pairs: []scrubPair{{"tok", "A"}, {"token", "B"}}, in: "token tok toke", want: "B A Ae"},
		{name: "an earlier start beats a longer string", pairs: []scrubPair{{"oken_x", "A"}, {"tok", "B"}}, in: "token_x", want: "Ben_x"},
		{name: "same old string twice: the first wins", pairs: []scrubPair{{"abc", "1"}, {"abc", "2"}}, in: "abc", want: "1"},
		{name: "every echo form", pairs: echoPairs("a/b&c<d>+e f", ph), in: `a/b&c<d>+e f|a%2Fb%26c%3Cd%3E%2Be+f|a%2Fb&c%3Cd%3E+e%20f|a/b\u0026c\u003cd\u003e+e f|a\/b\u0026c\u003cd\u003e+e f`, want: strings.Repeat(ph+"|", 4) + ph},
		{name: "basic credentials' encodings", pairs: []scrubPair{{"dTpyZWFs", "dTpwaA=="}}, in: `{"authorization":"Basic dTpyZWFs"}`, want: `{"authorization":"Basic dTpwaA=="}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := oneShot(tt.pairs, tt.in); got != tt.want {
				t.Fatalf("reference = %q, want %q (bad test)", got, tt.want)
			}
			r := newReplacer(tt.pairs)
			// Every chunk size, so that every string is split at
			// every place; small reads on the other side too.
			for size := 1; size <= len(tt.in)+1; size++ {
				for _, eofWithData := range []bool{false, true} {
					if got := scrubStream(t, r, tt.in, []int{size}, []int{7, 1, readChunk}, eofWithData); got != tt.want {
						t.Fatalf("in pieces of %d: %q, want %q", size, got, tt.want)
					}
				}
			}
		})
	}
	if newReplacer(nil) != nil || newReplacer([]scrubPair{{"", "x"}}) != nil {
		t.Error("a replacer with nothing to replace")
	}
}

// TestScrubReaderCutOff checks that when the upstream's body fails
// midway the held tail, which may be the start of a value, is dropped
// rather than flushed: the guest's response is broken anyway.
func TestScrubReaderCutOff(t *testing.T) {
	r := newReplacer([]scrubPair{{tokenValue, tokenPH}})
	broken := errors.New("connection reset")
	s := newScrubReader(&chunkReader{src: []byte("hello " + tokenValue[:12]), sizes: []int{4}, err: broken}, func() *replacer { return r }, nil)
	out, err := io.ReadAll(s)
	if !errors.Is(err, broken) {
		t.Fatalf("err = %v, want the source's", err)
	}
	if strings.Contains(string(out), tokenValue[:4]) {
		t.Fatalf("passed %q: the start of the value", out)
	}
}

// TestScanReader checks the request body scan: a pattern anywhere, split
// anyhow, fails the upload before any byte of it is passed on; bodies
// without one pass whole.
func TestScanReader(t *testing.T) {
	sc := &exfilScan{pats: [][]byte{[]byte(tokenPH), []byte(tokenValue)}, names: []string{"TOKEN", "TOKEN"}, reasons: []string{"ph", "value"}, maxLen: len(tokenPH)}
	long := strings.Repeat("x", 3*readChunk)
	tests := []struct {
		name       string
		body       string
		wantReason string // "" means it passes
	}{
		{name: "placeholder", body: `{"t":"` + tokenPH + `"}`, wantReason: "ph"},
		{name: "value at the very end", body: "a=" + tokenValue, wantReason: "value"},
		{name: "value at the start", body: tokenValue + "&a=1", wantReason: "value"},
		{name: "placeholder past several reads", body: long + tokenPH + long, wantReason: "ph"},
		{name: "no secret", body: long + "GONDOLIN_SECRET_" + tokenValue[:10], wantReason: ""},
		{name: "empty", body: "", wantReason: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, size := range []int{1, 7, len(tokenPH) - 1, len(tokenPH), readChunk, len(tt.body) + 1} {
				var reason string
				s := newScanReader(&chunkReader{src: []byte(tt.body), sizes: []int{size}}, sc, func(name, r string) error {
					reason = r
					return errors.New("blocked")
				})
				out, err := io.ReadAll(s)
				if reason != tt.wantReason {
					t.Fatalf("pieces of %d: reason %q, want %q", size, reason, tt.wantReason)
				}
				if tt.wantReason == "" {
					if err != nil || string(out) != tt.body {
						t.Fatalf("pieces of %d: %v, passed %d of %d bytes", size, err, len(out), len(tt.body))
					}
					continue
				}
				if err == nil || strings.Contains(string(out), tokenPH[:len(tokenPH)/2]) || strings.Contains(string(out), tokenValue[:len(tokenValue)/2]) {
					t.Fatalf("pieces of %d: err %v; passed part of the secret", size, err)
				}
				if len(s.in) > readChunk+sc.maxLen {
					t.Fatalf("holds %d bytes", len(s.in))
				}
			}
		})
	}
}
