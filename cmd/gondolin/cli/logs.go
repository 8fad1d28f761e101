package cli

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/gondolin/gondolin/internal/termio"
	"github.com/gondolin/gondolin/internal/termsafe"
	"github.com/gondolin/gondolin/sessions"
	"github.com/spf13/cobra"
)

func newLogsCmd() *cobra.Command {
	var follow bool
	c := &cobra.Command{
		Use:   "logs [-f] ID",
		Short: "Print a session's serial console",
		Args:  exactArgs(1, "a session"),
		RunE: withSupervisor(true, func(c *cobra.Command, client *sessions.Client, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			// The console is what the guest wrote: on a terminal, its
			// escape sequences are shown, not run (a file gets the bytes).
			var out io.Writer = os.Stdout
			if termio.IsTerminal(os.Stdout) {
				out = &termsafe.Writer{W: os.Stdout}
			}
			return client.Logs(ctx, args[0], follow, out)
		}),
	}
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	return c
}
