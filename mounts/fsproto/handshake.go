package fsproto

import (
	"bufio"
	"io"
	"strings"
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
// One more case is particular to this port: a guest that never saw its
// old host go away may be in the middle of reading a reply frame when the
// new host's HELLO arrives. So every repeated HELLO is preceded by more
// newlines than the largest frame: they complete any partial frame, and
// the next size field the guest reads is made of newlines (0x0a0a0a0a),
// larger than MaxFrame, which sends the guest back to the handshake.
const (
	helloFirst    = 100 * time.Millisecond
	helloMax      = time.Second
	helloPadding  = MaxFrame + 8
	readerBufSize = 256 << 10
)

// HostHandshake resynchronises the channel from the host's end and
// returns a reader positioned at the first frame. It returns when the
// guest answers or rw fails (close rw to abort it).
func HostHandshake(rw io.ReadWriter) (*bufio.Reader, error) {
	nonce := agentproto.NewNonce()
	hello := agentproto.Line(agentproto.WordHello, nonce)
	padded := append([]byte(strings.Repeat("\n", helloPadding)), hello...)

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
			if _, err := rw.Write(msg); err != nil {
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
	br := bufio.NewReaderSize(rw, readerBufSize)
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
		return nil, err
	}
	if _, err := rw.Write(agentproto.Line(agentproto.WordGo, nonce)); err != nil {
		return nil, err
	}
	return br, nil
}

// GuestHandshake waits for a host's HELLO, answers READY once per nonce,
// and returns a reader positioned after the matching GO. It returns
// agentproto.ErrNoHandshake when the stream ends first (no host is
// connected: a virtio port then reads EOF at once).
func GuestHandshake(rw io.ReadWriter) (*bufio.Reader, error) {
	br := bufio.NewReaderSize(rw, readerBufSize)
	answered := ""
	for {
		word, nonce, err := agentproto.ScanLine(br)
		if err != nil {
			return nil, err
		}
		switch word {
		case agentproto.WordHello:
			if nonce != answered {
				if _, err := rw.Write(agentproto.Line(agentproto.WordReady, nonce)); err != nil {
					return nil, err
				}
				answered = nonce
			}
		case agentproto.WordGo:
			if nonce == answered {
				return br, nil
			}
		}
	}
}
