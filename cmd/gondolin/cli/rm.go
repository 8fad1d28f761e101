package cli

import (
	"context"
	"fmt"

	"github.com/gondolin/gondolin/sessions"
	"github.com/spf13/cobra"
)

func newRmCmd() *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:   "rm [-f] ID...",
		Short: "Remove stale or stopped sessions (-f stops live ones first)",
		Args:  atLeastOne("a session: gondolin rm [-f] ID..."),
		RunE: withSupervisor(true, func(c *cobra.Command, client *sessions.Client, args []string) error {
			return eachSession(args, func(ref string) error {
				if err := client.Remove(context.Background(), ref, force); err != nil {
					return err
				}
				fmt.Println(ref)
				return nil
			})
		}),
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "stop a live session first")
	return c
}
