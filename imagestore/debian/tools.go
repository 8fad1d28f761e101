package debian

import (
	"bytes"
	"context"
	"io"
	"os/exec"

	"github.com/gondolin/gondolin/imagestore/internal/rootfs"
)

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

// pipedCommand prepares a host tool as command does, with its stdout a
// pipe for the caller to read and its stderr kept for stderrTail.
func pipedCommand(ctx context.Context, dir, name string, args ...string) (*exec.Cmd, io.ReadCloser, *bytes.Buffer, error) {
	cmd, err := command(ctx, dir, name, args...)
	if err != nil {
		return nil, nil, nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	stderr := new(bytes.Buffer)
	cmd.Stderr = stderr
	return cmd, stdout, stderr, nil
}
