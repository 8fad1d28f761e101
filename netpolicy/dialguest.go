package netpolicy

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/gondolin/gondolin/internal/errdefs"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// DialGuest opens a TCP connection to port on the guest, from the gateway
// address, through the VM's own stack. This is how host-side services
// (ingress) reach a server in the VM without a host port, a route or a
// NAT rule into it: the guest sees a client at GatewayIP. A server that
// listens only on the guest's loopback is not reachable this way.
//
// It fails with a refused connection when nothing listens on port, and
// hangs until ctx ends while no VM stream is attached: give ctx a
// deadline.
func (n *Network) DialGuest(ctx context.Context, port uint16) (net.Conn, error) {
	if n.ctx.Err() != nil {
		return nil, errors.New("netpolicy: network is closed")
	}
	if port == 0 {
		return nil, fmt.Errorf("%w: guest port 0", errdefs.ErrInvalid)
	}
	return gonet.DialContextTCP(ctx, n.stack.s, tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(GuestIP.As4()), Port: port}, ipv4.ProtocolNumber)
}
