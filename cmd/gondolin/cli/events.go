package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/termsafe"
	"github.com/gondolin/gondolin/netpolicy"
	"github.com/gondolin/gondolin/sessions"
	"github.com/spf13/cobra"
)

func newEventsCmd() *cobra.Command {
	var follow, asJSON bool
	c := &cobra.Command{
		Use:   "events ID [-f] [--json]",
		Short: "Show a session's network decisions (allowed and blocked requests)",
		Args:  exactArgs(1, "a session"),
		RunE: withSupervisor(true, func(c *cobra.Command, client *sessions.Client, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			ch, cut, err := client.NetworkEventStream(ctx, args[0], follow)
			if err != nil {
				return err
			}
			for e := range ch {
				if asJSON {
					if err := printJSONLine(e); err != nil {
						return err
					}
					continue
				}
				fmt.Println(formatNetEvent(e))
			}
			if err := cut(); err != nil {
				// A script following events must not take a dead
				// supervisor or a dropped link for the session's end.
				return errdefs.Errorf(errdefs.ErrUnavailable, "events: the stream from the supervisor broke off: %v", err)
			}
			return nil
		}),
	}
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new decisions")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON lines")
	return c
}

func formatNetEvent(e netpolicy.Event) string {
	target := e.Host
	if e.Port != 0 {
		target = fmt.Sprintf("%s:%d", e.Host, e.Port)
	}
	// Host, path, method, user and command are the guest's: escaped.
	line := fmt.Sprintf("%s %-5s %-5s %s %s%s", e.Time.Local().Format(time.TimeOnly), e.Action, e.Proto,
		termsafe.String(e.Method), termsafe.String(target), termsafe.String(e.Path))
	if e.User != "" {
		line += " user=" + termsafe.String(e.User)
	}
	if e.Command != "" {
		line += fmt.Sprintf(" command=%q", e.Command)
	}
	if e.Rule != "" {
		line += " rule=" + e.Rule
	}
	if len(e.Secrets) > 0 {
		line += " secrets=" + strings.Join(e.Secrets, ",")
	}
	if e.Reason != "" {
		line += " (" + termsafe.String(e.Reason) + ")"
	}
	// The rest is the supervisor's, which may be another machine's (a
	// context): nothing in the line acts on the terminal.
	return termsafe.String(line)
}
