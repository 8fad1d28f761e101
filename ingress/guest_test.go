package ingress

import (
	"net/netip"
	"testing"

	"github.com/gondolin/gondolin/netpolicy"
	"github.com/gondolin/gondolin/netpolicy/ca"
	"github.com/gondolin/gondolin/netpolicy/netpolicytest"
)

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

// newTestGuest stands in for a VM, as in netpolicy's tests: a second
// gVisor stack whose frames reach n as QEMU's would (see netpolicytest).
// Its address is configured statically (DHCP is netpolicy's business,
// tested there).
func newTestGuest(t testing.TB, n *netpolicy.Network) *netpolicytest.Guest {
	t.Helper()
	g := netpolicytest.NewGuest(t, n, netpolicy.DefaultGuestMAC)
	g.SetAddress(netip.PrefixFrom(netpolicy.GuestIP, netpolicy.GuestPrefix.Bits()), netpolicy.GatewayIP)
	return g
}
