package netpolicy

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"

	"github.com/gondolin/gondolin/internal/contain"
	"github.com/miekg/dns"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Panics. The guest is hostile and its bytes reach parsers here, so a bug
// it can trigger must cost that guest, never the supervisor serving every
// VM. Each goroutine that serves the guest recovers (internal/contain):
//
//   - One that serves a single connection or message (a TCP flow, an
//     HTTP request, a DNS query, an SSH channel, a DHCP frame) logs the
//     panic with its stack, records a Failed event (not for DHCP) and
//     closes that connection only: it holds no state shared with others.
//   - One that serves the whole VM (frames in and out, DNS over UDP, the
//     HTTP server's accept loop) may have left the stack half-updated,
//     and without it the VM has no network: the Network is closed and
//     Options.OnPanic hears of it, so the owner can take the VM out of
//     service (sessions marks the session broken).

// testHookDNSQuery, when a test sets it (before making a Network), runs
// on every parsed DNS query: a way to make one panic.
var testHookDNSQuery func(*dns.Msg)

// logPanic logs a contained panic with its stack.
func (n *Network) logPanic(pe *contain.PanicError, what string) {
	n.log.Error("netpolicy: "+what, "err", pe.Error(), "stack", string(pe.Stack))
}

// flowPanic handles a panic in code serving one guest connection: it is
// logged and recorded on ev, and c (when given) is closed.
func (n *Network) flowPanic(pe *contain.PanicError, ev Event, c io.Closer) {
	n.logPanic(pe, "panic serving one guest connection; it was closed")
	ev.Action, ev.Reason = Failed, pe.Error()+"; the connection was closed"
	n.event(ev)
	if c != nil {
		c.Close()
	}
}

// goFlow runs f in a new goroutine that serves one guest connection: a
// panic in it is handled by flowPanic, which closes c.
func (n *Network) goFlow(where string, ev Event, c io.Closer, f func()) {
	contain.Go(where, func(pe *contain.PanicError) { n.flowPanic(pe, ev, c) }, f)
}

// loopPanic handles a panic in a loop that serves the whole VM (deferred
// after n.wg.Done, so it runs first): the network is closed and the owner
// told.
func (n *Network) loopPanic(pe *contain.PanicError) {
	n.logPanic(pe, "panic serving the guest's network; it is stopped")
	// Close waits for n.wg, which counts the goroutine this runs on.
	go n.Close()
	if n.opts.OnPanic != nil {
		n.opts.OnPanic(pe)
	}
}

// handleFlowPanic handles a panic in handleFlow for the connection id.
// Before the flow exists (the handshake) there is nothing to close; the
// request may or may not have been completed, so it is left alone (a
// handshake slot may be lost).
func (n *Network) handleFlowPanic(pe *contain.PanicError, id stack.TransportEndpointID, fc *flowConn, ep tcpip.Endpoint) {
	ev := Event{Proto: "tcp"}
	if id.LocalAddress.Len() == 4 {
		dst := netip.AddrFrom4(id.LocalAddress.As4())
		ev.Host, ev.Port = dst.String(), id.LocalPort
		if name, ok := n.synth.name(dst); ok {
			ev.Host = name
		}
	}
	if fc == nil {
		n.flowPanic(pe, ev, nil)
		return
	}
	ep.Abort() // RST: the guest fails at once
	n.flowPanic(pe, ev, fc)
}

// answerDHCP is dhcpReply for the frame loop, where a panic (a guest
// frame hitting a parser bug) costs that frame only: dhcpReply keeps no
// state a panic could leave broken.
func (n *Network) answerDHCP(f []byte) (reply []byte) {
	defer contain.Recover("the DHCP server", func(pe *contain.PanicError) {
		n.logPanic(pe, "panic answering a DHCP frame; it was dropped")
		reply = nil
	})
	return dhcpReply(f, n.opts.GuestMAC)
}

// containHTTP records and logs, with its stack, a panic in a handler of
// guest requests. net/http recovers it too and closes the connection,
// but logs it only to the server's ErrorLog (debug level here), and
// http.ErrAbortHandler, which the reverse proxy uses to cut a response
// short, is no bug: it passes untouched.
func (n *Network) containHTTP(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer contain.Recover("an HTTP request from the guest", func(pe *contain.PanicError) {
			if pe.Value != http.ErrAbortHandler {
				n.flowPanic(pe, Event{Proto: "http", Method: r.Method, Host: r.Host}, nil)
			}
			panic(http.ErrAbortHandler) // net/http closes the connection
		})
		h.ServeHTTP(w, r)
	})
}

// containDial turns a panic in an upstream dial into an error for the
// request that asked. http.Transport dials on a goroutine of its own,
// which net/http does not recover.
func (n *Network) containDial(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		defer contain.Recover("an upstream dial", func(pe *contain.PanicError) {
			n.logPanic(pe, "panic dialling an upstream; the request failed")
			c, err = nil, pe
		})
		return dial(ctx, network, addr)
	}
}

// containedBody is a guest's request body whose reads recover: the
// transport reads request bodies on a goroutine of its own, which
// net/http does not recover, and a body may be scanned for secrets
// (scanReader) as it is read.
type containedBody struct {
	io.ReadCloser
	n *Network
}

func (b containedBody) Read(p []byte) (k int, err error) {
	defer contain.Recover("a guest request body", func(pe *contain.PanicError) {
		b.n.logPanic(pe, "panic reading a guest request body; the request failed")
		k, err = 0, pe
	})
	return b.ReadCloser.Read(p)
}

// closers closes each of its elements.
type closers []io.Closer

func (cs closers) Close() error {
	for _, c := range cs {
		c.Close()
	}
	return nil
}
