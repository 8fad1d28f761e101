package agentproto

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

const nonce = "0123456789abcdef0123456789abcdef"

func TestScanLine(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		wantWord  string
		wantNonce string
		wantRest  string
		wantErr   error
	}{
		{name: "clean", in: "GONDOLIN-HELLO " + nonce + "\nyamux", wantWord: WordHello, wantNonce: nonce, wantRest: "yamux"},
		{name: "garbage before", in: "\x00\x01junk\nmore junk\nGONDOLIN-READY " + nonce + "\n", wantWord: WordReady, wantNonce: nonce},
		{name: "garbage on same line", in: "\x00\x00\x00\x0cxyzGONDOLIN-GO " + nonce + "\n\x00", wantWord: WordGo, wantNonce: nonce, wantRest: "\x00"},
		{name: "huge garbage line", in: strings.Repeat("A", 1<<20) + "GONDOLIN-HELLO " + nonce + "\n", wantWord: WordHello, wantNonce: nonce},
		{name: "short nonce skipped", in: "GONDOLIN-HELLO abc\nGONDOLIN-HELLO " + nonce + "\n", wantWord: WordHello, wantNonce: nonce},
		{name: "upper-case nonce skipped", in: "GONDOLIN-HELLO " + strings.ToUpper(nonce) + "\n", wantErr: ErrNoHandshake},
		{name: "unknown word skipped", in: "GONDOLIN-HOWDY " + nonce + "\n", wantErr: ErrNoHandshake},
		{name: "trailing junk skipped", in: "GONDOLIN-HELLO " + nonce + "x\n", wantErr: ErrNoHandshake},
		{name: "no newline", in: "GONDOLIN-HELLO " + nonce, wantErr: ErrNoHandshake},
		{name: "empty", in: "", wantErr: ErrNoHandshake},
		{name: "park", in: "GONDOLIN-PARK " + nonce + "\n", wantWord: WordPark, wantNonce: nonce},
		{name: "parked", in: "junk GONDOLIN-PARKED " + nonce + "\n", wantWord: WordParked, wantNonce: nonce},
		{name: "park with parked's length skipped", in: "GONDOLIN-PARK " + nonce + "xy\n", wantErr: ErrNoHandshake},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := bufio.NewReader(strings.NewReader(tt.in))
			word, n, err := ScanLine(r)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil || word != tt.wantWord || n != tt.wantNonce {
				t.Fatalf("got %q %q %v, want %q %q", word, n, err, tt.wantWord, tt.wantNonce)
			}
			rest, _ := io.ReadAll(r)
			if string(rest) != tt.wantRest {
				t.Fatalf("rest = %q, want %q", rest, tt.wantRest)
			}
		})
	}
}

// TestGuestHandshakePark drives the guest's side with scripted host
// lines and checks what it answers and whether it parked.
func TestGuestHandshakePark(t *testing.T) {
	other := strings.Repeat("f", 32)
	park := func(n string) string { return string(Line(WordPark, n)) }
	hello := func(n string) string { return string(Line(WordHello, n)) }
	goLine := func(n string) string { return string(Line(WordGo, n)) }
	tests := []struct {
		name      string
		in        string
		parkErr   error
		nilPark   bool
		wantOut   string
		wantParks int
		wantErr   error
	}{
		{name: "park then session", in: park(nonce) + park(nonce) + hello(other) + goLine(other),
			wantOut: string(Line(WordParked, nonce)) + string(Line(WordReady, other)), wantParks: 1},
		{name: "park refused", in: park(nonce), parkErr: errors.New("busy"), wantErr: errors.New("busy")},
		{name: "park ignored without a parker", in: park(nonce) + hello(other) + goLine(other), nilPark: true,
			wantOut: string(Line(WordReady, other))},
		{name: "parked line from a host ignored", in: string(Line(WordParked, nonce)), wantErr: ErrNoHandshake},
		{name: "two parks", in: park(nonce) + park(other), wantOut: string(Line(WordParked, nonce)) + string(Line(WordParked, other)),
			wantParks: 2, wantErr: ErrNoHandshake},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			parks := 0
			parker := func() error { parks++; return tt.parkErr }
			if tt.nilPark {
				parker = nil
			}
			err := GuestHandshakePark(bufio.NewReader(strings.NewReader(tt.in)), &out, parker)
			if (err == nil) != (tt.wantErr == nil) || (err != nil && err.Error() != tt.wantErr.Error()) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if tt.parkErr == nil && out.String() != tt.wantOut {
				t.Fatalf("wrote %q, want %q", out.String(), tt.wantOut)
			}
			if tt.parkErr == nil && parks != tt.wantParks {
				t.Fatalf("parked %d times, want %d", parks, tt.wantParks)
			}
		})
	}
}

