package netpolicy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/gondolin/gondolin/internal/contain"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// flow is what the host knows about one guest TCP connection.
type flow struct {
	dst netip.AddrPort // where the guest connected
	// synthetic is set when dst is in SyntheticPrefix: the flow's name
	// must then be one DNS handed out for dst.
	synthetic bool
	tls       bool
	sni       string // server name in the ClientHello, as parsed here
}

// flowConn is a guest connection after classification: the bytes read
// while peeking are replayed first, and closing it frees its slot in the
// per-VM flow limit.
type flowConn struct {
	net.Conn
	pre     []byte
	fl      *flow
	once    sync.Once
	release func()
}

func (c *flowConn) Read(b []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(b, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

func (c *flowConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// CloseWrite half-closes toward the guest (raw TCP forwarding).
func (c *flowConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// handleFlow runs for each new guest TCP connection (in its own goroutine,
// started by the forwarder; at most MaxHandshakes at once). It completes
// the handshake unless the VM is at its flow limit, then classifies and
// serves the flow. A panic costs this flow only (see panics.go).
func (n *Network) handleFlow(r *tcp.ForwarderRequest) {
	id := r.ID() // (not once r is completed)
	var (
		fc *flowConn
		ep tcpip.Endpoint
	)
	defer contain.Recover("a guest TCP flow", func(pe *contain.PanicError) { n.handleFlowPanic(pe, id, fc, ep) })
	if id.RemoteAddress.Len() != 4 || id.LocalAddress.Len() != 4 ||
		!GuestPrefix.Contains(netip.AddrFrom4(id.RemoteAddress.As4())) {
		// A spoofed source: a reset could not even be routed back.
		r.Complete(false)
		return
	}
	dst := netip.AddrPortFrom(netip.AddrFrom4(id.LocalAddress.As4()), id.LocalPort)
	if n.flows.Add(1) > int64(n.opts.MaxFlows) {
		n.flows.Add(-1)
		r.Complete(true)
		// One event a second is enough to explain a flood.
		if now := time.Now().Unix(); n.lastLimitEvent.Swap(now) != now {
			n.event(Event{Action: Blocked, Proto: "tcp", Host: dst.Addr().String(), Port: dst.Port(),
				Reason: fmt.Sprintf("too many connections (limit %d per VM)", n.opts.MaxFlows)})
		}
		return
	}
	var wq waiter.Queue
	ep, err := r.CreateEndpoint(&wq)
	if err != nil {
		n.flows.Add(-1)
		r.Complete(true)
		return
	}
	r.Complete(false)
	// Keepalive: a guest that vanishes (VM killed, stream replaced)
	// without closing would otherwise pin the flow's goroutines and
	// upstream socket for the default two hours.
	ep.SocketOptions().SetKeepAlive(true)
	idle := tcpip.KeepaliveIdleOption(60 * time.Second)
	ep.SetSockOpt(&idle)
	intvl := tcpip.KeepaliveIntervalOption(15 * time.Second)
	ep.SetSockOpt(&intvl)
	ep.SetSockOptInt(tcpip.KeepaliveCountOption, 4)

	fc = &flowConn{Conn: gonet.NewTCPConn(&wq, ep), fl: &flow{dst: dst}, release: func() { n.flows.Add(-1) }}
	fc.fl.synthetic = SyntheticPrefix.Contains(dst.Addr())
	n.serveFlow(fc, ep)
}

// serveFlow routes a flow: DNS over TCP to the gateway, a TCP map, or,
// by its first bytes, TLS or HTTP mediation; anything else is reset.
func (n *Network) serveFlow(fc *flowConn, ep tcpip.Endpoint) {
	p := n.policy.Load()
	dst := fc.fl.dst
	if dst.Addr() == GatewayIP && dst.Port() == 53 {
		n.serveDNSTCP(fc)
		return
	}
	if m, ok := n.findTCPMap(p, dst); ok {
		n.forwardTCP(fc, p, m)
		return
	}
	kind, err := n.peek(fc)
	switch kind {
	case kindTLS:
		fc.fl.tls = true
		if sni, _, perr := parseClientHello(fc.pre); perr == nil {
			fc.fl.sni = sni
		}
		n.proxy.serveTLS(fc)
	case kindHTTP:
		n.proxy.serve(fc)
	case kindSSH:
		n.ssh.serve(fc, ep)
	default:
		reason := "not HTTP, TLS or SSH (other protocols are not mediated; map them with --tcp-map)"
		if errors.Is(err, os.ErrDeadlineExceeded) {
			reason = fmt.Sprintf("no request within %v (server-first protocols are not mediated; map them with --tcp-map)", n.opts.PeekTimeout)
		}
		ev := Event{Action: Blocked, Proto: "tcp", Host: dst.Addr().String(), Port: dst.Port(), Reason: reason}
		if name, ok := n.synth.name(dst.Addr()); ok {
			ev.Host = name
		}
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			n.event(ev)
		}
		ep.Abort() // RST, so the guest fails at once rather than hanging
		fc.Close()
	}
}

// peek reads the flow's first bytes until they can be classified (see
// classify), within PeekTimeout.
func (n *Network) peek(fc *flowConn) (flowKind, error) {
	fc.SetReadDeadline(time.Now().Add(n.opts.PeekTimeout))
	defer fc.SetReadDeadline(time.Time{})
	buf := make([]byte, maxPeek)
	got := 0
	for {
		kind, done := classify(buf[:got])
		if done || got == len(buf) {
			fc.pre = slices.Clone(buf[:got])
			return kind, nil
		}
		m, err := fc.Conn.Read(buf[got:])
		got += m
		if err != nil {
			if kind == kindTLS {
				// Let crypto/tls report the broken handshake.
				fc.pre = slices.Clone(buf[:got])
				return kindTLS, nil
			}
			return kindOther, err
		}
	}
}

// classify reports what a flow's first bytes are and whether enough of
// them are in to act on it: for TLS, the whole first record (so its
// ClientHello can be parsed); for SSH, the whole identification line (so
// it can be checked; the client waits for ours after sending it).
func classify(b []byte) (flowKind, bool) {
	switch kind := sniff(b); kind {
	case kindNeedMore:
		return kind, false
	case kindTLS:
		need, ok := tlsRecordLen(b)
		return kind, ok && (len(b) >= need || need > maxPeek)
	case kindSSH:
		_, complete := sshBannerLine(b)
		return kind, complete || len(b) >= maxSSHBanner
	default:
		return kind, true
	}
}

// findTCPMap finds the TCP map for a destination. For a synthetic address
// unknown to the DNS table (a supervisor restart lost it) each mapped name
// is checked against the address, as synthTable.verify does.
func (n *Network) findTCPMap(p *Policy, dst netip.AddrPort) (TCPMap, bool) {
	name := ""
	if SyntheticPrefix.Contains(dst.Addr()) {
		name, _ = n.synth.name(dst.Addr())
		if name == "" {
			for _, m := range p.TCPMaps {
				if m.GuestPort == dst.Port() && n.synth.verify(dst.Addr(), m.GuestHost) {
					return m, true
				}
			}
			return TCPMap{}, false
		}
	}
	return p.tcpMap(name, dst.Addr(), dst.Port())
}

// forwardTCP connects a mapped flow to its upstream (which the map
// authorizes on its port; see Network.resolve) and copies bytes both ways.
func (n *Network) forwardTCP(fc *flowConn, p *Policy, m TCPMap) {
	defer fc.Close()
	ev := Event{Proto: "tcp", Host: m.GuestHost, Port: m.GuestPort, Rule: "tcp-map " + m.String()}
	up, err := n.proxy.dialMapped(n.ctx, m)
	if err != nil {
		ev.dialFailed(p, err)
		n.event(ev)
		return
	}
	defer up.Close()
	ev.Action = Allowed
	n.event(ev)
	done := make(chan struct{})
	n.goFlow("a mapped flow", ev, closers{fc, up}, func() {
		defer close(done)
		io.Copy(up, fc)
		if tc, ok := up.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	})
	io.Copy(fc, up)
	fc.CloseWrite()
	<-done
}
