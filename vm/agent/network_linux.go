package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gondolin/gondolin/vm/agentproto"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"
)

// Where the host's CA goes in the guest. netpolicy.GuestCABundle and
// GuestCAFile name the same paths for the environment variables the host
// sets; a netpolicy test keeps the two in step.
const (
	GuestCABundle = "/etc/ssl/certs/ca-certificates.crt"
	GuestCAFile   = "/etc/ssl/certs/gondolin-ca.pem"
)

// The host CA's block in the system bundle is fenced by these lines, so a
// second OpNetwork (after a restore or a supervisor restart, possibly with
// a different CA) replaces it instead of piling up copies.
const (
	caBegin = "# gondolin host CA: begin\n"
	caEnd   = "# gondolin host CA: end\n"
)

// networkTimeout bounds the whole of Network: DHCP against the host's
// in-process stack takes milliseconds, so anything slow is a broken host.
const networkTimeout = 5 * time.Second

// Network brings up the guest's network: DHCP on the interface from the
// host's stack, /etc/resolv.conf, and the host's CA in the trust store.
// It is idempotent: a restored or re-adopted guest may be told again.
func (Guest) Network(n *agentproto.Network) error {
	ifname := n.Interface
	if ifname == "" {
		ifname = "eth0"
	}
	ctx, cancel := context.WithTimeout(context.Background(), networkTimeout)
	defer cancel()
	link, err := findLink(ctx, ifname)
	if err != nil {
		return err
	}
	// The host stack is IPv4-only: without IPv6 on the interface the
	// guest sends no router solicitations and programs fail over to
	// IPv4 at once. Best effort: the knob is absent without IPv6.
	os.WriteFile("/proc/sys/net/ipv6/conf/"+ifname+"/disable_ipv6", []byte("1"), 0)
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("network: bring %s up: %w", ifname, err)
	}
	ack, err := dhcp(ctx, ifname)
	if err != nil {
		return err
	}
	if err := applyLease(link, ack); err != nil {
		return err
	}
	if len(n.CACert) > 0 {
		if err := installCA(n.CACert); err != nil {
			return fmt.Errorf("network: install CA: %w", err)
		}
	}
	if len(n.SSHKnownHosts) > 0 {
		if err := writeFileAtomic(guestSSHKnownHosts, n.SSHKnownHosts, 0o644); err != nil {
			return fmt.Errorf("network: ssh known hosts: %w", err)
		}
	}
	return nil
}

// guestSSHKnownHosts is where OpenSSH reads system-wide known hosts
// (netpolicy.GuestSSHKnownHosts names the same path).
const guestSSHKnownHosts = "/etc/ssh/ssh_known_hosts"

// writeFileAtomic writes path through a temporary file and a rename.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".gondolin.tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// findLink waits briefly for the interface: virtio_net may still be
// binding when the host asks right after boot.
func findLink(ctx context.Context, ifname string) (netlink.Link, error) {
	loaded := false
	for {
		link, err := netlink.LinkByName(ifname)
		if err == nil {
			return link, nil
		}
		if !loaded {
			// The coldplug at boot loads virtio_net when the NIC
			// exists; run it again in case the host asked early.
			LoadDeviceModules()
			loaded = true
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("network: no interface %s in the guest (was the VM started without a network?)", ifname)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func dhcp(ctx context.Context, ifname string) (*dhcpv4.DHCPv4, error) {
	c, err := nclient4.New(ifname, nclient4.WithTimeout(time.Second), nclient4.WithRetry(4))
	if err != nil {
		return nil, fmt.Errorf("network: DHCP on %s: %w", ifname, err)
	}
	defer c.Close()
	lease, err := c.Request(ctx)
	if err != nil {
		return nil, fmt.Errorf("network: DHCP on %s: %w", ifname, err)
	}
	ack := lease.ACK
	if ack.YourIPAddr.To4() == nil || ack.YourIPAddr.IsUnspecified() {
		return nil, errors.New("network: DHCP gave no address")
	}
	return ack, nil
}

// applyLease sets the address, MTU and default route of the lease,
// replacing what an earlier call set.
func applyLease(link netlink.Link, ack *dhcpv4.DHCPv4) error {
	mask := ack.SubnetMask()
	if mask == nil {
		mask = ack.YourIPAddr.DefaultMask()
	}
	ipnet := &net.IPNet{IP: ack.YourIPAddr.To4(), Mask: mask}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: ipnet}); err != nil {
		return fmt.Errorf("network: set address %s: %w", ipnet, err)
	}
	// Drop any other IPv4 address (a template's clone keeps its lease;
	// a changed lease must not leave the old one behind).
	if addrs, err := netlink.AddrList(link, netlink.FAMILY_V4); err == nil {
		for _, a := range addrs {
			if !a.IP.Equal(ipnet.IP) {
				netlink.AddrDel(link, &a)
			}
		}
	}
	if b := ack.GetOneOption(dhcpv4.OptionInterfaceMTU); len(b) == 2 {
		if mtu := int(b[0])<<8 | int(b[1]); mtu >= 576 && mtu != link.Attrs().MTU {
			netlink.LinkSetMTU(link, mtu)
		}
	}
	routers := ack.Router()
	if len(routers) == 0 {
		return errors.New("network: DHCP gave no router")
	}
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: routers[0].To4()}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("network: default route via %s: %w", routers[0], err)
	}
	var resolv strings.Builder
	resolv.WriteString("# written by the gondolin agent from DHCP\n")
	for _, ns := range ack.DNS() {
		fmt.Fprintf(&resolv, "nameserver %s\n", ns)
	}
	if len(ack.DNS()) == 0 {
		fmt.Fprintf(&resolv, "nameserver %s\n", routers[0])
	}
	if err := writeAtomic("/etc/resolv.conf", []byte(resolv.String()), 0o644); err != nil {
		return fmt.Errorf("network: /etc/resolv.conf: %w", err)
	}
	return nil
}

// installCA writes the host's CA on its own and into the system bundle,
// replacing an earlier gondolin block rather than appending a second.
func installCA(pem []byte) error {
	if !bytes.Contains(pem, []byte("-----BEGIN CERTIFICATE-----")) {
		return errors.New("not a PEM certificate")
	}
	if !bytes.HasSuffix(pem, []byte("\n")) {
		pem = append(pem, '\n')
	}
	if err := os.MkdirAll(filepath.Dir(GuestCABundle), 0o755); err != nil {
		return err
	}
	if err := writeAtomic(GuestCAFile, pem, 0o644); err != nil {
		return err
	}
	old, err := os.ReadFile(GuestCABundle)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if i := bytes.Index(old, []byte(caBegin)); i >= 0 {
		if j := bytes.Index(old[i:], []byte(caEnd)); j >= 0 {
			old = append(old[:i:i], old[i+j+len(caEnd):]...)
		}
	}
	if len(old) > 0 && !bytes.HasSuffix(old, []byte("\n")) {
		old = append(old, '\n')
	}
	bundle := append(append(append(old, caBegin...), pem...), caEnd...)
	return writeAtomic(GuestCABundle, bundle, 0o644)
}

// writeAtomic replaces path with data through a temporary file and a
// rename, so a reader (a TLS client starting up) never sees half a file.
func writeAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
