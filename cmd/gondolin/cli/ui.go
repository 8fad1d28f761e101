package cli

import (
	"context"
	"os"
	"time"

	"github.com/gondolin/gondolin/contexts"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/termio"
	"github.com/gondolin/gondolin/sessions"
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

// runDashboard opens the dashboard over every context: this machine's
// supervisor (started if none runs) and, for each context on another
// machine, a client that reaches it over ssh when the dashboard asks (a
// host that does not answer shows as unreachable, and holds up no
// other). The selected context (--context, GONDOLIN_CONTEXT, the stored
// choice) is where the new-session form proposes to create. Quitting
// leaves every VM running.
func runDashboard() error {
	home, err := layout.DefaultHome()
	if err != nil {
		return err
	}
	list, _, err := contexts.Open(home).List()
	if err != nil {
		return err
	}
	sel, err := selectedContext()
	if err != nil {
		return err
	}
	var hosts []ui.Host
	for _, c := range list {
		if !c.Remote() {
			// Alone, this machine's supervisor is the dashboard: wait
			// for it. Beside others, a slow start must not hold them
			// up: one that starts later is followed when it answers.
			wait := 40 * time.Second
			if len(list) > 1 {
				wait = 5 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			client, _, err := sessions.ConnectInfo(ctx, home, sessions.ConnectOptions{Start: true})
			cancel()
			if err != nil && len(list) == 1 {
				return err
			}
			if err != nil {
				// The other machines' sessions are still worth showing:
				// this one's shows as unreachable, and is followed as
				// soon as a supervisor answers on its socket.
				client = sessions.NewClient(home)
			}
			hosts = append(hosts, ui.Host{Name: c.Name, Backend: client})
			continue
		}
		// As for the CLI's commands, the far side's dial-stdio starts
		// its supervisor when none runs.
		hosts = append(hosts, ui.Host{Name: c.Name, Backend: remoteClient(c, true), Elsewhere: true})
	}
	return ui.Run(context.Background(), hosts, sel.Name)
}
