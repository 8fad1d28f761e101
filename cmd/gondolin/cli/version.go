package cli

import (
	"fmt"
	goruntime "runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// versionInfo is what gondolin version prints: the commit it was built
// from (as the Go toolchain stamped it), and the toolchain.
type versionInfo struct {
	Version  string `json:"version"`
	Commit   string `json:"commit,omitempty"`
	Modified bool   `json:"modified,omitempty"` // built from a tree with uncommitted changes
	Built    string `json:"commit_time,omitempty"`
	Go       string `json:"go"`
	Platform string `json:"platform"`
}

func buildVersion() versionInfo {
	v := versionInfo{Version: "(devel)", Go: goruntime.Version(), Platform: goruntime.GOOS + "/" + goruntime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	if bi.Main.Version != "" {
		v.Version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = s.Value
		case "vcs.time":
			v.Built = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

func (v versionInfo) String() string {
	s := "gondolin " + v.Version
	if v.Commit != "" {
		s += ", commit " + v.Commit[:min(12, len(v.Commit))]
		if v.Modified {
			s += " (modified)"
		}
	}
	return s + fmt.Sprintf(", %s %s", v.Go, v.Platform)
}

func newVersionCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "version [--json]",
		Short: "Print gondolin's version, commit and Go version (also: gondolin --version)",
		Args:  noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if asJSON {
				return printJSON(buildVersion())
			}
			fmt.Println(buildVersion())
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}
