package cli

import (
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// TestHelpGroups: every flag of the commands with grouped help is in a
// group, so a new flag cannot fall into "Other flags" unnoticed.
func TestHelpGroups(t *testing.T) {
	for _, c := range []*cobra.Command{newExecCmd(), newBashCmd()} {
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if len(f.Annotations[groupKey]) != 1 {
				t.Errorf("%s --%s has no help group (see helpgroups.go)", c.Name(), f.Name)
			}
		})
	}
}
