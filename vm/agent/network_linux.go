package agent

import (
	"errors"

	"github.com/gondolin/gondolin/vm/agentproto"
)

// Network brings up the guest's network: DHCP on the interface from the
// host's stack, /etc/resolv.conf, and the host's CA in the trust store.
func (Guest) Network(n *agentproto.Network) error {
	return errors.New("network: not implemented yet")
}
