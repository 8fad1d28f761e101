package netpolicy

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// hostAddrsTTL is how long a reading of the host's interface addresses is
// used. The addresses change (DHCP, a VPN coming up, IPv6 privacy
// addresses), so they are read at connection time, but not more than
// once a second however many flows the guests open.
const hostAddrsTTL = time.Second

// hostAddrs is the host's own addresses, shared by every Network of the
// process (they all run on the same host).
var hostAddrs = &hostAddrCache{read: readHostAddrs}

// hostAddrCache holds the addresses of the host's interfaces, each with
// its interface's name (for the reason a flow is refused).
type hostAddrCache struct {
	read func() (map[netip.Addr]string, error)

	mu    sync.Mutex
	at    time.Time
	addrs map[netip.Addr]string
}

// lookup reports whether ip is an address of one of the host's interfaces
// and which. When the interfaces cannot be read, the last reading stands
// (a failure must not unblock addresses known to be the host's).
func (c *hostAddrCache) lookup(ip netip.Addr) (ifname string, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) >= hostAddrsTTL || c.addrs == nil {
		if m, err := c.read(); err == nil {
			c.addrs = m
		}
		c.at = time.Now()
	}
	ifname, ok = c.addrs[ip.WithZone("")]
	return ifname, ok
}

// readHostAddrs lists the addresses of every interface, up or down (a
// down interface's address may come up between two readings).
func readHostAddrs() (map[netip.Addr]string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	m := map[netip.Addr]string{}
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
				m[ip.Unmap()] = ifc.Name
			}
		}
	}
	return m, nil
}
