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
	var all, asJSON, quiet bool
	c := &cobra.Command{
		Use:     "list [--all] [--json | -q]",
		Aliases: []string{"ls", "ps"},
		Short:   "List sessions (live ones; --all adds stale and stopped)",
		Args: func(c *cobra.Command, args []string) error {
			if asJSON && quiet {
				return usageError("--json and -q do not go together")
			}
			return noArgs(c, args)
		},
		RunE: withSupervisor(true, func(c *cobra.Command, client *sessions.Client, args []string) error {
			list, err := client.List(context.Background(), all)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(list)
			}
			if quiet { // IDs only, for xargs: gondolin list -q | xargs gondolin stop
				for _, s := range list {
					fmt.Println(s.ID)
				}
				return nil
			}
			w := newTable()
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
		}),
	}
	c.Flags().BoolVarP(&all, "all", "a", false, "include stale and stopped sessions")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "print session IDs only, one per line")
	return c
}
