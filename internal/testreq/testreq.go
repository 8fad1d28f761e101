// Package testreq lets a test skip when this machine lacks a tool it
// needs (qemu-img, ssh, tmux, busybox, FUSE), except where the whole
// suite is required to run (GONDOLIN_TEST_REQUIRE_VM, set by make test and
// CI): there a missing tool fails the test, as a missing VM does, because
// a suite that skips in silence proves nothing.
package testreq

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// EnvRequire is the variable that turns skips into failures (the same one
// that internal/testenv reads for VMs).
const EnvRequire = "GONDOLIN_TEST_REQUIRE_VM"

// Required reports whether the suite must run whole.
func Required() bool { return os.Getenv(EnvRequire) != "" }

// Skipf skips t, or fails it when the suite is required to run whole.
func Skipf(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Required() {
		t.Fatalf("%s (%s is set: install it, or unset %s to skip)", msg, EnvRequire, EnvRequire)
	}
	t.Skip(msg)
}

// Tool returns the path of the named program, looked up in PATH and then
// in /usr/sbin and /sbin, or skips t (see Skipf) when there is none.
func Tool(t testing.TB, name string) string {
	t.Helper()
	for _, dir := range []string{"", "/usr/sbin/", "/sbin/"} {
		if p, err := exec.LookPath(dir + name); err == nil {
			return p
		}
	}
	Skipf(t, "%s is not installed", name)
	return ""
}
