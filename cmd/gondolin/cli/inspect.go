package cli

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/gondolin/gondolin/sessions"
)

func newInspectCmd() *cobra.Command {
	var out listing
	c := &cobra.Command{
		Use:   "inspect SESSION... [--format TEMPLATE]",
		Short: "Print sessions as JSON: spec, policy summary, terminals, ingress, usage",
		Example: `  gondolin inspect dev                        # a JSON array, as docker inspect prints
  gondolin inspect dev --format '{{.State}} {{.Spec.Image}}'`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError("inspect needs a session: gondolin inspect SESSION...")
			}
			out.asJSON = out.format == "" // JSON unless a template is given
			return out.check()
		},
		RunE: withSupervisor(true, func(c *cobra.Command, client *sessions.Client, args []string) error {
			// Docker's way: print every session found, then say which
			// were not (exit 4 when any was not).
			var found []sessions.Session
			var missing error
			for _, ref := range args {
				s, err := client.Get(context.Background(), ref)
				if err != nil {
					if missing != nil {
						fmt.Fprintf(os.Stderr, "gondolin: %s\n", oneLine(missing))
					}
					missing = err
					continue
				}
				found = append(found, s)
			}
			if len(found) > 0 || missing == nil {
				if err := printListing(&out, found, nil, nil); err != nil {
					return err
				}
			}
			return missing
		}),
	}
	c.Flags().StringVar(&out.format, "format", "", "print each session through a Go template, e.g. '{{.State}}' (the fields of the JSON, by their Go names)")
	return c
}
