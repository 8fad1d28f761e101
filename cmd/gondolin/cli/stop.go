package cli

import (
	"context"
	"fmt"

	"github.com/gondolin/gondolin/sessions"
	"github.com/spf13/cobra"
)

func newStopCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "stop ID...",
		Short: "Stop sessions' VMs (gracefully, then by force)",
		Args:  atLeastOne("a session: gondolin stop ID..."),
		RunE: withSupervisor(true, func(c *cobra.Command, client *sessions.Client, args []string) error {
			for _, ref := range args {
				s, err := client.Stop(context.Background(), ref)
				if err != nil {
					return err
				}
				fmt.Println(s.ID)
			}
			return nil
		}),
	}
}
