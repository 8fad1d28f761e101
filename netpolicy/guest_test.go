package netpolicy

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

// testGuest is a stand-in for a VM: a second gVisor stack whose Ethernet
// frames travel to the Network under test over a unix socketpair, framed
// exactly as QEMU's -netdev stream frames them.
type testGuest struct {
	t     testing.TB
	s     *stack.Stack
	link  *channel.Endpoint
	roots *x509.CertPool

	mu      sync.Mutex
	conn    net.Conn // guest end of the current "QEMU socket"
	writeMu sync.Mutex
	dhcp    chan *dhcpv4.DHCPv4
	ctx     context.Context
	cancel  context.CancelFunc

	// recording, when set, keeps every frame the guest receives, so a
	// test can assert what never reached it.
	recMu     sync.Mutex
	recording bool
	received  []byte
}

// record starts keeping the frames the guest receives.
func (g *testGuest) record() {
	g.recMu.Lock()
	g.recording = true
	g.recMu.Unlock()
}

// receivedBytes returns every frame received since record, concatenated.
func (g *testGuest) receivedBytes() []byte {
	g.recMu.Lock()
	defer g.recMu.Unlock()
	return append([]byte(nil), g.received...)
}

// socketPair returns two connected stream sockets, like QEMU's end and the
// supervisor's end of net.sock.
func socketPair(t testing.TB) (net.Conn, net.Conn) {
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

func newTestGuest(t testing.TB, n *Network) *testGuest {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	sack := tcpip.TCPSACKEnabled(true)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	link := channel.New(1024, guestMTU+header.EthernetMinimumSize, tcpip.LinkAddress(DefaultGuestMAC))
	if err := s.CreateNIC(1, ethernet.New(link)); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(n.CACertPEM()) {
		t.Fatal("CA PEM")
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &testGuest{t: t, s: s, link: link, roots: roots, dhcp: make(chan *dhcpv4.DHCPv4, 4), ctx: ctx, cancel: cancel}
	go g.writeLoop()
	g.plug(n)
	t.Cleanup(func() {
		cancel()
		g.mu.Lock()
		g.conn.Close()
		g.mu.Unlock()
		s.Close()
	})
	return g
}

// plug connects the guest to n on a fresh socket, as a restarted
// supervisor reconnecting to QEMU's net.sock does.
func (g *testGuest) plug(n *Network) {
	gc, hc := socketPair(g.t)
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

func (g *testGuest) writeFrame(frame []byte) {
	g.mu.Lock()
	c := g.conn
	g.mu.Unlock()
	g.writeMu.Lock()
	defer g.writeMu.Unlock()
	var l [4]byte
	binary.BigEndian.PutUint32(l[:], uint32(len(frame)))
	c.Write(append(l[:], frame...))
}

func (g *testGuest) writeLoop() {
	for {
		pkt := g.link.ReadContext(g.ctx)
		if pkt == nil {
			return
		}
		var f []byte
		for _, s := range pkt.AsSlices() {
			f = append(f, s...)
		}
		pkt.DecRef()
		g.writeFrame(f)
	}
}

func (g *testGuest) readLoop(c net.Conn) {
	r := bufio.NewReader(c)
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
		// DHCP replies go to the test's client, as they would to a raw
		// socket in a real guest before it has an address.
		if m := dhcpFromFrame(f); m != nil {
			g.dhcp <- m
			continue
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(f)})
		g.link.InjectInbound(0, pkt)
		pkt.DecRef()
	}
}

func dhcpFromFrame(f []byte) *dhcpv4.DHCPv4 {
	if len(f) < 14+20+8 || header.Ethernet(f).Type() != header.IPv4ProtocolNumber {
		return nil
	}
	ip := header.IPv4(f[14:])
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

// dhcpRequestFrame wraps a client DHCP message as the guest kernel's raw
// socket would send it: 0.0.0.0:68 -> 255.255.255.255:67, broadcast MAC.
func dhcpRequestFrame(m *dhcpv4.DHCPv4) []byte {
	body := m.ToBytes()
	ipLen := header.IPv4MinimumSize + header.UDPMinimumSize + len(body)
	f := make([]byte, header.EthernetMinimumSize+ipLen)
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(DefaultGuestMAC), DstAddr: header.EthernetBroadcastAddress, Type: header.IPv4ProtocolNumber})
	ip := header.IPv4(f[14:])
	src, dst := tcpip.AddrFrom4([4]byte{}), header.IPv4Broadcast
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(ipLen), TTL: 64, Protocol: uint8(header.UDPProtocolNumber), SrcAddr: src, DstAddr: dst})
	ip.SetChecksum(^ip.CalculateChecksum())
	u := header.UDP(ip[20:])
	u.Encode(&header.UDPFields{SrcPort: 68, DstPort: 67, Length: uint16(8 + len(body))})
	copy(u[8:], body)
	x := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, uint16(len(u)))
	u.SetChecksum(^u.CalculateChecksum(checksum.Checksum(body, x)))
	return f
}

