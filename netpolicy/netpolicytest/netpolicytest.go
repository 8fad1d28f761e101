// Package netpolicytest gives tests a fake VM on a netpolicy.Network: a
// second gVisor stack, the guest's, whose Ethernet frames reach the
// Network over a unix socketpair framed exactly as QEMU's -netdev stream
// frames them. A test configures it (DHCP, or a static address), then
// dials, listens, resolves names and makes HTTP requests from inside the
// "guest", as a program in a real VM would.
//
// A test in netpolicy or ingress starts so:
//
//	g := netpolicytest.NewGuest(t, n, netpolicy.DefaultGuestMAC)
//	g.Configure() // DHCP, as the guest's kernel does
//	resp, err := g.Client().Get("https://api.test:" + port + "/")
//	c := g.MustDial(t, "db.internal:5432") // raw TCP, name via DNS
//	ln := g.Listen(3000)                   // a server in the guest
//
// The package does not import netpolicy, so that netpolicy's own
// (internal) tests can use it: the Network is the interface below, and
// the guest's MAC and addresses come from the caller, who takes them from
// netpolicy (DefaultGuestMAC, GuestIP, GatewayIP).
package netpolicytest

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// Network is the host side a Guest plugs into; *netpolicy.Network is one.
type Network interface {
	// Attach takes the supervisor's end of the QEMU stream socket.
	Attach(conn io.ReadWriteCloser) error
	// CACertPEM is the CA the guest trusts for intercepted TLS.
	CACertPEM() []byte
}

const (
	nicID = 1
	// mtu is the guest virtio-net's MTU, as netpolicy's.
	mtu = 1500
)

// Guest stands in for a VM.
type Guest struct {
	t     testing.TB
	s     *stack.Stack
	link  *channel.Endpoint
	roots *x509.CertPool
	ctx   context.Context

	mu      sync.Mutex
	conn    net.Conn // guest end of the current "QEMU socket"
	gateway netip.Addr
	writeMu sync.Mutex
	dhcp    chan *dhcpv4.DHCPv4

	// recording, when set, keeps every frame the guest receives, so a
	// test can assert what never reached it.
	recMu     sync.Mutex
	recording bool
	received  []byte
}

// NewGuest plugs a guest with NIC address mac into n. It has no IP
// address until Configure or SetAddress; the test's end closes it.
func NewGuest(t testing.TB, n Network, mac net.HardwareAddr) *Guest {
	t.Helper()
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	// Linux-like TCP: SACK and windows that do not cap throughput, so
	// that benchmarks measure the host side rather than a tiny guest
	// buffer (the sizes are gVisor's defaults today, pinned here).
	sack := tcpip.TCPSACKEnabled(true)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 4 << 20}
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv)
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 4 << 20}
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd)
	link := channel.New(1024, mtu+header.EthernetMinimumSize, tcpip.LinkAddress(mac))
	if err := s.CreateNIC(nicID, ethernet.New(link)); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(n.CACertPEM()) {
		t.Fatal("netpolicytest: the network's CA PEM does not parse")
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &Guest{t: t, s: s, link: link, roots: roots, ctx: ctx, dhcp: make(chan *dhcpv4.DHCPv4, 4)}
	go g.writeLoop()
	t.Cleanup(func() {
		cancel()
		g.mu.Lock()
		if g.conn != nil {
			g.conn.Close()
		}
		g.mu.Unlock()
		s.Close()
	})
	g.Plug(n)
	return g
}

// SocketPair returns two connected stream sockets, like QEMU's end and
// the supervisor's end of net.sock.
func SocketPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "netsock")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns[0], conns[1]
}

// Plug connects the guest to n on a fresh socket, as a restarted
// supervisor reconnecting to QEMU's net.sock does. The guest stack, its
// address and its connections stay as they are.
func (g *Guest) Plug(n Network) {
	g.t.Helper()
	gc, hc := SocketPair(g.t)
	g.mu.Lock()
	old := g.conn
	g.conn = gc
	g.mu.Unlock()
	if old != nil {
		old.Close()
	}
	if err := n.Attach(hc); err != nil {
		g.t.Fatal(err)
	}
	go g.readLoop(gc)
}

