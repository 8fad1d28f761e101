// Package qemuproc finds QEMU processes by what their command line
// names, for code that must find a VM whose pid file is missing or not
// yet written (a sweep after a crash, a test's cleanup).
package qemuproc

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
)

// In lists the pids of the QEMU processes whose command line names a
// path under dir.
func In(dir string) []int {
	var pids []int
	paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range paths {
		cmdline, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(cmdline, []byte("qemu-system")) || !bytes.Contains(cmdline, []byte(dir+"/")) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}