func (g *testGuest) dhcpExchange(m *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	g.t.Helper()
	g.writeFrame(dhcpRequestFrame(m))
	select {
	case r := <-g.dhcp:
		return r
	case <-time.After(5 * time.Second):
		g.t.Fatal("no DHCP reply")
		return nil
	}
}

// configure runs DHCP and applies the lease to the guest stack.
func (g *testGuest) configure() *dhcpv4.DHCPv4 {
	g.t.Helper()
	disc, err := dhcpv4.NewDiscovery(DefaultGuestMAC)
	if err != nil {
		g.t.Fatal(err)
	}
	offer := g.dhcpExchange(disc)
	if offer.MessageType() != dhcpv4.MessageTypeOffer {
		g.t.Fatalf("got %v, want OFFER", offer.MessageType())
	}
	req, err := dhcpv4.NewRequestFromOffer(offer)
	if err != nil {
		g.t.Fatal(err)
	}
	ack := g.dhcpExchange(req)
	if ack.MessageType() != dhcpv4.MessageTypeAck {
		g.t.Fatalf("got %v, want ACK", ack.MessageType())
	}
	ones, _ := ack.SubnetMask().Size()
	addr := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{
		Address: tcpip.AddrFrom4([4]byte(ack.YourIPAddr.To4())), PrefixLen: ones}}
	if err := g.s.AddProtocolAddress(1, addr, stack.AddressProperties{}); err != nil {
		g.t.Fatal(err)
	}
	gw := tcpip.AddrFrom4([4]byte(ack.Router()[0].To4()))
	g.s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, Gateway: gw, NIC: 1}})
	return ack
}

// query sends one DNS query to the gateway over UDP.
func (g *testGuest) query(name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	return g.exchange(m)
}

func (g *testGuest) exchange(m *dns.Msg) (*dns.Msg, error) {
	c, err := gonet.DialUDP(g.s, nil, &tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(GatewayIP.As4()), Port: 53}, ipv4.ProtocolNumber)
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

// lookup resolves name to its first A record through the host's DNS.
func (g *testGuest) lookup(name string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(name); err == nil {
		return a, nil
	}
	r, err := g.query(name, dns.TypeA)
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

// dial opens a guest TCP connection to host:port, resolving host through
// the host's DNS as a guest's libc would.
func (g *testGuest) dial(ctx context.Context, addr string) (net.Conn, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ip, err := g.lookup(host)
	if err != nil {
		return nil, err
	}
	port, _ := strconv.Atoi(portStr)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return gonet.DialContextTCP(ctx, g.s, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(ip.As4()), Port: uint16(port)}, ipv4.ProtocolNumber)
}

// client is an HTTP client inside the guest that trusts the host's CA
// (as the guest's system bundle does once the agent installed it).
func (g *testGuest) client() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:       func(ctx context.Context, _, addr string) (net.Conn, error) { return g.dial(ctx, addr) },
			TLSClientConfig:   &tls.Config{RootCAs: g.roots},
			DisableKeepAlives: false,
		},
		Timeout: 20 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}
