package cli

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/gondolin/gondolin/internal/termio"
	"github.com/gondolin/gondolin/internal/termsafe"
	"github.com/spf13/cobra"
)

func newLogsCmd() *cobra.Command {
	var follow bool
	c := &cobra.Command{
		Use:   "logs [-f] ID",
		Short: "Print a session's serial console",
		Args:  exactArgs(1, "a session"),
		RunE: func(c *cobra.Command, args []string) error {
			client, err := dialSupervisor(true)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			// The console is what the guest wrote: on a terminal, its
			// escape sequences are shown, not run (a file gets the bytes).
			var out io.Writer = os.Stdout
			if termio.IsTerminal(os.Stdout) {
				out = &termsafe.Writer{W: os.Stdout}
			}
			return client.Logs(ctx, args[0], follow, out)
		},
	}
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	return c
}
