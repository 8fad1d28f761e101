package cli

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/snapshots"
)

// TestExitCode: the exit code follows the error's class, wherever in the
// chain it is and whichever side of the API found it.
func TestExitCode(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"a flag", errdefs.Fieldf("--cpus", "--cpus 100: use 1 to 64"), exitUsage},
		{"bad input, wrapped", fmt.Errorf("create: %w", fmt.Errorf("%w: bad ref", errdefs.ErrInvalid)), exitUsage},
		{"the supervisor's 400", errdefs.Errorf(errdefs.FromHTTPStatus(http.StatusBadRequest), "bad terminal id"), exitUsage},
		{"a corrupt snapshot", fmt.Errorf("%w: x.json", snapshots.ErrCorrupt), exitUsage},
		{"cobra's unknown command", errors.New(`unknown command "frob" for "gondolin"`), exitUsage},
		{"usage error", usageError("take one"), exitUsage},
		{"not found", errdefs.Errorf(errdefs.ErrNotFound, "no session x"), exitNotFound},
		{"the supervisor's 404, wrapped", fmt.Errorf("stop: %w", errdefs.Errorf(errdefs.FromHTTPStatus(http.StatusNotFound), "no session \"x\"")), exitNotFound},
		{"conflict", errdefs.Errorf(errdefs.ErrConflict, "name taken"), exitFailure},
		{"unclassed", errors.New("qemu died"), exitFailure},
		{"a guest command's code", &exitError{code: 7}, 7},
	}
	for _, tt := range tests {
		if got := exitCode(tt.err); got != tt.want {
			t.Errorf("%s: exit %d, want %d", tt.name, got, tt.want)
		}
	}
}
