// Package rlimit raises the supervisor's limit on open files: one
// process holds every VM's open host files (package mounts), sockets and
// QEMU connections.
package rlimit

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// RaiseNOFILE raises the soft RLIMIT_NOFILE to the hard limit, and
// returns the soft limit now in force. Call it when the supervisor
// starts, before it adopts VMs; log the result, as it bounds how many
// VMs can hold mounts.MaxHandles files at once.
//
// Go's runtime already raises the soft limit at start, to one below the
// hard limit (go.dev/issue/46279), and gives child processes their
// original limit back. A limit there is left alone so that QEMU and
// other children keep getting theirs: setting it would stop that. This
// acts when the limit was lowered since (prlimit from outside, or code
// in this process).
func RaiseNOFILE() (uint64, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("read the open file limit: %w", err)
	}
	if lim.Max == 0 || lim.Cur >= lim.Max-1 {
		return lim.Cur, nil
	}
	raised := unix.Rlimit{Cur: lim.Max, Max: lim.Max}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &raised); err != nil {
		return lim.Cur, fmt.Errorf("raise the open file limit from %d to %d: %w", lim.Cur, lim.Max, err)
	}
	return raised.Cur, nil
}
