package ingress

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"sync"
	"testing"

	"github.com/gondolin/gondolin/netpolicy"
	"github.com/gondolin/gondolin/netpolicy/ca"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// testGuest stands in for a VM, as netpolicy's tests do: a second gVisor
// stack with the guest's address, whose Ethernet frames reach a real
// netpolicy.Network over a unix socketpair framed as QEMU's -netdev
// stream frames them. Its address is configured statically (DHCP is
// netpolicy's business, tested there).
type testGuest struct {
	s    *stack.Stack
	link *channel.Endpoint
	conn net.Conn
	wmu  sync.Mutex
}

func newTestNetwork(t testing.TB) *netpolicy.Network {
	authority, err := ca.New()
	if err != nil {
		t.Fatal(err)
	}
	n, err := netpolicy.NewNetwork(netpolicy.Options{Policy: netpolicy.DefaultPolicy(), CA: authority})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func newTestGuest(t testing.TB, n *netpolicy.Network) *testGuest {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	// Linux-like TCP: SACK and windows that do not cap throughput, so
	// the benchmark measures ingress rather than a tiny guest buffer.
	sack := tcpip.TCPSACKEnabled(true)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 4 << 20}
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv)
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 4 << 20}
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd)
	link := channel.New(1024, 1500+header.EthernetMinimumSize, tcpip.LinkAddress(netpolicy.DefaultGuestMAC))
	if err := s.CreateNIC(1, ethernet.New(link)); err != nil {
		t.Fatal(err)
	}
	addr := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{
		Address: tcpip.AddrFrom4(netpolicy.GuestIP.As4()), PrefixLen: netpolicy.GuestPrefix.Bits()}}
	if err := s.AddProtocolAddress(1, addr, stack.AddressProperties{}); err != nil {
		t.Fatal(err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, Gateway: tcpip.AddrFrom4(netpolicy.GatewayIP.As4()), NIC: 1}})

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "netsock")
		if conns[i], err = net.FileConn(f); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	g := &testGuest{s: s, link: link, conn: conns[0]}
	if err := n.Attach(conns[1]); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go g.writeLoop(ctx)
	go g.readLoop()
	t.Cleanup(func() {
		cancel()
		g.conn.Close()
		s.Close()
	})
	return g
}

func (g *testGuest) writeLoop(ctx context.Context) {
	for {
		pkt := g.link.ReadContext(ctx)
		if pkt == nil {
			return
		}
		f := make([]byte, 4, 4+pkt.Size())
		for _, s := range pkt.AsSlices() {
			f = append(f, s...)
		}
		pkt.DecRef()
		binary.BigEndian.PutUint32(f, uint32(len(f)-4))
		g.wmu.Lock()
		g.conn.Write(f)
		g.wmu.Unlock()
	}
}

func (g *testGuest) readLoop() {
	r := bufio.NewReaderSize(g.conn, 256<<10)
	var l [4]byte
	for {
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return
		}
		f := make([]byte, binary.BigEndian.Uint32(l[:]))
		if _, err := io.ReadFull(r, f); err != nil {
			return
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(f)})
		g.link.InjectInbound(0, pkt)
		pkt.DecRef()
	}
}

// listen opens a TCP listener on the guest, on every address (as a dev
// server bound to 0.0.0.0 does).
func (g *testGuest) listen(t testing.TB, port uint16) net.Listener {
	ln, err := gonet.ListenTCP(g.s, tcpip.FullAddress{NIC: 1, Port: port}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}
