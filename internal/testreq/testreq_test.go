package testreq

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestSkipOrFail runs a test that needs a missing tool in a child
// process, with and without EnvRequire: skipped without, failed with.
func TestSkipOrFail(t *testing.T) {
	if os.Getenv("TESTREQ_CHILD") != "" {
		Tool(t, "no-such-tool-gondolin")
		t.Fatal("Tool returned for a missing tool")
	}
	for _, tt := range []struct {
		require string
		want    string
	}{
		{"", "--- SKIP"},
		{"1", "--- FAIL"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSkipOrFail$", "-test.v")
		cmd.Env = append(os.Environ(), "TESTREQ_CHILD=1", EnvRequire+"="+tt.require)
		out, _ := cmd.CombinedOutput()
		if !strings.Contains(string(out), tt.want) || !strings.Contains(string(out), "no-such-tool-gondolin is not installed") {
			t.Errorf("%s=%q: want %s:\n%s", EnvRequire, tt.require, tt.want, out)
		}
	}
}
