package netpolicy

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"time"

	"github.com/gondolin/gondolin/internal/contain"
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
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

const nicID = 1

// Frame sizes on the QEMU stream. The guest's virtio-net has no offloads
// over a stream netdev (no vnet header), so frames are at most MTU plus
// the Ethernet header; anything bigger is skipped, never allocated.
const (
	guestMTU      = 1500
	maxFrame      = 64 << 10
	minFrame      = header.EthernetMinimumSize
	outboundQueue = 1024
)

// netStack is the gVisor stack that terminates the guest's traffic.
type netStack struct {
	n     *Network
	s     *stack.Stack
	link  *channel.Endpoint
	dns   *gonet.UDPConn
	guest tcpip.LinkAddress
}

func newNetStack(n *Network) (*netStack, error) {
	s := stack.New(stack.Options{
		// IPv4 only: the guest gets no IPv6 address or route, and
		// synthetic DNS answers AAAA with no records, so every flow
		// arrives over IPv4 and one set of checks covers it.
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
		// No ICMP transport: the network layer still answers pings to
		// the gateway (see readFrames for pings elsewhere), and no
		// endpoint may send arbitrary ICMP.
	})
	ns := &netStack{n: n, s: s, guest: tcpip.LinkAddress(n.opts.GuestMAC)}
	fail := func(what string, err tcpip.Error) (*netStack, error) {
		s.Close()
		return nil, fmt.Errorf("netpolicy: %s: %v", what, err)
	}
	// SACK is off by default in gVisor; with it one lost segment on a
	// fast local path costs one retransmit, not a window (tailscale
	// turns it on for the same reason).
	sack := tcpip.TCPSACKEnabled(true)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		return fail("enable SACK", err)
	}
	// Pin reno: gVisor's default may change, and its cubic has had an
	// int overflow in cwnd arithmetic (google/gvisor#11632).
	reno := tcpip.CongestionControlOption("reno")
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &reno); err != nil {
		return fail("set congestion control", err)
	}
	// Buffers: 1 MiB default lets one download fill the guest link;
	// the 4 MiB cap bounds memory at MaxFlows x 8 MiB in the worst case.
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 4 << 20}
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv); err != nil {
		return fail("set receive buffer", err)
	}
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 4 << 20}
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd); err != nil {
		return fail("set send buffer", err)
	}
	// Three SYN-ACK retransmits (about 15 s) instead of six (over two
	// minutes): a guest that floods SYNs and never completes handshakes
	// holds each handshake slot (MaxHandshakes) for that long.
	synRetries := tcpip.TCPSynRetriesOption(3)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &synRetries); err != nil {
		return fail("set SYN retries", err)
	}
	// TIME-WAIT holds an endpoint (memory, a port tuple) after close; a
	// guest churning through connections should not pile them up.
	tw := tcpip.TCPTimeWaitTimeoutOption(5 * time.Second)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &tw); err != nil {
		return fail("set TIME-WAIT timeout", err)
	}

	// The channel endpoint carries whole Ethernet frames (ethernet.New
	// adds and strips the header), so its MTU includes the header.
	ns.link = channel.New(outboundQueue, guestMTU+header.EthernetMinimumSize, tcpip.LinkAddress(GatewayMAC))
	// gVisor GSO: the TCP sender works in segments of up to the link's
	// GSO size (32 KiB) and gVisor itself cuts each into MSS-sized
	// packets (sendTCPBatch) before they reach the link, so the guest
	// sees the same frames while the sender's per-segment bookkeeping
	// runs about twenty times less often on a download.
	ns.link.SupportedGSOKind = stack.GVisorGSOSupported
	if err := s.CreateNIC(nicID, ethernet.New(ns.link)); err != nil {
		return fail("create NIC", err)
	}
	// Promiscuous: accept packets for every destination address, since
	// the guest's default route sends everything here and each flow's
	// destination is the policy's input. Spoofing: answer from those
	// addresses, which are not assigned to the NIC.
	if err := s.SetPromiscuousMode(nicID, true); err != nil {
		return fail("promiscuous mode", err)
	}
	if err := s.SetSpoofing(nicID, true); err != nil {
		return fail("spoofing", err)
	}
	// The gateway address is assigned for real so that ARP for it is
	// answered and DNS can bind to it.
	gw := tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(GatewayIP.As4()), PrefixLen: GuestPrefix.Bits()},
	}
	if err := s.AddProtocolAddress(nicID, gw, stack.AddressProperties{}); err != nil {
		return fail("add gateway address", err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: nicID}})
	// The guest's MAC is fixed (vm.GuestMAC), so the host never needs to
	// ARP for it, even right after a reconnect.
	if err := s.AddStaticNeighbor(nicID, ipv4.ProtocolNumber, tcpip.AddrFrom4(GuestIP.As4()), ns.guest); err != nil {
		return fail("add guest neighbor", err)
	}

	// Every new guest TCP connection goes to the forwarder, which runs
	// handleFlow once per SYN. MaxHandshakes bounds handshakes in progress
	// (a SYN flood beyond it is dropped); MaxFlows bounds the rest.
	fwd := tcp.NewForwarder(s, 0, n.opts.MaxHandshakes, n.handleFlow)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
	// UDP to anything but the DNS endpoint is dropped silently (no ICMP
	// port unreachable): returning true says "handled".
	s.SetTransportProtocolHandler(udp.ProtocolNumber, func(stack.TransportEndpointID, *stack.PacketBuffer) bool { return true })

	dns, err := gonet.DialUDP(s, &tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(GatewayIP.As4()), Port: 53}, nil, ipv4.ProtocolNumber)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("netpolicy: bind DNS: %w", err)
	}
	ns.dns = dns
	n.wg.Add(2)
	go func() {
		defer n.wg.Done()
		defer contain.Recover("the frames to the guest", n.loopPanic)
		ns.writeFrames()
	}()
	go func() {
		defer n.wg.Done()
		defer contain.Recover("the DNS server", n.loopPanic)
		n.serveDNSUDP(dns)
	}()
	return ns, nil
}

