package netpolicy

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// scrubPair is one string to replace (old: a real value, or an encoding
// of a string the host substituted) and what the guest gets instead
// (new: the placeholder, or the guest's own spelling of that string).
type scrubPair struct{ old, new string }

// echoForms are the spellings in which servers commonly repeat a string
// of the request: as sent, percent-encoded (a URL, a redirect's
// Location), JSON-escaped (an echo API), and JSON with "/" escaped (as
// PHP writes it; base64 has slashes). Only exact echoes in one of these
// forms are recognised: a value an upstream cuts short, reverses or
// encodes some other way is not.
var echoForms = []func(string) string{
	func(s string) string { return s },
	url.QueryEscape,
	url.PathEscape,
	jsonEscape,
	func(s string) string { return strings.ReplaceAll(jsonEscape(s), "/", `\/`) },
}

func jsonEscape(s string) string {
	b, _ := json.Marshal(s) // a string always marshals
	return string(b[1 : len(b)-1])
}

// echoPairs returns the pair old -> new in every echo form.
func echoPairs(old, new string) []scrubPair {
	out := make([]scrubPair, 0, len(echoForms))
	for _, f := range echoForms {
		out = append(out, scrubPair{f(old), f(new)})
	}
	return out
}

// replacer replaces a fixed set of strings in a stream: leftmost match
// first and, of the strings that match at the same place, the longest.
// That is strings.NewReplacer's result with the pairs sorted longest
// first, whatever the chunking of the input.
type replacer struct {
	old, new [][]byte // longest old first
	maxLen   int      // of old
}

// newReplacer returns a replacer for pairs, or nil if there is nothing to
// replace. Of pairs with the same old string the first wins; empty old
// strings are dropped.
func newReplacer(pairs []scrubPair) *replacer {
	pairs = slices.Clone(pairs)
	slices.SortStableFunc(pairs, func(a, b scrubPair) int { return len(b.old) - len(a.old) })
	r := &replacer{}
	for i, p := range pairs {
		if p.old == "" || slices.ContainsFunc(pairs[:i], func(q scrubPair) bool { return q.old == p.old }) {
			continue
		}
		r.old = append(r.old, []byte(p.old))
		r.new = append(r.new, []byte(p.new))
		r.maxLen = max(r.maxLen, len(p.old))
	}
	if len(r.old) == 0 {
		return nil
	}
	return r
}

// replace appends b to dst with the old strings replaced, up to where the
// input is decided, and returns how much of b it consumed. Unless final,
// the last maxLen-1 bytes of b are not decided: an old string could start
// there and end in the next read. The caller keeps them and calls again
// with more input after them. next is scratch space of len(r.old).
//
// The held tail is always maxLen-1 bytes, whatever they are. Holding back
// only a possible start of a value would be cheaper, but then how soon a
// byte comes through would tell whether it begins a value, and a guest
// whose bytes an upstream echoes as they come (a streaming echo) could
// learn a value one byte at a time by timing.
func (r *replacer) replace(dst, b []byte, final bool, next []int) ([]byte, int) {
	u := len(b) // positions before u are decided: any old string starting there ends within b
	if !final {
		u = max(0, len(b)-(r.maxLen-1))
	}
	for k := range next {
		next[k] = -1
	}
	i := 0
	for i < u {
		best, at := -1, math.MaxInt
		for k, o := range r.old {
			if next[k] != math.MaxInt && next[k] < i {
				if j := bytes.Index(b[i:], o); j >= 0 {
					next[k] = i + j
				} else {
					next[k] = math.MaxInt // nowhere further on either
				}
			}
			if next[k] < at { // strictly: on a tie the longer (earlier) string wins
				best, at = k, next[k]
			}
		}
		if best < 0 || at >= u {
			break
		}
		dst = append(dst, b[i:at]...)
		dst = append(dst, r.new[best]...)
		i = at + len(r.old[best])
	}
	if i < u {
		dst = append(dst, b[i:u]...)
		i = u
	}
	return dst, i
}

// Replace returns s with every old string replaced.
func (r *replacer) Replace(s string) string {
	if r == nil {
		return s
	}
	out, _ := r.replace(nil, []byte(s), true, make([]int, len(r.old)))
	return string(out)
}

// header replaces in every key and value of h.
func (r *replacer) header(h http.Header) {
	if r == nil {
		return
	}
	renamed := map[string]string{}
	for k, vals := range h {
		for i, v := range vals {
			vals[i] = r.Replace(v)
		}
		if nk := r.Replace(k); nk != k {
			renamed[k] = nk
		}
	}
	for k, nk := range renamed {
		h[nk] = append(h[nk], h[k]...)
		delete(h, k)
	}
}

// noReplacer replaces nothing, for a scrubReader whose replacer is nil
// (while only values too short to scrub everywhere were seen).
var noReplacer = &replacer{maxLen: 1}

// readChunk is how much a scrubbing reader asks of its source at once
// (the size of the ReverseProxy's copy buffer).
const readChunk = 32 << 10