// Roots holds the network's CA, as the guest's system bundle does once
// the agent installed it.
func (g *Guest) Roots() *x509.CertPool { return g.roots }

// Record starts keeping the frames the guest receives.
func (g *Guest) Record() {
	g.recMu.Lock()
	g.recording = true
	g.recMu.Unlock()
}

// Received returns every frame received since Record, concatenated.
func (g *Guest) Received() []byte {
	g.recMu.Lock()
	defer g.recMu.Unlock()
	return append([]byte(nil), g.received...)
}

// WriteFrame sends one Ethernet frame to the network, bypassing the
// guest stack.
func (g *Guest) WriteFrame(frame []byte) {
	var l [4]byte
	binary.BigEndian.PutUint32(l[:], uint32(len(frame)))
	g.write(append(l[:], frame...))
}

// write sends framed bytes on the current socket.
func (g *Guest) write(b []byte) {
	g.mu.Lock()
	c := g.conn
	g.mu.Unlock()
	g.writeMu.Lock()
	defer g.writeMu.Unlock()
	c.Write(b)
}

func (g *Guest) writeLoop() {
	for {
		pkt := g.link.ReadContext(g.ctx)
		if pkt == nil {
			return
		}
		f := make([]byte, 4, 4+pkt.Size())
		for _, s := range pkt.AsSlices() {
			f = append(f, s...)
		}
		pkt.DecRef()
		binary.BigEndian.PutUint32(f, uint32(len(f)-4))
		g.write(f)
	}
}

func (g *Guest) readLoop(c net.Conn) {
	r := bufio.NewReaderSize(c, 256<<10)
	var l [4]byte
	for {
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return
		}
		f := make([]byte, binary.BigEndian.Uint32(l[:]))
		if _, err := io.ReadFull(r, f); err != nil {
			return
		}
		g.recMu.Lock()
		if g.recording {
			g.received = append(g.received, f...)
		}
		g.recMu.Unlock()
		// DHCP replies go to Configure, as they would to a raw socket
		// in a real guest before it has an address.
		if m := DHCPFromFrame(f); m != nil {
			g.dhcp <- m
			continue
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(f)})
		g.link.InjectInbound(0, pkt)
		pkt.DecRef()
	}
}

// DHCPFromFrame returns the DHCP message in an Ethernet frame to the
// client port, or nil if the frame holds none.
func DHCPFromFrame(f []byte) *dhcpv4.DHCPv4 {
	if len(f) < header.EthernetMinimumSize+header.IPv4MinimumSize+header.UDPMinimumSize || header.Ethernet(f).Type() != header.IPv4ProtocolNumber {
		return nil
	}
	ip := header.IPv4(f[header.EthernetMinimumSize:])
	if ip.TransportProtocol() != header.UDPProtocolNumber {
		return nil
	}
	u := header.UDP(ip.Payload())
	if u.DestinationPort() != 68 {
		return nil
	}
	m, err := dhcpv4.FromBytes(u.Payload())
	if err != nil {
		return nil
	}
	return m
}