// writeFrames sends the stack's outbound frames to the guest. Frames
// already queued behind the first are sent in the same write (up to
// writeBatch bytes): one syscall per frame would cap a download at a few
// hundred MB/s.
func (ns *netStack) writeFrames() {
	const writeBatch = 256 << 10
	buf := make([]byte, 0, writeBatch+4+guestMTU+header.EthernetMinimumSize)
	for {
		pkt := ns.link.ReadContext(ns.n.ctx)
		if pkt == nil {
			return
		}
		buf = buf[:0]
		for pkt != nil {
			start := len(buf)
			buf = append(buf, 0, 0, 0, 0)
			for _, s := range pkt.AsSlices() {
				buf = append(buf, s...)
			}
			pkt.DecRef()
			binary.BigEndian.PutUint32(buf[start:], uint32(len(buf)-start-4))
			if len(buf) >= writeBatch {
				break
			}
			pkt = ns.link.Read()
		}
		ns.n.writeFrame(buf)
	}
}

// readFrames feeds the guest's frames from conn into the stack until conn
// fails. DHCP is answered here, before the stack: the guest has no address
// yet, and the stack has no business with broadcast UDP.
func (ns *netStack) readFrames(conn io.Reader) error {
	r := bufio.NewReaderSize(conn, 256<<10)
	var hdr [4]byte
	frame := make([]byte, maxFrame)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		size := binary.BigEndian.Uint32(hdr[:])
		if size > maxFrame || size < minFrame {
			if _, err := r.Discard(int(min(size, 1<<30))); err != nil {
				return err
			}
			continue
		}
		f := frame[:size]
		if _, err := io.ReadFull(r, f); err != nil {
			return err
		}
		if reply := ns.n.answerDHCP(f); reply != nil {
			ns.n.writeFrame(reply)
			continue
		}
		if dropFrame(f) {
			continue
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(f)})
		ns.link.InjectInbound(0, pkt)
		pkt.DecRef()
	}
}

// dropFrame filters frames the stack would mishandle for us: with
// promiscuous mode on it would answer pings to any address, telling the
// guest the internet is reachable when only mediated flows are.
func dropFrame(f []byte) bool {
	eth := header.Ethernet(f)
	if eth.Type() != header.IPv4ProtocolNumber {
		return eth.Type() != header.ARPProtocolNumber
	}
	ip := header.IPv4(f[header.EthernetMinimumSize:])
	if !ip.IsValid(len(ip)) {
		return true
	}
	if ip.TransportProtocol() == header.ICMPv4ProtocolNumber {
		return ip.DestinationAddress() != tcpip.AddrFrom4(GatewayIP.As4())
	}
	return false
}

func (ns *netStack) close() {
	ns.dns.Close()
	ns.link.Close()
	ns.s.Close()
	ns.s.Wait()
}
