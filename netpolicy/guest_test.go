package netpolicy

import (
	"testing"

	"github.com/gondolin/gondolin/netpolicy/netpolicytest"
)

// newTestGuest plugs a stand-in for a VM into n (a second gVisor stack
// with n's guest MAC, whose frames reach n as QEMU's would: see
// netpolicytest) and configures it by DHCP, as a booted guest is.
func newTestGuest(t testing.TB, n *Network) *netpolicytest.Guest {
	t.Helper()
	g := netpolicytest.NewGuest(t, n, n.opts.GuestMAC)
	g.Configure()
	return g
}
