package cli

import (
	"context"
	"fmt"
	"os"

	"github.com/gondolin/gondolin/internal/termsafe"
	"github.com/gondolin/gondolin/sessions"
	"github.com/spf13/cobra"
)

func newStopCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "stop ID...",
		Short: "Stop sessions' VMs (gracefully, then by force)",
		Args:  atLeastOne("a session: gondolin stop ID..."),
		RunE: withSupervisor(true, func(c *cobra.Command, client *sessions.Client, args []string) error {
			return eachSession(args, func(ref string) error {
				s, err := client.Stop(context.Background(), ref)
				if err != nil {
					return err
				}
				fmt.Println(termsafe.String(s.ID)) // the supervisor's, maybe another machine's
				return nil
			})
		}),
	}
}

// eachSession runs do for every session named, as docker does for its
// containers: one that fails (gone already, still being made) is said
// and the others still go, and the exit code is the last failure's
// (list -q | xargs gondolin stop stops what it can).
func eachSession(refs []string, do func(ref string) error) error {
	var last error
	for _, ref := range refs {
		if err := do(ref); err != nil {
			if last != nil {
				fmt.Fprintf(os.Stderr, "gondolin: %s\n", oneLine(last))
			}
			last = err
		}
	}
	return last
}
