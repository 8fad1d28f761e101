package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// newUICmd is the dashboard, also what `gondolin` alone opens on a
// terminal.
func newUICmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ui",
		Short: "Open the dashboard (also: gondolin with no arguments, on a terminal)",
		Args:  noArgs,
		RunE:  func(c *cobra.Command, args []string) error { return runDashboard() },
	}
}

func runDashboard() error {
	return errors.New("the dashboard is not built yet")
}
