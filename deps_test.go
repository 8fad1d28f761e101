package gondolin_test

// These tests fail the build when a package leaks into a binary or package
// that should not have it (tailscale's tstest/deptest habit): the guest
// agent must stay small and static, the host binary must not carry the
// guest's code (FUSE, netlink, the agent itself), and the supervisor must
// not carry the dashboard's rendering.

import (
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// guestOnly are packages only the agent inside the guest has a use for.
// The host shares the wire protocol with it through vm/agentproto; anything
// here in the host binary means a host package imports guest code again
// (as vm once did vm/agent, for three string constants).
var guestOnly = []string{
	"github.com/gondolin/gondolin/vm/agent",
	"github.com/gondolin/gondolin/mounts/guestfs",
	"github.com/hanwen/go-fuse",
	"github.com/vishvananda/netlink",
	"github.com/vishvananda/netns",
	"github.com/mdlayher",
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4", // the host answers DHCP, it never asks
	"github.com/creack/pty",                        // the guest's processes get the ptys
}

// dashboard are the packages that render the dashboard. (sessions keeps
// a terminal emulator, charmbracelet/x/vt, to replay a session's screen.)
var dashboard = []string{
	"github.com/gondolin/gondolin/ui",
	"github.com/charmbracelet/bubbletea",
	"github.com/charmbracelet/lipgloss",
	"github.com/charmbracelet/bubbles",
	"charm.land",
}

func TestDeps(t *testing.T) {
	tests := []struct {
		pkg       string
		forbidden [][]string
	}{
		{"./cmd/gondolin-agent", [][]string{{
			"gvisor.dev", "github.com/gondolin/gondolin/netpolicy", "github.com/gondolin/gondolin/sessions",
			"github.com/gondolin/gondolin/imagestore", "github.com/spf13/cobra", "net/http",
			"github.com/digitalocean/go-qemu", "github.com/charmbracelet",
		}, dashboard}},
		{"./cmd/gondolin", [][]string{guestOnly}},
		{"./sessions", [][]string{guestOnly, dashboard}},
		{"./vm", [][]string{guestOnly, dashboard, {"github.com/gondolin/gondolin/sessions", "github.com/charmbracelet"}}},
	}
	for _, tt := range tests {
		t.Run(strings.TrimPrefix(tt.pkg, "./"), func(t *testing.T) {
			t.Parallel()
			g := importGraph(t, tt.pkg)
			for _, fs := range tt.forbidden {
				for _, f := range fs {
					var found []string
					for dep := range g.imports {
						if inTree(dep, f) {
							found = append(found, dep)
						}
					}
					if len(found) > 0 {
						slices.Sort(found)
						t.Errorf("%s must not depend on %s; it does through %s",
							tt.pkg, f, strings.Join(g.path(found[0]), " -> "))
					}
				}
			}
		})
	}
}

// graph is a package's import graph as built for Linux.
type graph struct {
	root    string
	imports map[string][]string // each package in the graph: what it imports
}

func importGraph(t *testing.T, pkg string) graph {
	t.Helper()
	g := graph{imports: map[string][]string{}}
	for _, line := range goListDeps(t, pkg, "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}") {
		f := strings.Fields(line)
		g.imports[f[0]] = f[1:]
		g.root = f[0] // go list -deps lists the package itself last
	}
	if g.root == "" {
		t.Fatalf("go list -deps %s listed nothing", pkg)
	}
	return g
}

// path returns a shortest import chain from the graph's root to dep.
func (g graph) path(dep string) []string {
	from := map[string]string{g.root: ""}
	for queue := []string{g.root}; len(queue) > 0; queue = queue[1:] {
		p := queue[0]
		if p == dep {
			var chain []string
			for ; p != ""; p = from[p] {
				chain = append(chain, p)
			}
			slices.Reverse(chain)
			return chain
		}
		for _, q := range g.imports[p] {
			if _, seen := from[q]; !seen {
				from[q] = p
				queue = append(queue, q)
			}
		}
	}
	return []string{dep}
}

// TestAgentIsStatic checks the agent needs no cgo: it runs as PID 1 in a
// guest that has no C library. Listing CgoFiles with CGO_ENABLED=0 proves
// nothing, since the cgo build constraint then drops those files, so look
// with cgo enabled: no dependency outside the standard library may have
// cgo files. (The standard library's, for net and os/user, have pure Go
// fallbacks.) Then build the agent the way the Makefile does.
func TestAgentIsStatic(t *testing.T) {
	t.Parallel()
	const agent = "./cmd/gondolin-agent"
	for _, line := range goListDeps(t, agent, "{{if and .CgoFiles (not .Standard)}}{{.ImportPath}}: {{.CgoFiles}}{{end}}", "CGO_ENABLED=1") {
		t.Errorf("a dependency of the agent has cgo files: %s", line)
	}
	if testing.Short() {
		t.Skip("skipping the CGO_ENABLED=0 build of the agent in short mode")
	}
	cmd := exec.Command("go", "build", "-o", "/dev/null", agent)
	cmd.Env = append(cmd.Environ(), "GOOS=linux", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("CGO_ENABLED=0 go build %s: %v\n%s", agent, err, out)
	}
}

// goListDeps runs go list -deps -f format on pkg as built for Linux (where
// both the host binary and the agent run, whatever the test's host is) and
// returns the non-empty lines of its output.
func goListDeps(t *testing.T, pkg, format string, env ...string) []string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-f", format, pkg)
	cmd.Env = append(append(cmd.Environ(), "GOOS=linux"), env...)
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			stderr = ee.Stderr
		}
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, stderr)
	}
	var lines []string
	for _, line := range strings.Split(string(out), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			lines = append(lines, line)
		}
	}
	return lines
}

// inTree reports whether the import path dep is the package prefix or
// lies below it, so that vm/agent does not catch vm/agentproto.
func inTree(dep, prefix string) bool {
	return dep == prefix || strings.HasPrefix(dep, prefix+"/")
}
