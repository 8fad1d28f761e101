package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/gondolin/gondolin/contexts"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/termsafe"
)

func newContextCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "context",
		Short: "Machines to run VMs on: this one (default) and others over ssh",
		Long: `A context is a machine whose supervisor gondolin talks to. The built-in
"default" is this machine. Others are reached with your own ssh (its
config, agent, known_hosts and jump hosts): gondolin runs
"gondolin supervisor dial-stdio" there, which carries the same API to
that machine's supervisor, started on demand. Nothing listens on a
network port, and the far side runs with that user's rights only.

Choose one with --context NAME on any command, $` + contexts.EnvContext + `, or
gondolin context use NAME. Paths in --mount-hostfs then name directories
on that machine.`,
		Args: subcommandArgs,
		RunE: showHelp,
	}
	c.AddCommand(newContextCreateCmd(), newContextLsCmd(), newContextUseCmd(), newContextRmCmd(), newContextInspectCmd())
	return c
}

func contextStore() (*contexts.Store, error) {
	home, err := layout.DefaultHome()
	if err != nil {
		return nil, err
	}
	return contexts.Open(home), nil
}

func newContextCreateCmd() *cobra.Command {
	var host, gondolin string
	c := &cobra.Command{
		Use:   "create NAME --host ssh://[USER@]HOST[:PORT] [--gondolin PATH]",
		Short: "Add a machine reached over ssh",
		Example: `  gondolin context create build --host ssh://me@build.example.com
  gondolin context create rack --host ssh://rack:2222 --gondolin /opt/gondolin/bin/gondolin`,
		Args: exactArgs(1, "a name: gondolin context create NAME --host ssh://[USER@]HOST[:PORT]"),
		RunE: func(c *cobra.Command, args []string) error {
			if host == "" {
				return usageError("context create needs --host ssh://[USER@]HOST[:PORT]")
			}
			store, err := contextStore()
			if err != nil {
				return err
			}
			if err := store.Create(contexts.Context{Name: args[0], Host: host, Gondolin: gondolin}); err != nil {
				return err
			}
			fmt.Println(args[0])
			return nil
		},
	}
	c.Flags().StringVar(&host, "host", "", "ssh://[USER@]HOST[:PORT]: the machine, as ssh reaches it (your ssh config applies)")
	c.Flags().StringVar(&gondolin, "gondolin", "", "gondolin's path (or name) on that machine (default: gondolin on its PATH)")
	return c
}

func newContextLsCmd() *cobra.Command {
	var list listing
	c := &cobra.Command{
		Use:     "ls [--json | -q | --format TEMPLATE]",
		Aliases: []string{"list"},
		Short:   "List contexts (* marks the one in use)",
		Args:    list.args,
		RunE: func(c *cobra.Command, args []string) error {
			store, err := contextStore()
			if err != nil {
				return err
			}
			all, _, err := store.List()
			if err != nil {
				return err
			}
			inUse, err := selectedContext()
			if err != nil {
				return err
			}
			return printListing(&list, all, func(c contexts.Context) string { return c.Name }, func(all []contexts.Context) error {
				w := newTable()
				fmt.Fprintln(w, "NAME\tHOST\tGONDOLIN")
				for _, c := range all {
					name := c.Name
					if c.Name == inUse.Name {
						name += " *"
					}
					host := c.Host
					if host == "" {
						host = "this machine"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\n", name, termsafe.String(host), dash(termsafe.String(c.Gondolin)))
				}
				return w.Flush()
			})
		},
	}
	list.register(c.Flags(), "context names")
	return c
}

func newContextUseCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "use NAME",
		Short: "Use a context from now on (stored in $GONDOLIN_HOME)",
		Args:  exactArgs(1, "a context: gondolin context use NAME"),
		RunE: func(c *cobra.Command, args []string) error {
			store, err := contextStore()
			if err != nil {
				return err
			}
			if err := store.Use(args[0]); err != nil {
				return err
			}
			if env := os.Getenv(contexts.EnvContext); env != "" && env != args[0] {
				fmt.Fprintf(os.Stderr, "gondolin: %s=%s still chooses another one in this shell\n", contexts.EnvContext, termsafe.String(env))
			}
			fmt.Println(args[0])
			return nil
		},
	}
}

func newContextRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME...",
		Short: "Forget contexts (their machines and VMs are not touched)",
		Args:  atLeastOne("a context: gondolin context rm NAME..."),
		RunE: func(c *cobra.Command, args []string) error {
			store, err := contextStore()
			if err != nil {
				return err
			}
			return eachSession(args, func(name string) error {
				if err := store.Remove(name); err != nil {
					return err
				}
				fmt.Println(name)
				return nil
			})
		},
	}
}

func newContextInspectCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NAME",
		Short: "Print a context as JSON",
		Args:  exactArgs(1, "a context: gondolin context inspect NAME"),
		RunE: func(c *cobra.Command, args []string) error {
			store, err := contextStore()
			if err != nil {
				return err
			}
			ctx, err := store.Get(args[0])
			if err != nil {
				return err
			}
			return printJSON(ctx)
		},
	}
}
