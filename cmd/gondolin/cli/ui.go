package cli

import (
	"context"
	"os"

	"github.com/gondolin/gondolin/internal/termio"
	"github.com/gondolin/gondolin/ui"
	"github.com/spf13/cobra"
)

// newUICmd is the dashboard, also what `gondolin` alone opens on a
// terminal.
func newUICmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ui",
		Short: "Open the dashboard (also: gondolin with no arguments, on a terminal)",
		Args:  noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if !termio.IsTerminal(os.Stdin) || !termio.IsTerminal(os.Stdout) {
				return usageError("ui needs a terminal on stdin and stdout (for scripts: gondolin list, gondolin supervisor status)")
			}
			return runDashboard()
		},
	}
}

// runDashboard connects to the supervisor (starting it if none runs) and
// opens the dashboard; quitting it leaves every VM running.
func runDashboard() error {
	client, err := dialSupervisor(true)
	if err != nil {
		return err
	}
	return ui.Run(context.Background(), client)
}
