package cli

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/gondolin/gondolin/netpolicy"
	"github.com/gondolin/gondolin/sessions"
	"github.com/spf13/cobra"
)

func newPolicyCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "policy",
		Short: "Show or change a running session's network policy",
		Args:  subcommandArgs,
		RunE:  showHelp,
	}
	var asJSON bool
	show := &cobra.Command{
		Use:   "show ID [--json]",
		Short: "Show allowed hosts, secrets (names and hosts, never values), DNS and maps",
		Args:  exactArgs(1, "a session"),
		RunE: withSupervisor(true, func(c *cobra.Command, client *sessions.Client, args []string) error {
			v, err := client.Policy(context.Background(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(v)
			}
			printPolicy(v)
			return nil
		}),
	}
	show.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	edit := func(use, short string, n int, build func(args []string) (sessions.PolicyChange, error)) *cobra.Command {
		return &cobra.Command{
			Use:   use,
			Short: short,
			Args:  exactArgs(n, strings.TrimPrefix(use, strings.Fields(use)[0]+" ")),
			RunE: func(c *cobra.Command, args []string) error {
				ch, err := build(args[1:])
				if err != nil {
					return err
				}
				client, err := dialSupervisor(true)
				if err != nil {
					return err
				}
				v, err := client.ChangePolicy(context.Background(), args[0], ch)
				if err != nil {
					return err
				}
				printPolicy(v)
				return nil
			},
		}
	}
	allow := edit("allow ID PATTERN", "Allow a host pattern on the running VM (next request)", 2,
		func(a []string) (sessions.PolicyChange, error) { return sessions.PolicyChange{Allow: a[0]}, nil })
	deny := edit("deny ID PATTERN", "Deny a host pattern on the running VM (next request)", 2,
		func(a []string) (sessions.PolicyChange, error) { return sessions.PolicyChange{Deny: a[0]}, nil })
	secret := &cobra.Command{Use: "secret", Short: "Set, rotate or remove a secret", Args: subcommandArgs, RunE: showHelp}
	set := edit("set ID NAME[:url]@HOST[,HOST...][=VALUE]", "Add or rotate a secret (value from the host env when omitted; =VALUE lands in your shell history)", 2,
		func(a []string) (sessions.PolicyChange, error) {
			// Resolve the value here, from this shell's environment; it
			// travels to the supervisor apart from the spec.
			sec, err := netpolicy.ParseHostSecret(a[0], os.Getenv)
			if err != nil {
				return sessions.PolicyChange{}, usageError("%v", err)
			}
			v := sec.Value.Reveal()
			return sessions.PolicyChange{SetSecret: sec.Spec(), SecretValue: &v}, nil
		})
	rm := edit("rm ID NAME", "Remove a secret", 2,
		func(a []string) (sessions.PolicyChange, error) { return sessions.PolicyChange{RemoveSecret: a[0]}, nil })
	secret.AddCommand(set, rm)
	c.AddCommand(show, allow, deny, secret)
	return c
}

func printPolicy(v sessions.PolicyView) {
	p := v.Policy
	w := newTable()
	fmt.Fprintf(w, "allow\t%s\n", strings.Join(p.Allow, " "))
	if len(p.Deny) > 0 {
		fmt.Fprintf(w, "deny\t%s\n", strings.Join(p.Deny, " "))
	}
	missing := map[string]bool{}
	for _, m := range v.Missing {
		missing[m] = true
	}
	for _, s := range p.Secrets {
		state := "set"
		if missing[s.Name] {
			state = "NO VALUE: gondolin policy secret set ID " + s.Spec()
		}
		where := "headers"
		if s.InURL {
			where = "headers and URL"
		}
		fmt.Fprintf(w, "secret\t%s for %s, in %s (%s)\n", s.Name, strings.Join(s.Hosts, ","), where, state)
	}
	dns := string(p.DNS)
	if len(p.DNSServers) > 0 {
		dns += " via " + strings.Join(p.DNSServers, ",")
	}
	fmt.Fprintf(w, "dns\t%s\n", dns)
	for _, m := range p.TCPMaps {
		fmt.Fprintf(w, "tcp-map\t%s:%d=%s\n", m.GuestHost, m.GuestPort, m.Upstream)
	}
	for _, g := range p.AllowInternal {
		ports := "every port"
		switch {
		case g.FromPort == 0 && g.ToPort == 0:
		case g.FromPort == g.ToPort:
			ports = fmt.Sprintf("port %d only", g.FromPort)
		default:
			ports = fmt.Sprintf("ports %d to %d only", g.FromPort, g.ToPort)
		}
		fmt.Fprintf(w, "allow-internal\t%s (%s)\n", g, ports)
	}
	for _, r := range p.Resolve {
		fmt.Fprintf(w, "resolve\t%s=%s\n", r.Host, r.IP)
	}
	if p.DisableWebSockets {
		fmt.Fprintf(w, "websockets\tdisabled\n")
	}
	w.Flush()
}
