package netpolicy

import (
	"bytes"
	"encoding/binary"
	"net"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// dhcpLease is effectively forever: the guest keeps its one address for
// the VM's life (and across template clones), and nothing renews it.
const dhcpLease = 0xffffffff

// dhcpReply answers a guest DHCP frame with the whole reply frame
// (length-prefixed for the stream), or returns nil when f is not a DHCP
// request this server answers. f comes straight from the guest: every
// length is checked before use.
func dhcpReply(f []byte, guestMAC net.HardwareAddr) []byte {
	if len(f) < header.EthernetMinimumSize+header.IPv4MinimumSize+header.UDPMinimumSize {
		return nil
	}
	eth := header.Ethernet(f)
	if eth.Type() != header.IPv4ProtocolNumber {
		return nil
	}
	ip := header.IPv4(f[header.EthernetMinimumSize:])
	if !ip.IsValid(len(ip)) || ip.TransportProtocol() != header.UDPProtocolNumber ||
		ip.More() || ip.FragmentOffset() != 0 {
		return nil
	}
	payload := ip[ip.HeaderLength():ip.TotalLength()]
	if len(payload) < header.UDPMinimumSize {
		return nil
	}
	udp := header.UDP(payload)
	if udp.DestinationPort() != 67 {
		return nil
	}
	ulen := int(udp.Length())
	if ulen < header.UDPMinimumSize || ulen > len(payload) {
		return nil
	}
	req, err := dhcpv4.FromBytes(payload[header.UDPMinimumSize:ulen])
	if err != nil || req.OpCode != dhcpv4.OpcodeBootRequest {
		return nil
	}
	msg := dhcpAnswer(req, guestMAC)
	if msg == nil {
		return nil
	}
	return dhcpFrame(req, msg)
}

// dhcpAnswer builds the reply message for a request, or nil to stay
// silent (RELEASE, DECLINE, a request for some other address's server).
func dhcpAnswer(req *dhcpv4.DHCPv4, guestMAC net.HardwareAddr) *dhcpv4.DHCPv4 {
	// One guest per stack: only the VM's own NIC gets the lease, so a
	// guest cannot drain or confuse the server with invented MACs.
	if !bytes.Equal(req.ClientHWAddr, guestMAC) {
		return nil
	}
	var typ dhcpv4.MessageType
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		typ = dhcpv4.MessageTypeOffer
	case dhcpv4.MessageTypeRequest:
		typ = dhcpv4.MessageTypeAck
		if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(GatewayIP.AsSlice()) {
			return nil // the guest chose another server
		}
		want := req.RequestedIPAddress()
		if want == nil {
			want = req.ClientIPAddr
		}
		if want != nil && !want.IsUnspecified() && !want.Equal(GuestIP.AsSlice()) {
			typ = dhcpv4.MessageTypeNak
		}
	case dhcpv4.MessageTypeInform:
		typ = dhcpv4.MessageTypeAck
	default:
		return nil
	}
	gw := net.IP(GatewayIP.AsSlice())
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(typ),
		dhcpv4.WithServerIP(gw),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(gw)),
	}
	if typ != dhcpv4.MessageTypeNak {
		if req.MessageType() != dhcpv4.MessageTypeInform {
			mods = append(mods,
				dhcpv4.WithYourIP(net.IP(GuestIP.AsSlice())),
				dhcpv4.WithLeaseTime(dhcpLease))
		}
		mods = append(mods,
			dhcpv4.WithNetmask(net.CIDRMask(GuestPrefix.Bits(), 32)),
			dhcpv4.WithRouter(gw),
			dhcpv4.WithDNS(gw),
			dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionInterfaceMTU, binary.BigEndian.AppendUint16(nil, guestMTU))),
		)
	}
	reply, err := dhcpv4.NewReplyFromRequest(req, mods...)
	if err != nil {
		return nil
	}
	return reply
}

// dhcpFrame wraps msg in UDP, IPv4 and Ethernet headers addressed to the
// client, plus the stream's length prefix. Broadcast when the client asked
// for it (it cannot receive unicast before it has an address), else
// unicast to its MAC and the offered address.
func dhcpFrame(req, msg *dhcpv4.DHCPv4) []byte {
	body := msg.ToBytes()
	dstMAC := tcpip.LinkAddress(req.ClientHWAddr)
	dstIP := tcpip.AddrFrom4(GuestIP.As4())
	if req.IsBroadcast() || msg.MessageType() == dhcpv4.MessageTypeNak {
		dstMAC = header.EthernetBroadcastAddress
		dstIP = header.IPv4Broadcast
	}
	srcIP := tcpip.AddrFrom4(GatewayIP.As4())
	ipLen := header.IPv4MinimumSize + header.UDPMinimumSize + len(body)
	frame := make([]byte, 4+header.EthernetMinimumSize+ipLen)
	binary.BigEndian.PutUint32(frame, uint32(len(frame)-4))
	f := frame[4:]
	header.Ethernet(f).Encode(&header.EthernetFields{
		SrcAddr: tcpip.LinkAddress(GatewayMAC),
		DstAddr: dstMAC,
		Type:    header.IPv4ProtocolNumber,
	})
	ip := header.IPv4(f[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(ipLen),
		TTL:         64,
		Protocol:    uint8(header.UDPProtocolNumber),
		SrcAddr:     srcIP,
		DstAddr:     dstIP,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	udp := header.UDP(ip[header.IPv4MinimumSize:])
	udp.Encode(&header.UDPFields{
		SrcPort: 67,
		DstPort: 68,
		Length:  uint16(header.UDPMinimumSize + len(body)),
	})
	copy(udp[header.UDPMinimumSize:], body)
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, srcIP, dstIP, uint16(len(udp)))
	xsum = checksum.Checksum(body, xsum)
	sum := ^udp.CalculateChecksum(xsum)
	if sum == 0 {
		sum = 0xffff // zero would mean "no checksum"
	}
	udp.SetChecksum(sum)
	return frame
}
