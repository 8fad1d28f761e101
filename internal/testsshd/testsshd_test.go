package testsshd

import (
	"errors"
	"os/exec"
	"testing"
)

// TestToolMissing: a missing program is exec.ErrNotFound, which the
// bench turns into a skipped row instead of a failed run.
func TestToolMissing(t *testing.T) {
	if _, err := Tool("no-such-tool-gondolin"); !errors.Is(err, exec.ErrNotFound) {
		t.Errorf("Tool of a missing program: %v, want exec.ErrNotFound", err)
	}
}