func TestNewNonce(t *testing.T) {
	a, b := NewNonce(), NewNonce()
	if !ValidNonce(a) || !ValidNonce(b) || a == b {
		t.Fatalf("nonces %q %q", a, b)
	}
	word, n, err := ScanLine(bufio.NewReader(bytes.NewReader(Line(WordGo, a))))
	if err != nil || word != WordGo || n != a {
		t.Fatalf("round trip: %q %q %v", word, n, err)
	}
}

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	payloads := [][]byte{nil, []byte("x"), bytes.Repeat([]byte{7}, MaxData)}
	for i, p := range payloads {
		if err := WriteFrame(&buf, FrameType(i+3), p); err != nil {
			t.Fatal(err)
		}
	}
	for i, p := range payloads {
		f, err := ReadFrame(&buf, MaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		if f.Type != FrameType(i+3) || !bytes.Equal(f.Payload, p) {
			t.Fatalf("frame %d: type %v len %d", i, f.Type, len(f.Payload))
		}
	}
	if _, err := ReadFrame(&buf, MaxFrame); err != io.EOF {
		t.Fatalf("after last frame: %v, want EOF", err)
	}
}

func TestReadFrameRejects(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty frame", []byte{0, 0, 0, 0}, ErrBadFrame},
		{"too large", []byte{0x7f, 0xff, 0xff, 0xff, 1}, ErrFrameTooLarge},
		{"just over limit", []byte{0, 0x10, 0, 1, 1}, ErrFrameTooLarge},
		{"truncated payload", []byte{0, 0, 0, 9, 3, 'a'}, io.ErrUnexpectedEOF},
		{"truncated header", []byte{0, 0}, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadFrame(bytes.NewReader(tt.in), MaxFrame)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	if err := WriteFrame(io.Discard, FrameStdout, make([]byte, MaxFrame)); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized write: %v", err)
	}
}

func TestExpect(t *testing.T) {
	var buf bytes.Buffer
	WriteJSON(&buf, FrameResponse, Response{ID: 4})
	WriteJSON(&buf, FrameError, Response{Error: "no such process"})
	WriteJSON(&buf, FrameExit, ExitStatus{Code: 1})
	WriteFrame(&buf, FrameResponse, []byte(`{"id":1,"bogus":2}`))
	WriteFrame(&buf, FrameResponse, []byte(`{"id":1} {"id":2}`))

	var resp Response
	if err := Expect(&buf, FrameResponse, &resp); err != nil || resp.ID != 4 {
		t.Fatalf("response: %+v %v", resp, err)
	}
	var agentErr *AgentError
	if err := Expect(&buf, FrameResponse, &resp); !errors.As(err, &agentErr) || agentErr.Msg != "no such process" {
		t.Fatalf("error frame: %v", err)
	}
	if err := Expect(&buf, FrameResponse, &resp); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("wrong type: %v", err)
	}
	if err := Expect(&buf, FrameResponse, &resp); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("unknown field: %v", err)
	}
	if err := Expect(&buf, FrameResponse, &resp); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("trailing data: %v", err)
	}
}

func TestOutputPayload(t *testing.T) {
	f := Frame{Type: FrameOutput, Payload: OutputPayload(1<<40, []byte("hi"))}
	off, data, err := f.Offset()
	if err != nil || off != 1<<40 || string(data) != "hi" {
		t.Fatalf("%d %q %v", off, data, err)
	}
	if _, _, err := (Frame{Type: FrameOutput, Payload: []byte{1}}).Offset(); err == nil {
		t.Fatal("short output frame accepted")
	}
}

func TestExecValidate(t *testing.T) {
	tests := []struct {
		name string
		exec *Exec
		ok   bool
	}{
		{"ok", &Exec{Argv: []string{"true"}, Env: []string{"A=1", "B="}}, true},
		{"nil", nil, false},
		{"no argv", &Exec{}, false},
		{"empty argv0", &Exec{Argv: []string{""}}, false},
		{"env without =", &Exec{Argv: []string{"x"}, Env: []string{"A"}}, false},
		{"env empty key", &Exec{Argv: []string{"x"}, Env: []string{"=1"}}, false},
		{"NUL in argv", &Exec{Argv: []string{"x\x00y"}}, false},
		{"NUL in cwd", &Exec{Argv: []string{"x"}, Cwd: "/\x00"}, false},
	}
	for _, tt := range tests {
		if err := tt.exec.Validate(); (err == nil) != tt.ok {
			t.Errorf("%s: err = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

// Guest bytes are untrusted: the host's decoders must never panic and must
// never return a frame larger than the limit.
func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	WriteJSON(&buf, FrameExit, ExitStatus{Code: 3, Signal: 0})
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 0, 9, 7, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			fr, err := ReadFrame(r, 4096)
			if err != nil {
				return
			}
			if len(fr.Payload)+1 > 4096 {
				t.Fatalf("frame of %d bytes passed a 4096 limit", len(fr.Payload))
			}
			var resp Response
			_ = fr.Decode(&resp)
			var exit ExitStatus
			_ = fr.Decode(&exit)
			_, _, _ = fr.Offset()
		}
	})
}

