package agentproto

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
)

// Handshake lines are ASCII, so that they can never be mistaken for a
// yamux header (whose first byte is the protocol version, 0) and so that a
// stale yamux session on the other end fails on them at once.
//
//	host:  GONDOLIN-HELLO <nonce>\n   (repeated until answered)
//	guest: GONDOLIN-READY <nonce>\n   (once per nonce)
//	host:  GONDOLIN-GO <nonce>\n      (after READY; yamux follows)
//
// The guest discards everything up to GO, so repeated HELLOs and the
// remains of a dead host's frames cannot reach the new yamux session; the
// host discards everything up to READY, so output queued for a dead host
// cannot either.
//
// Before a VM's state is saved (a template), the host parks the agent
// instead of starting a session:
//
//	host:  GONDOLIN-PARK <nonce>\n     (repeated until answered)
//	guest: GONDOLIN-PARKED <nonce>\n   (once its previous session is gone)
//
// PARKED can only come from the handshake loop, so it proves that no
// session is open and none is being torn down; the guest then waits for
// the next HELLO, which is where a restored copy resumes.
const (
	WordHello  = "HELLO"
	WordReady  = "READY"
	WordGo     = "GO"
	WordPark   = "PARK"
	WordParked = "PARKED"

	linePrefix = "GONDOLIN-"
	nonceLen   = 32
	// maxLine bounds how much of a garbage line the scanner keeps: the
	// longest valid line.
	maxLine = len(linePrefix) + len(WordParked) + 1 + nonceLen + 1
)

// words are the handshake words ScanLine recognises.
var words = []string{WordHello, WordReady, WordGo, WordPark, WordParked}

// NewNonce returns a fresh random nonce for one connection.
func NewNonce() string {
	var b [nonceLen / 2]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b[:])
}

// Line formats one handshake line.
func Line(word, nonce string) []byte {
	return []byte(linePrefix + word + " " + nonce + "\n")
}

// ErrNoHandshake means the stream ended before a handshake line arrived.
var ErrNoHandshake = errors.New("no handshake line before end of stream")

// ScanLine reads from r until it finds a well-formed handshake line and
// returns its word and nonce. Anything else is skipped, with memory bounded
// by the longest valid line. r should be a *bufio.Reader that the caller
// goes on using afterwards, so no byte after the line is lost.
func ScanLine(r *bufio.Reader) (word, nonce string, err error) {
	var line []byte
	for {
		b, err := r.ReadByte()
		if err != nil {
			if err == io.EOF {
				err = ErrNoHandshake
			}
			return "", "", err
		}
		if b != '\n' {
			line = append(line, b)
			if len(line) > maxLine {
				// Keep only a tail that could still become a valid line.
				line = append(line[:0], line[len(line)-maxLine:]...)
			}
			continue
		}
		if word, nonce, ok := parseLine(line); ok {
			return word, nonce, nil
		}
		line = line[:0]
	}
}

func parseLine(line []byte) (word, nonce string, ok bool) {
	i := bytes.LastIndex(line, []byte(linePrefix))
	if i < 0 {
		return "", "", false
	}
	rest := string(line[i+len(linePrefix):])
	for _, w := range words {
		if len(rest) == len(w)+1+nonceLen && rest[:len(w)+1] == w+" " && isHex(rest[len(w)+1:]) {
			return w, rest[len(w)+1:], true
		}
	}
	return "", "", false
}

func isHex(s string) bool {
	for _, c := range []byte(s) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// GuestHandshake is the guest's side: it waits for a host's HELLO,
// answers READY once per nonce, and returns once the matching GO has been
// read, leaving br positioned at the first byte after it. It returns
// ErrNoHandshake when the stream ends first (no host is connected: a
// virtio port then reads EOF at once). PARK lines are ignored.
func GuestHandshake(br *bufio.Reader, w io.Writer) error {
	return GuestHandshakePark(br, w, nil)
}

// GuestHandshakePark is GuestHandshake for a guest that can be parked:
// on a PARK line it calls park once per nonce and, if park succeeds,
// answers PARKED, then goes on waiting for a HELLO.
func GuestHandshakePark(br *bufio.Reader, w io.Writer, park func() error) error {
	answered, parked := "", ""
	for {
		word, nonce, err := ScanLine(br)
		if err != nil {
			return err
		}
		switch word {
		case WordHello:
			if nonce != answered {
				if _, err := w.Write(Line(WordReady, nonce)); err != nil {
					return err
				}
				answered = nonce
			}
		case WordGo:
			if nonce == answered {
				return nil
			}
		case WordPark:
			if park == nil || nonce == parked {
				continue
			}
			if err := park(); err != nil {
				return err
			}
			if _, err := w.Write(Line(WordParked, nonce)); err != nil {
				return err
			}
			parked = nonce
		}
	}
}

// ValidNonce reports whether s has the form NewNonce returns.
func ValidNonce(s string) bool { return len(s) == nonceLen && isHex(s) }

// Conn joins a buffered reader that already holds bytes read past the
// handshake with the writer and closer of the underlying channel, so a
// yamux session can take over without losing a byte.
type Conn struct {
	R *bufio.Reader
	W io.Writer
	C io.Closer
}

func (c *Conn) Read(p []byte) (int, error)  { return c.R.Read(p) }
func (c *Conn) Write(p []byte) (int, error) { return c.W.Write(p) }
func (c *Conn) Close() error                { return c.C.Close() }

func (c *Conn) String() string { return fmt.Sprintf("agentproto.Conn(%T)", c.W) }

// yamuxHeaderLen is the size of a yamux frame header.
const yamuxHeaderLen = 12

// coalesceMax is the largest body CoalesceWriter copies to join it to
// its header.
const coalesceMax = 8 << 10

// CoalesceWriter joins each yamux data frame's header to its body, which
// yamux writes with two calls. On a virtio-serial port every write is a
// guest exit and a separate buffer, so halving the writes matters. Only a
// data frame with a body is held back, so nothing can wait for a write
// that never comes.
type CoalesceWriter struct {
	W       io.Writer
	buf     []byte // reused: a held header, then header and body
	holding bool
}

func (c *CoalesceWriter) Write(p []byte) (int, error) {
	if !c.holding && len(p) == yamuxHeaderLen && p[1] == 0 && binary.BigEndian.Uint32(p[8:12]) > 0 {
		c.buf = append(c.buf[:0], p...)
		c.holding = true
		return len(p), nil
	}
	if !c.holding {
		return c.W.Write(p)
	}
	c.holding = false
	if len(p) > coalesceMax {
		// A large body costs more to copy than one more write does.
		if _, err := c.W.Write(c.buf[:yamuxHeaderLen]); err != nil {
			return 0, err
		}
		return c.W.Write(p)
	}
	c.buf = append(c.buf[:yamuxHeaderLen], p...)
	n, err := c.W.Write(c.buf)
	return max(n-yamuxHeaderLen, 0), err
}