// DHCPRequestFrame wraps a client DHCP message as the guest kernel's raw
// socket would send it: 0.0.0.0:68 -> 255.255.255.255:67, from the
// message's client hardware address to the broadcast MAC.
func DHCPRequestFrame(m *dhcpv4.DHCPv4) []byte {
	body := m.ToBytes()
	ipLen := header.IPv4MinimumSize + header.UDPMinimumSize + len(body)
	f := make([]byte, header.EthernetMinimumSize+ipLen)
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(m.ClientHWAddr), DstAddr: header.EthernetBroadcastAddress, Type: header.IPv4ProtocolNumber})
	ip := header.IPv4(f[header.EthernetMinimumSize:])
	src, dst := tcpip.AddrFrom4([4]byte{}), header.IPv4Broadcast
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(ipLen), TTL: 64, Protocol: uint8(header.UDPProtocolNumber), SrcAddr: src, DstAddr: dst})
	ip.SetChecksum(^ip.CalculateChecksum())
	u := header.UDP(ip[header.IPv4MinimumSize:])
	u.Encode(&header.UDPFields{SrcPort: 68, DstPort: 67, Length: uint16(header.UDPMinimumSize + len(body))})
	copy(u[header.UDPMinimumSize:], body)
	x := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, uint16(len(u)))
	u.SetChecksum(^u.CalculateChecksum(checksum.Checksum(body, x)))
	return f
}

// dhcpExchange sends m and fails the test unless a reply of type want
// comes.
func (g *Guest) dhcpExchange(m *dhcpv4.DHCPv4, want dhcpv4.MessageType) *dhcpv4.DHCPv4 {
	g.t.Helper()
	g.WriteFrame(DHCPRequestFrame(m))
	select {
	case r := <-g.dhcp:
		if r.MessageType() != want {
			g.t.Fatalf("got %v, want %v", r.MessageType(), want)
		}
		return r
	case <-time.After(5 * time.Second):
		g.t.Fatal("no DHCP reply")
		return nil
	}
}

// Configure runs DHCP (DISCOVER, REQUEST) and applies the lease to the
// guest stack, as a guest's DHCP client does, and returns the ACK.
func (g *Guest) Configure() *dhcpv4.DHCPv4 {
	g.t.Helper()
	mac := net.HardwareAddr(g.link.LinkAddress())
	disc, err := dhcpv4.NewDiscovery(mac)
	if err != nil {
		g.t.Fatal(err)
	}
	offer := g.dhcpExchange(disc, dhcpv4.MessageTypeOffer)
	req, err := dhcpv4.NewRequestFromOffer(offer)
	if err != nil {
		g.t.Fatal(err)
	}
	ack := g.dhcpExchange(req, dhcpv4.MessageTypeAck)
	ones, _ := ack.SubnetMask().Size()
	addr, _ := netip.AddrFromSlice(ack.YourIPAddr.To4())
	gw, _ := netip.AddrFromSlice(ack.Router()[0].To4())
	g.SetAddress(netip.PrefixFrom(addr, ones), gw)
	return ack
}

// SetAddress configures the guest statically (DHCP is netpolicy's
// business, tested there): its address and prefix, and the gateway, the
// default route and DNS server.
func (g *Guest) SetAddress(addr netip.Prefix, gateway netip.Addr) {
	g.t.Helper()
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{
		Address: tcpip.AddrFrom4(addr.Addr().As4()), PrefixLen: addr.Bits()}}
	if err := g.s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
		g.t.Fatal(err)
	}
	g.s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, Gateway: tcpip.AddrFrom4(gateway.As4()), NIC: nicID}})
	g.mu.Lock()
	g.gateway = gateway
	g.mu.Unlock()
}

// dnsServer is the gateway's DNS port, once the guest has an address.
func (g *Guest) dnsServer() (netip.AddrPort, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.gateway.IsValid() {
		return netip.AddrPort{}, errors.New("netpolicytest: the guest has no address yet (Configure or SetAddress)")
	}
	return netip.AddrPortFrom(g.gateway, 53), nil
}

// Query sends one DNS query to the gateway over UDP.
func (g *Guest) Query(name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	return g.Exchange(m)
}

