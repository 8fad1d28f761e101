package gondolin_test

// TestDeps fails the build when a package leaks into a binary or package
// that should not have it (tailscale's deps_test habit): the guest agent
// must stay small and static, and the supervisor must not carry the
// dashboard's rendering.

import (
	"os/exec"
	"strings"
	"testing"
)

func TestDeps(t *testing.T) {
	tests := []struct {
		pkg       string
		forbidden []string
	}{
		{"./cmd/gondolin-agent", []string{
			"gvisor.dev/", "github.com/gondolin/gondolin/netpolicy", "github.com/gondolin/gondolin/sessions",
			"github.com/gondolin/gondolin/imagestore", "github.com/gondolin/gondolin/ui", "github.com/spf13/cobra",
			"github.com/charmbracelet/", "charm.land/", "net/http", "github.com/digitalocean/go-qemu",
		}},
		{"./sessions", []string{
			"github.com/gondolin/gondolin/ui", "github.com/charmbracelet/bubbletea", "github.com/charmbracelet/lipgloss",
			"github.com/charmbracelet/bubbles", "charm.land/",
		}},
		{"./vm", []string{"github.com/gondolin/gondolin/sessions", "github.com/gondolin/gondolin/ui", "charm.land/", "github.com/charmbracelet/"}},
	}
	for _, tt := range tests {
		out, err := exec.Command("go", "list", "-deps", tt.pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", tt.pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, f := range tt.forbidden {
				if strings.HasPrefix(dep, f) {
					t.Errorf("%s depends on %s", tt.pkg, dep)
				}
			}
		}
	}
}

// TestAgentIsStatic checks the agent builds without cgo.
func TestAgentIsStatic(t *testing.T) {
	cmd := exec.Command("go", "list", "-f", "{{.CgoFiles}}", "-deps", "./cmd/gondolin-agent")
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "[]" {
			t.Errorf("a dependency of the agent has cgo files: %s", line)
		}
	}
}