// scrubReader is a response body with a replacer applied as it streams.
// It holds at most maxLen-1 input bytes between reads (and the output of
// one read not yet taken). The replacer is asked for after each read of
// the source, so strings added to it while the body streams (a secret
// set meanwhile) are replaced in every byte read after.
type scrubReader struct {
	src  io.ReadCloser
	rep  func() *replacer
	resp *http.Response // whose Trailer is scrubbed too, once known
	in   []byte         // undecided input: the tail of the last read
	out  []byte         // scrubbed output not yet returned
	off  int
	err  error
	next []int
}

func newScrubReader(src io.ReadCloser, rep func() *replacer, resp *http.Response) *scrubReader {
	return &scrubReader{src: src, rep: rep, resp: resp, in: make([]byte, 0, readChunk)}
}

func (s *scrubReader) Read(p []byte) (int, error) {
	for s.off == len(s.out) {
		if s.err != nil {
			return 0, s.err
		}
		s.fill()
	}
	n := copy(p, s.out[s.off:])
	s.off += n
	return n, nil
}

func (s *scrubReader) fill() {
	if cap(s.in)-len(s.in) < readChunk {
		s.in = slices.Grow(s.in, readChunk)
	}
	n, err := s.src.Read(s.in[len(s.in):cap(s.in)])
	s.in = s.in[:len(s.in)+n]
	if err != nil && err != io.EOF {
		// The guest's response is cut off anyway: drop the held tail
		// rather than pass what may be the start of a value.
		s.in, s.out, s.off, s.err = s.in[:0], s.out[:0], 0, err
		return
	}
	r := s.rep()
	if r == nil {
		r = noReplacer
	}
	if len(s.next) != len(r.old) {
		s.next = make([]int, len(r.old))
	}
	var used int
	s.out, used = r.replace(s.out[:0], s.in, err == io.EOF, s.next)
	s.off = 0
	s.in = s.in[:copy(s.in, s.in[used:])]
	if err == io.EOF {
		s.scrubTrailer() // the transport fills it in before it returns EOF
		s.err = err
	}
}

// Close closes the body and scrubs the trailer, which the transport
// fills in when the body ends or is closed (the ReverseProxy closes the
// body before it copies the trailer).
func (s *scrubReader) Close() error {
	err := s.src.Close()
	s.scrubTrailer()
	return err
}

func (s *scrubReader) scrubTrailer() {
	if s.resp != nil {
		s.rep().header(s.resp.Trailer)
	}
}

// exfilScan is what a request body to one host must not contain: the
// placeholders, and the real values of minValueScan bytes or more, of the
// secrets not allowed for that host.
type exfilScan struct {
	pats    [][]byte
	names   []string // the secret of each pattern
	reasons []string // why it may not go, for the guest and the event
	maxLen  int
}

// scanReader is a request body checked as it streams. It passes on only
// bytes that cannot be part of a pattern (holding back maxLen-1 bytes
// until the next read or the end, as scrubReader does and for the same
// reason), so when a pattern turns up the upload is cut before any of it
// leaves the host. Memory: one read plus maxLen-1 bytes, whatever the
// body's length; the whole body is scanned.
type scanReader struct {
	src     io.ReadCloser
	scan    *exfilScan
	blocked func(name, reason string) error // records the refusal; returns the read error that ends the upload
	in      []byte
	off     int // in[off:ready] is checked and not yet returned
	ready   int
	err     error
}

func newScanReader(src io.ReadCloser, scan *exfilScan, blocked func(name, reason string) error) *scanReader {
	return &scanReader{src: src, scan: scan, blocked: blocked, in: make([]byte, 0, readChunk+scan.maxLen)}
}

func (s *scanReader) Read(p []byte) (int, error) {
	for s.off == s.ready {
		if s.err != nil {
			return 0, s.err
		}
		s.fill()
	}
	n := copy(p, s.in[s.off:s.ready])
	s.off += n
	return n, nil
}

func (s *scanReader) fill() {
	s.in = s.in[:copy(s.in, s.in[s.off:])]
	s.off, s.ready = 0, 0
	if cap(s.in)-len(s.in) < readChunk {
		s.in = slices.Grow(s.in, readChunk)
	}
	n, err := s.src.Read(s.in[len(s.in):cap(s.in)])
	s.in = s.in[:len(s.in)+n]
	if err != nil && err != io.EOF {
		s.in, s.err = s.in[:0], err // the upload fails anyway
		return
	}
	u := len(s.in)
	if err == nil {
		u = max(0, len(s.in)-(s.scan.maxLen-1))
	}
	// A pattern starting before u lies wholly in s.in; one starting at
	// u or later is looked for again in the next call, when the tail
	// has grown.
	for k, pat := range s.scan.pats {
		if j := bytes.Index(s.in, pat); j >= 0 && j < u {
			s.in, s.err = s.in[:0], s.blocked(s.scan.names[k], s.scan.reasons[k])
			return
		}
	}
	s.ready, s.err = u, err
}

func (s *scanReader) Close() error { return s.src.Close() }