// Exchange sends m to the gateway's DNS over UDP, up to three times, and
// returns the answer.
func (g *Guest) Exchange(m *dns.Msg) (*dns.Msg, error) {
	srv, err := g.dnsServer()
	if err != nil {
		return nil, err
	}
	c, err := g.DialUDP(srv)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	q, err := m.Pack()
	if err != nil {
		return nil, err
	}
	for try := 0; try < 3; try++ {
		c.Write(q)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 4096)
		k, err := c.Read(buf)
		if err != nil {
			continue
		}
		r := new(dns.Msg)
		if err := r.Unpack(buf[:k]); err != nil {
			return nil, err
		}
		return r, nil
	}
	return nil, errors.New("DNS timeout")
}

// ExchangeTCP sends m to the gateway's DNS over TCP.
func (g *Guest) ExchangeTCP(m *dns.Msg) (*dns.Msg, error) {
	srv, err := g.dnsServer()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := g.DialTCP(ctx, srv)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := m.Pack() // as is: WriteMsg would want to sign a TSIG
	if err != nil {
		return nil, err
	}
	dc := &dns.Conn{Conn: c}
	if _, err := dc.Write(b); err != nil {
		return nil, err
	}
	return dc.ReadMsg()
}

// Lookup resolves name to its first A record through the host's DNS; an
// IP address is returned as it is.
func (g *Guest) Lookup(name string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(name); err == nil {
		return a, nil
	}
	r, err := g.Query(name, dns.TypeA)
	if err != nil {
		return netip.Addr{}, err
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			ip, _ := netip.AddrFromSlice(a.A.To4())
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%s: no A record (rcode %d)", name, r.Rcode)
}

// Dial opens a guest TCP connection to host:port, resolving host through
// the host's DNS as a guest's libc would. It gives up after 10 seconds.
func (g *Guest) Dial(ctx context.Context, addr string) (net.Conn, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ip, err := g.Lookup(host)
	if err != nil {
		return nil, err
	}
	port, _ := strconv.Atoi(portStr)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := g.DialTCP(ctx, netip.AddrPortFrom(ip, uint16(port)))
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return c, nil
}

// MustDial is Dial for a test: it fails t if the connection cannot be
// made, and closes it when t ends.
func (g *Guest) MustDial(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := g.Dial(context.Background(), addr)
	if err != nil {
		t.Fatalf("guest dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// DialTCP opens a guest TCP connection to dst.
func (g *Guest) DialTCP(ctx context.Context, dst netip.AddrPort) (*gonet.TCPConn, error) {
	return gonet.DialContextTCP(ctx, g.s, fullAddr(dst), ipv4.ProtocolNumber)
}

// DialUDP opens a guest UDP socket that sends to dst.
func (g *Guest) DialUDP(dst netip.AddrPort) (*gonet.UDPConn, error) {
	a := fullAddr(dst)
	return gonet.DialUDP(g.s, nil, &a, ipv4.ProtocolNumber)
}

func fullAddr(ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(ap.Addr().As4()), Port: ap.Port()}
}

// Listen opens a TCP listener on the guest, on every address (as a dev
// server bound to 0.0.0.0 does); the test's end closes it.
func (g *Guest) Listen(port uint16) net.Listener {
	g.t.Helper()
	ln, err := gonet.ListenTCP(g.s, tcpip.FullAddress{NIC: nicID, Port: port}, ipv4.ProtocolNumber)
	if err != nil {
		g.t.Fatal(err)
	}
	g.t.Cleanup(func() { ln.Close() })
	return ln
}

// Transport is a fresh HTTP transport inside the guest: it dials with
// Dial and trusts the network's CA, and a test may set what else it
// needs (DisableCompression, say).
func (g *Guest) Transport() *http.Transport {
	return &http.Transport{
		DialContext:     func(ctx context.Context, _, addr string) (net.Conn, error) { return g.Dial(ctx, addr) },
		TLSClientConfig: &tls.Config{RootCAs: g.roots},
	}
}

// Client is an HTTP client on Transport. It does not follow redirects,
// so a test sees what the network answered.
func (g *Guest) Client() *http.Client {
	return &http.Client{
		Transport: g.Transport(),
		Timeout:   20 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}
