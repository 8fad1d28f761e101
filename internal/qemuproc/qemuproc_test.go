package qemuproc

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// TestIn starts a process named qemu-system-x86_64 (a copy of sleep)
// whose command line names a directory, and looks it up by that
// directory and by others.
func TestIn(t *testing.T) {
	dir := t.TempDir()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep")
	}
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	// Its command line names run, as QEMU's names its run directory.
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	fake := filepath.Join(run, "qemu-system-x86_64")
	if err := os.WriteFile(fake, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(fake, "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	cases := []struct {
		dir  string
		want bool
	}{
		{run, true},
		{run + "x", false},
		{filepath.Join(dir, "ru"), false},
	}
	for _, tc := range cases {
		if got := slices.Contains(In(tc.dir), cmd.Process.Pid); got != tc.want {
			t.Errorf("In(%s) has the process: %v, want %v", tc.dir, got, tc.want)
		}
	}
}
