package netpolicy

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gondolin/gondolin/internal/contain"
	"github.com/gondolin/gondolin/netpolicy/ca"
)

// The guest's network, the same for every VM (each VM has its own stack,
// so nothing clashes) and across supervisor restarts, so that a guest's
// ARP cache and DHCP lease stay valid when a new supervisor takes over.
var (
	// GatewayIP is the host stack's address: router, DHCP and DNS server.
	GatewayIP = netip.MustParseAddr("10.0.2.2")
	// GuestIP is the address DHCP hands the guest.
	GuestIP = netip.MustParseAddr("10.0.2.15")
	// GuestPrefix is the guest's subnet.
	GuestPrefix = netip.MustParsePrefix("10.0.2.0/24")
	// GatewayMAC is the host stack's Ethernet address.
	GatewayMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x67, 0x64, 0x02}
	// DefaultGuestMAC is the guest NIC's address (vm.GuestMAC).
	DefaultGuestMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x67, 0x64, 0x01}
	// SyntheticPrefix holds the addresses synthetic DNS hands out.
	SyntheticPrefix = netip.MustParsePrefix("198.18.0.0/15")
)

// Paths of the host CA inside the guest, and the environment that points
// TLS libraries at them (see CAEnv). The agent writes these files.
const (
	GuestCABundle = "/etc/ssl/certs/ca-certificates.crt"
	GuestCAFile   = "/etc/ssl/certs/gondolin-ca.pem"
)

// CAEnv returns the environment variables that make common TLS clients
// (OpenSSL, curl, Python requests, Node) trust the system bundle that
// holds the host's CA. Node adds NODE_EXTRA_CA_CERTS to its own roots.
func CAEnv() []string {
	return []string{
		"SSL_CERT_FILE=" + GuestCABundle,
		"REQUESTS_CA_BUNDLE=" + GuestCABundle,
		"CURL_CA_BUNDLE=" + GuestCABundle,
		"NODE_EXTRA_CA_CERTS=" + GuestCAFile,
	}
}

// Options configure a Network. Only Policy and one of CA or CADir are
// needed; the rest have defaults fit for one VM.
type Options struct {
	Policy Policy
	// CA signs the leaf certificates of intercepted TLS. When nil, the
	// CA in CADir (layout.Home.CA()) is loaded or created.
	CA    *ca.CA
	CADir string
	// Logger receives operational messages (never secret values).
	Logger *slog.Logger
	// GuestMAC is the guest NIC's address; default DefaultGuestMAC.
	GuestMAC net.HardwareAddr
	// UpstreamRoots are trusted for upstream TLS in addition to the
	// host's trust store (tests use a local CA).
	UpstreamRoots []*x509.Certificate
	// LookupHost resolves names on the host side (default: the host's
	// resolver). --resolve pins are applied before it.
	LookupHost func(ctx context.Context, host string) ([]netip.Addr, error)
	// Limits; zero means the default.
	MaxFlows       int           // concurrent guest TCP flows (default 256)
	MaxHandshakes  int           // TCP handshakes in progress (default 64)
	MaxHeaderBytes int           // HTTP request header size (default 64 KiB)
	PeekTimeout    time.Duration // wait for a flow's first bytes (default 10 s)
	EventBuffer    int           // events kept for Events (default 1024)
	// MaxSSHConns bounds guest SSH connections in progress, each with
	// at most one upstream connection (default 16).
	MaxSSHConns int
	// SSHHandshakeTimeout bounds the guest's SSH handshake, and apart
	// from it the upstream's dial, handshake and login (default 20 s).
	SSHHandshakeTimeout time.Duration
	// OnPanic, when set, hears of a panic contained in a loop that
	// serves the whole VM (its frames, DNS over UDP, the HTTP server),
	// after which the network is closed: the owner should take the VM
	// out of service. A panic serving one connection closes that
	// connection only and is logged (Logger) and recorded as an event.
	// See panics.go.
	OnPanic func(*contain.PanicError)
}

