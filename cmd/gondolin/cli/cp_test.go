package cli

import (
	"errors"
	"testing"

	"github.com/gondolin/gondolin/cptar"
	"github.com/gondolin/gondolin/internal/errdefs"
)

func TestParseCpOperand(t *testing.T) {
	tests := []struct {
		in            string
		session, path string
	}{
		{"dev:/work", "dev", "/work"},
		{"3f2a:rel/path", "3f2a", "rel/path"},
		{"dev:", "dev", "."},
		{"dev:/a:b", "dev", "/a:b"},
		{"./a:b", "", "./a:b"},
		{"dir/a:b", "", "dir/a:b"},
		{"/abs:x", "", "/abs:x"},
		{":x", "", ":x"},
		{"-", "", "-"},
		{"plain", "", "plain"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got := parseCpOperand(tt.in)
			if got.session != tt.session || got.path != tt.path {
				t.Errorf("got %+v, want session %q path %q", got, tt.session, tt.path)
			}
		})
	}
}

// TestAgentNotes: the agent's stderr is passed on but for its last line,
// which is the error when it fails, classed not found for its code.
func TestAgentNotes(t *testing.T) {
	op := cpOperand{session: "dev", path: "/x"}
	a := &agentNotes{}
	a.Write([]byte("skipped \"s\": socket\nlstat /x: no such"))
	a.Write([]byte(" file or directory\n"))
	err := a.result(cptar.ExitNotFound, op, "from")
	if !errors.Is(err, errdefs.ErrNotFound) || err.Error() != "copy from session dev: lstat /x: no such file or directory" {
		t.Errorf("not found: %v", err)
	}
	if err := (&agentNotes{}).result(cptar.ExitFailed, op, "into"); err == nil || errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("failure without a message: %v", err)
	}
	ok := &agentNotes{}
	ok.Write([]byte("skipped \"s\": socket\n"))
	if err := ok.result(0, op, "from"); err != nil {
		t.Errorf("success: %v", err)
	}
	long := &agentNotes{}
	for range 100 {
		long.Write(make([]byte, 1000))
	}
	if len(long.line) != maxNote {
		t.Errorf("a line of 100000 bytes kept %d", len(long.line))
	}
}
