package debian

import "github.com/gondolin/gondolin/imagestore/internal/rootfs"

// The host tool helpers live with the staging tree, which the OCI puller
// shares; these names keep the builder's code short.
var (
	lookTool   = rootfs.LookTool
	needTools  = rootfs.NeedTools
	command    = rootfs.Command
	run        = rootfs.Run
	stderrTail = rootfs.StderrTail
	removeAll  = rootfs.RemoveAll
)