func FuzzScanLine(f *testing.F) {
	f.Add([]byte("junk\nGONDOLIN-READY " + nonce + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		word, n, err := ScanLine(bufio.NewReader(bytes.NewReader(data)))
		if err != nil {
			return
		}
		if !ValidNonce(n) || !slices.Contains(words, word) {
			t.Fatalf("accepted %q %q", word, n)
		}
		if !bytes.Contains(data, Line(word, n)) {
			t.Fatalf("returned a line that is not in the input")
		}
	})
}

func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"op":"exec","exec":{"argv":["sh"],"tty":true,"rows":24}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var req Request
		if err := (Frame{Type: FrameRequest, Payload: data}).Decode(&req); err != nil {
			return
		}
		if req.Exec != nil {
			_ = req.Exec.Validate()
		}
	})
}

// TestFrameInPlace frames a long output the way the agent does: one
// buffer, each piece's header written over the end of the piece before
// it (already written out); every frame must read back whole.
func TestFrameInPlace(t *testing.T) {
	for _, n := range []int{0, 1, MaxData - 1, MaxData, 3*MaxData + 17} {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(i * 7)
		}
		buf := append(make([]byte, HeaderLen), data...)
		var out bytes.Buffer
		for off := 0; off < n; {
			m := min(n-off, MaxData)
			if err := WriteFrameInPlace(&out, FrameStdout, buf[off:HeaderLen+off+m]); err != nil {
				t.Fatal(err)
			}
			off += m
		}
		var got []byte
		for out.Len() > 0 {
			f, err := ReadFrame(&out, MaxFrame)
			if err != nil || f.Type != FrameStdout {
				t.Fatalf("%d bytes: frame %v, %v", n, f.Type, err)
			}
			got = append(got, f.Payload...)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: read back %d bytes, not the same", n, len(got))
		}
	}
	if err := WriteFrameInPlace(io.Discard, FrameStdout, make([]byte, HeaderLen-1)); err != ErrBadFrame {
		t.Fatalf("no room for the header: %v", err)
	}
	if err := WriteFrameInPlace(io.Discard, FrameStdout, make([]byte, HeaderLen+MaxFrame)); err != ErrFrameTooLarge {
		t.Fatalf("too large: %v", err)
	}
}

// writeLog records each Write.
type writeLog struct{ writes [][]byte }

func (w *writeLog) Write(p []byte) (int, error) {
	w.writes = append(w.writes, append([]byte(nil), p...))
	return len(p), nil
}

// TestCoalesceWriter: a yamux data header and a small body go out in one
// write; a large body follows its header in a second write, uncopied;
// other writes pass through.
func TestCoalesceWriter(t *testing.T) {
	header := func(length int) []byte {
		h := make([]byte, yamuxHeaderLen)
		h[1] = 0 // data
		h[8], h[9], h[10], h[11] = byte(length>>24), byte(length>>16), byte(length>>8), byte(length)
		return h
	}
	cases := []struct {
		name   string
		writes [][]byte
		want   int // writes that reach the port
	}{
		{"small body joined", [][]byte{header(5), []byte("hello")}, 1},
		{"largest joined body", [][]byte{header(coalesceMax), make([]byte, coalesceMax)}, 1},
		{"large body apart", [][]byte{header(coalesceMax + 1), make([]byte, coalesceMax+1)}, 2},
		{"window update passes", [][]byte{{0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}}, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var log writeLog
			c := &CoalesceWriter{W: &log}
			var sent []byte
			for _, w := range tc.writes {
				if n, err := c.Write(w); err != nil || n != len(w) {
					t.Fatalf("write: %d, %v", n, err)
				}
				sent = append(sent, w...)
			}
			var got []byte
			for _, w := range log.writes {
				got = append(got, w...)
			}
			if len(log.writes) != tc.want || !bytes.Equal(got, sent) {
				t.Fatalf("%d writes (want %d), bytes equal: %v", len(log.writes), tc.want, bytes.Equal(got, sent))
			}
		})
	}
}