func (o *Options) setDefaults() {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.GuestMAC == nil {
		o.GuestMAC = DefaultGuestMAC
	}
	if o.LookupHost == nil {
		o.LookupHost = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	if o.MaxFlows <= 0 {
		o.MaxFlows = 256
	}
	if o.MaxHandshakes <= 0 {
		o.MaxHandshakes = 64
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = 64 << 10
	}
	if o.PeekTimeout <= 0 {
		o.PeekTimeout = 10 * time.Second
	}
	if o.EventBuffer <= 0 {
		o.EventBuffer = 1024
	}
	if o.MaxSSHConns <= 0 {
		o.MaxSSHConns = 16
	}
	if o.SSHHandshakeTimeout <= 0 {
		o.SSHHandshakeTimeout = 20 * time.Second
	}
}

// Network is one VM's mediated network: a user-space TCP/IP stack fed with
// the guest's Ethernet frames, DHCP and DNS for the guest, and the policy
// engine every guest connection goes through. The host opens real sockets
// only for flows the policy allows.
type Network struct {
	opts   Options
	ca     *ca.CA
	log    *slog.Logger
	policy atomic.Pointer[Policy]
	// policyMu serialises read-modify-write updates (UpdatePolicy).
	policyMu sync.Mutex
	events   *eventLog
	synth    *synthTable
	names    *addrNames // which names addresses were given for
	stack    *netStack
	proxy    *proxy
	ssh      *sshProxy

	flows          atomic.Int64 // guest TCP flows being served
	lastLimitEvent atomic.Int64 // unix second of the last flow-limit event

	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once

	connMu  sync.Mutex
	conn    io.ReadWriteCloser // the current QEMU stream, or nil
	writeMu sync.Mutex         // one frame at a time on conn
}

// NewNetwork builds a network for one VM. Frames flow once Attach is given
// the VM's stream socket.
func NewNetwork(opts Options) (*Network, error) {
	opts.setDefaults()
	p := opts.Policy.Clone()
	if err := p.Validate(); err != nil {
		return nil, err
	}
	p.fillPlaceholders(nil)
	authority := opts.CA
	if authority == nil {
		if opts.CADir == "" {
			return nil, errors.New("netpolicy: Options needs a CA or a CADir")
		}
		var err error
		if authority, err = ca.LoadOrCreate(opts.CADir); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Network{
		opts:   opts,
		ca:     authority,
		log:    opts.Logger,
		events: newEventLog(opts.EventBuffer),
		synth:  newSynthTable(),
		names:  newAddrNames(),
		ctx:    ctx,
		cancel: cancel,
	}
	n.policy.Store(&p)
	var err error
	if n.ssh, err = newSSHProxy(n); err != nil {
		cancel()
		return nil, err
	}
	if n.proxy, err = newProxy(n); err != nil {
		cancel()
		return nil, err
	}
	if n.stack, err = newNetStack(n); err != nil {
		cancel()
		n.proxy.close()
		return nil, err
	}
	return n, nil
}

// Policy returns a copy of the policy in force, placeholders filled in and
// secret values included (they never serialise).
func (n *Network) Policy() Policy { return n.policy.Load().Clone() }

// UpdatePolicy edits the policy in place under a lock (so two concurrent
// edits do not lose one another). The result applies to the next DNS
// query, flow and HTTP request (requests already sent upstream finish
// under the old one). Secrets keep the placeholder their name had, so
// running guest processes keep working; a new secret gets a fresh
// placeholder, which reaches new guest processes once GuestEnv is sent to
// the agent again. When edit or validation fails nothing changes.
func (n *Network) UpdatePolicy(edit func(*Policy) error) error {
	n.policyMu.Lock()
	defer n.policyMu.Unlock()
	old := n.policy.Load()
	p := old.Clone()
	if err := edit(&p); err != nil {
		return err
	}
	if err := p.Validate(); err != nil {
		return err
	}
	p.fillPlaceholders(old)
	n.policy.Store(&p)
	// Idle upstream connections were checked against the old policy
	// (internal ranges, pins): drop them so the next request dials anew.
	n.proxy.transport.CloseIdleConnections()
	return nil
}

// GuestEnv returns the environment the guest's processes need: each
// secret's NAME=PLACEHOLDER and the CA variables (CAEnv).
func (n *Network) GuestEnv() []string {
	return append(n.policy.Load().SecretEnv(), CAEnv()...)
}

// CACertPEM returns the certificate the guest must trust (send it in
// agentproto.Network.CACert).
func (n *Network) CACertPEM() []byte { return n.ca.CertPEM() }

// Events returns the most recent decisions, oldest first.
func (n *Network) Events() []Event { return n.events.events() }

// Subscribe returns the recent decisions and a channel that carries every
// later one until ctx ends or the network closes. A reader that falls
// more than 256 events behind misses events rather than slowing the VM.
func (n *Network) Subscribe(ctx context.Context) ([]Event, <-chan Event) {
	return n.events.subscribe(ctx)
}

// Attach serves the guest's frames on conn: a connection to the VM's
// `-netdev stream` socket (4-byte big-endian length, then an Ethernet
// frame, both ways). A later Attach replaces and closes the previous
// connection, which is what a supervisor restarted after a crash does:
// the guest keeps its address and its ARP entry for the gateway. Attach
// returns at once; frames are read in the background until conn fails or
// the network closes.
func (n *Network) Attach(conn io.ReadWriteCloser) error {
	// Checked under connMu, which Close takes after cancelling: either
	// this Attach is counted in wg before Close waits, or it fails.
	n.connMu.Lock()
	if n.ctx.Err() != nil {
		n.connMu.Unlock()
		return errors.New("netpolicy: network is closed")
	}
	old := n.conn
	n.conn = conn
	n.wg.Add(1)
	n.connMu.Unlock()
	if old != nil {
		old.Close()
	}
	go func() {
		defer n.wg.Done()
		defer contain.Recover("the guest's frames", n.loopPanic)
		err := n.stack.readFrames(conn)
		n.connMu.Lock()
		if n.conn == conn {
			n.conn = nil
		}
		n.connMu.Unlock()
		conn.Close()
		if err != nil && n.ctx.Err() == nil {
			n.log.Info("guest network stream ended", "err", err)
		}
	}()
	return nil
}

// writeFrame sends one Ethernet frame to the guest, or drops it when no
// stream is attached (TCP retransmits; DHCP and DNS clients retry).
func (n *Network) writeFrame(frame []byte) {
	n.connMu.Lock()
	conn := n.conn
	n.connMu.Unlock()
	if conn == nil {
		return
	}
	n.writeMu.Lock()
	defer n.writeMu.Unlock()
	if _, err := conn.Write(frame); err != nil {
		conn.Close()
	}
}

// Close stops the stack, every flow and the stream.
func (n *Network) Close() error {
	n.closeOnce.Do(func() {
		n.cancel()
		n.connMu.Lock()
		if n.conn != nil {
			n.conn.Close()
			n.conn = nil
		}
		n.connMu.Unlock()
		n.proxy.close()
		n.stack.close()
		n.wg.Wait()
		n.events.close()
	})
	return nil
}

// event records a decision and logs it at debug level.
func (n *Network) event(e Event) {
	n.events.add(e)
	n.log.Debug("netpolicy", "action", e.Action, "proto", e.Proto, "method", e.Method,
		"host", e.Host, "port", e.Port, "path", e.Path, "user", e.User, "command", e.Command,
		"rule", e.Rule, "secrets", e.Secrets, "reason", e.Reason)
}

// resolve returns the addresses the host would connect to for a canonical
// host on port, and which of them the policy allows. Pins come first,
// then IP literals, then the host's resolver. An IP literal that is an
// address of a denied name is refused (deniedAddr).
//
// mapped is set for a TCP map's upstream: the map authorizes exactly its
// own host:port, so an address the user spelled in it (an IP literal, or
// a --resolve pin of its name) is allowed on that port even when it is
// internal, without --allow-internal. An address from the host's
// resolver is checked like any other: the name's owner, not the user,
// decides what it is.
func (n *Network) resolve(ctx context.Context, p *Policy, name string, ip netip.Addr, port uint16, mapped bool) (allowed []netip.Addr, reason string, err error) {
	var addrs []netip.Addr
	spelled := true
	switch {
	case ip.IsValid():
		// A mapped IPv4 address is dialled as IPv4: checked as such.
		addrs = []netip.Addr{ip.Unmap()}
		if !mapped {
			if why, denied := n.deniedAddr(ctx, p, ip); denied {
				return nil, why, nil
			}
		}
	default:
		if pin, ok := p.pinned(name); ok {
			addrs = []netip.Addr{pin.Unmap()}
		} else {
			spelled = false
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			found, err := n.opts.LookupHost(ctx, name)
			if err != nil {
				return nil, "", fmt.Errorf("resolve %s: %w", name, err)
			}
			for _, a := range found {
				// The resolver may hand IPv4 answers back in mapped
				// form; they are IPv4 addresses, checked as such.
				addrs = append(addrs, a.Unmap())
			}
			n.names.learn(name, addrs...)
		}
	}
	for _, a := range addrs {
		if mapped && spelled {
			allowed = append(allowed, a)
		} else if r, ok := p.ipAllowed(a, port); ok {
			allowed = append(allowed, a)
		} else if reason == "" {
			reason = r
		}
	}
	if len(allowed) == 0 && reason == "" {
		reason = "no address"
	}
	return allowed, reason, nil
}
