package fsproto

import (
	"bufio"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/gondolin/gondolin/vm/agentproto"
)

// The fs port resynchronises exactly as the agent channel does (see
// agentproto): the host repeats HELLO <nonce> until the guest answers
// READY <nonce>, then sends GO <nonce>, and frames follow. Each end
// discards everything before the line it waits for, so bytes a dead host
// left in flight, or requests a guest sent to it, never reach the new
// session.
//
// Two more cases are particular to this port, where either end may be
// replaced while the other stays connected:
//
//   - A guest that never saw its old host go away may be in the middle of
//     reading a reply frame when the new host's HELLO arrives. So every
//     repeated HELLO is preceded by Breaker: more newlines than the
//     largest frame. They complete any partial frame, and the next size
//     field the guest reads is made of newlines (0x0a0a0a0a), beyond
//     MaxSkip, which sends the guest back to the handshake.
//   - A new guest client (the fs daemon restarted) finds a host that is
//     serving frames, perhaps in the middle of a request the old client
//     left unfinished. So a guest client sends Breaker before it waits
//     for HELLO: the host reads ErrDesync and starts the handshake again
//     on the same connection.
const (
	helloFirst    = 100 * time.Millisecond
	helloMax      = time.Second
	readerBufSize = 256 << 10
)

// Breaker is the resync padding: newlines, more than the largest frame.
// Made on first use: every gondolin process links this package, and a
// megabyte of newlines made at start-up would cost each CLI command.
var Breaker = sync.OnceValue(func() []byte { return []byte(strings.Repeat("\n", MaxFrame+8)) })

// NewReader returns the buffered reader a connection's handshakes and
// frames are read through.
func NewReader(r io.Reader) *bufio.Reader { return bufio.NewReaderSize(r, readerBufSize) }

// HostHandshake resynchronises the channel from the host's end: it
// returns when the guest has answered, with br positioned at the first
// frame, or when reading or writing fails (close the connection to abort
// it). br reads from the same connection w writes to.
func HostHandshake(w io.Writer, br *bufio.Reader) error {
	nonce := agentproto.NewNonce()
	hello := agentproto.Line(agentproto.WordHello, nonce)
	padded := append(append([]byte(nil), Breaker()...), hello...)

	stop := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		wait := helloFirst
		for i := 0; ; i++ {
			msg := hello
			if i > 0 {
				msg = padded
			}
			if _, err := w.Write(msg); err != nil {
				return
			}
			select {
			case <-stop:
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, helloMax)
		}
	}()
	var err error
	for {
		var word, n string
		word, n, err = agentproto.ScanLine(br)
		if err != nil || word == agentproto.WordReady && n == nonce {
			break
		}
	}
	close(stop)
	<-stopped // never write GO into the middle of a HELLO
	if err != nil {
		return err
	}
	_, err = w.Write(agentproto.Line(agentproto.WordGo, nonce))
	return err
}

// GuestHandshake waits for a host's HELLO, answers READY once per nonce,
// and returns a reader positioned after the matching GO. It returns
// agentproto.ErrNoHandshake when the stream ends first (no host is
// connected: a virtio port then reads EOF at once). A client sends
// Breaker first (see above).
func GuestHandshake(rw io.ReadWriter) (*bufio.Reader, error) {
	br := NewReader(rw)
	if err := agentproto.GuestHandshake(br, rw); err != nil {
		return nil, err
	}
	return br, nil
}
