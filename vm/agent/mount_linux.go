package agent

import (
	"errors"

	"github.com/gondolin/gondolin/vm/agentproto"
)

// Mount mounts a host directory served on the fs port, or a memory
// filesystem, at a guest path.
func (Guest) Mount(m *agentproto.Mount) error {
	return errors.New("mount: not implemented yet")
}
