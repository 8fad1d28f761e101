package cli

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/gondolin/gondolin/internal/termsafe"
	"github.com/gondolin/gondolin/sessions"
	"github.com/spf13/cobra"
)

func newListCmd() *cobra.Command {
	var all bool
	var out listing
	c := &cobra.Command{
		Use:     "list [--all] [--json | -q | --format TEMPLATE]",
		Aliases: []string{"ls", "ps"},
		Short:   "List sessions (live ones; --all adds stale and stopped)",
		Example: `  gondolin list -q | xargs gondolin stop       # stop every live session
  gondolin list --format '{{.Name}} {{.State}} {{.Policy}}'`,
		Args: out.args,
		RunE: withSupervisor(true, func(c *cobra.Command, client *sessions.Client, args []string) error {
			list, err := client.List(context.Background(), all)
			if err != nil {
				return err
			}
			return printListing(&out, list, func(s sessions.Session) string { return s.ID }, printSessions)
		}),
	}
	c.Flags().BoolVarP(&all, "all", "a", false, "include stale and stopped sessions")
	out.register(c.Flags(), "session IDs")
	return c
}

// printSessions is list's table, with what is wrong with a session on
// stderr below it.
func printSessions(list []sessions.Session) error {
	w := newTable()
	fmt.Fprintln(w, "ID\tNAME\tSTATE\tPID\tAGE\tIMAGE\tPTYS\tLABEL")
	var notes []string
	for _, s := range list {
		pid := "-"
		if s.PID > 0 {
			pid = strconv.Itoa(s.PID)
		}
		state := string(s.State)
		if s.Phase != "" { // what a session being made (or snapshotted) is doing
			state += " (" + s.Phase + ")"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", s.ID, dash(termsafe.String(s.Name)), state, pid,
			humanAge(time.Since(s.Created)), termsafe.String(s.Image), s.RunningPTYs(), termsafe.String(s.Label))
		if s.State == sessions.Stale {
			notes = append(notes, fmt.Sprintf("%s is stale: %s (remove it with: gondolin rm %s)", s.ID, termsafe.String(s.Reason), s.ID))
		}
		for _, e := range s.Errors {
			notes = append(notes, s.ID+": "+termsafe.String(e))
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintln(os.Stderr, n)
	}
	return nil
}
