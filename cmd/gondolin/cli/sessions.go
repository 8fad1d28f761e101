package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/gondolin/gondolin/internal/termio"
	"github.com/gondolin/gondolin/internal/termsafe"
	"github.com/gondolin/gondolin/sessions"
	"github.com/spf13/cobra"
)

func newListCmd() *cobra.Command {
	var all, asJSON bool
	c := &cobra.Command{
		Use:     "list [--all] [--json]",
		Aliases: []string{"ls", "ps"},
		Short:   "List sessions (live ones; --all adds stale and stopped)",
		Args:    noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			client, err := dialSupervisor(true)
			if err != nil {
				return err
			}
			list, err := client.List(context.Background(), all)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(list)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tNAME\tSTATE\tPID\tAGE\tIMAGE\tPTYS\tLABEL")
			var notes []string
			for _, s := range list {
				pid := "-"
				if s.PID > 0 {
					pid = strconv.Itoa(s.PID)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", s.ID, dash(termsafe.String(s.Name)), s.State, pid,
					humanAge(time.Since(s.Created)), termsafe.String(s.Image), s.RunningPTYs(), termsafe.String(s.Label))
				if s.State == sessions.Stale {
					notes = append(notes, fmt.Sprintf("%s is stale: %s (remove it with: gondolin rm %s)", s.ID, termsafe.String(s.Reason), s.ID))
				}
				for _, e := range s.Errors {
					notes = append(notes, s.ID+": "+termsafe.String(e))
				}
			}
			w.Flush()
			for _, n := range notes {
				fmt.Fprintln(os.Stderr, n)
			}
			return nil
		},
	}
	c.Flags().BoolVarP(&all, "all", "a", false, "include stale and stopped sessions")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newStopCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "stop ID...",
		Short: "Stop sessions' VMs (gracefully, then by force)",
		Args:  atLeastOne("a session: gondolin stop ID..."),
		RunE: func(c *cobra.Command, args []string) error {
			client, err := dialSupervisor(true)
			if err != nil {
				return err
			}
			for _, ref := range args {
				s, err := client.Stop(context.Background(), ref)
				if err != nil {
					return err
				}
				fmt.Println(s.ID)
			}
			return nil
		},
	}
}

func newRmCmd() *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:   "rm [-f] ID...",
		Short: "Remove stale or stopped sessions (-f stops live ones first)",
		Args:  atLeastOne("a session: gondolin rm [-f] ID..."),
		RunE: func(c *cobra.Command, args []string) error {
			client, err := dialSupervisor(true)
			if err != nil {
				return err
			}
			for _, ref := range args {
				if err := client.Remove(context.Background(), ref, force); err != nil {
					return err
				}
				fmt.Println(ref)
			}
			return nil
		},
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "stop a live session first")
	return c
}

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

// execInSession is exec --session: the same stdio and exit codes as a
// one-shot exec, in an existing session.
func execInSession(ref string, spec *sessions.Spec, args []string, term *terminal) error {
	client, err := dialSupervisor(true)
	if err != nil {
		return err
	}
	req := sessions.ExecRequest{Argv: args, Env: spec.Env, Cwd: spec.Cwd, TTY: term.rows > 0, Rows: term.rows, Cols: term.cols}
	sigs := make(chan int, 4)
	go func() {
		for s := range forwardSignals() {
			sigs <- int(s)
		}
	}()
	code, err := client.Exec(context.Background(), ref, req, sessions.ExecStreams{
		Stdin: term.stdin, Stdout: os.Stdout, Stderr: os.Stderr, Signals: sigs, Resizes: term.resizes,
	})
	return exitWith(code, err)
}
