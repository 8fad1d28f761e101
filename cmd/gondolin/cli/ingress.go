package cli

import (
	"context"
	"fmt"

	"github.com/gondolin/gondolin/ingress"
	"github.com/gondolin/gondolin/internal/termsafe"
	"github.com/spf13/cobra"
)

// newIngressCmd changes a running session's ingress routes:
// gondolin ingress ID add|rm|ls.
func newIngressCmd() *cobra.Command {
	var noWS, asJSON bool
	c := &cobra.Command{
		Use:   "ingress ID add [HOST:]PORT[=GUEST_PORT] | rm LISTEN | ls [--json]",
		Short: "Forward HTTP from host listeners to a running session's guest ports",
		Args: func(c *cobra.Command, args []string) error {
			if len(args) < 2 {
				return usageError("ingress needs a session and add, rm or ls (see: gondolin ingress --help)")
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			ref, verb, rest := args[0], args[1], args[2:]
			client, err := dialSupervisor(true)
			if err != nil {
				return err
			}
			ctx := context.Background()
			switch {
			case verb == "add" && len(rest) == 1:
				r, err := ingress.ParseRoute(rest[0])
				if err != nil {
					return usageError("%v", err)
				}
				r.DisableWebSockets = noWS
				got, err := client.AddRoute(ctx, ref, r)
				if err != nil {
					return err
				}
				fmt.Printf("%s -> guest port %d\n", termsafe.String(got.URL()), got.GuestPort)
			case verb == "rm" && len(rest) == 1:
				return client.RemoveRoute(ctx, ref, rest[0])
			case verb == "ls" && len(rest) == 0:
				routes, err := client.Routes(ctx, ref)
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(routes)
				}
				w := newTable()
				fmt.Fprintln(w, "LISTEN\tGUEST PORT\tWEBSOCKETS")
				for _, r := range routes {
					fmt.Fprintf(w, "%s\t%d\t%v\n", r.Listen, r.GuestPort, !r.DisableWebSockets)
				}
				return w.Flush()
			default:
				return usageError("use: gondolin ingress ID add [HOST:]PORT[=GUEST_PORT] | rm LISTEN | ls")
			}
			return nil
		},
	}
	c.Flags().BoolVar(&noWS, "disable-websockets", false, "refuse WebSocket upgrades on the new route")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON (ls)")
	return c
}
