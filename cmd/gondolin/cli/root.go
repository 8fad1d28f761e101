// Package cli is gondolin's command line: it parses flags, hands the work
// to the supervisor through its API client (sessions.Client, starting the
// supervisor on demand), prints the answer, and maps errors to exit codes.
// A few commands work in this process instead: a one-shot exec (a
// sessions.Runtime), the image commands (imagestore and its builders),
// snapshot inspect and rm of a disk path (which the supervisor would read
// from its own directory), and the supervisor itself.
package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gondolin/gondolin/contexts"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/termio"
	"github.com/gondolin/gondolin/sessions"
)

// Exit codes gondolin itself uses (a guest command's own code passes
// through exec unchanged).
const (
	exitFailure = 125 // gondolin could not do what was asked
	exitUsage   = 2   // bad flags or bad input
	// exitNotFound: nothing by that name (a session, snapshot, image,
	// route or secret), so a script can tell "gone already" from "failed".
	exitNotFound = 4
)

// passesGuestCode is the annotation of the commands whose exit code is a
// guest command's (exec, bash, attach).
const passesGuestCode = "gondolin-passes-guest-code"

// guestCode marks c as one whose exit code is a guest command's.
func guestCode(c *cobra.Command) *cobra.Command {
	if c.Annotations == nil {
		c.Annotations = map[string]string{}
	}
	c.Annotations[passesGuestCode] = "yes"
	return c
}

// exitError carries an exit code through cobra.
type exitError struct {
	code int
	err  error // nil: exit quietly (the guest command's own status)
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

func usageError(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// Run executes gondolin with args and returns the process exit code.
func Run(args []string) int {
	root := newRoot()
	root.SetArgs(args)
	c, err := root.ExecuteC()
	if err == nil {
		return 0
	}
	code := exitCode(err)
	var ee *exitError
	carried := errors.As(err, &ee) // a code chosen here or the guest's
	if !carried && code == exitNotFound && c != nil && c.Annotations[passesGuestCode] != "" {
		// The guest command's own code could be 4: here gondolin's
		// failures, whatever their class, are 125 (docker's habit).
		code = exitFailure
	}
	if carried && ee.err == nil {
		return code // said already (a guest command's own code)
	}
	fmt.Fprintf(os.Stderr, "gondolin: %s\n", oneLine(err))
	return code
}

// exitCode is the one mapping of an error to gondolin's exit code: an
// exitError's own, 2 for bad input of any class invalid and 4 for a name
// of class not found (found here or by the supervisor), 125 for the rest.
func exitCode(err error) int {
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, errdefs.ErrInvalid), strings.HasPrefix(err.Error(), "unknown command"): // cobra's own usage error
		return exitUsage
	case errors.Is(err, errdefs.ErrNotFound):
		return exitNotFound
	}
	return exitFailure
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "gondolin",
		Short: "Run untrusted commands in disposable Linux micro-VMs",
		Long: `gondolin runs commands in disposable Linux micro-VMs.

  gondolin exec -- uname -a     run one command in a fresh VM
  gondolin bash                 a shell in a new session (Ctrl-] detaches)
  gondolin list                 sessions; gondolin attach ID brings one back
  gondolin image build          build the default guest image

State lives in $GONDOLIN_HOME (default ~/.local/share/gondolin).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError("unknown command %q (see: gondolin --help)", args[0])
			}
			return nil
		},
		// Alone on a terminal, gondolin opens its dashboard; piped, it
		// prints its help.
		RunE: func(c *cobra.Command, args []string) error {
			if termio.IsTerminal(os.Stdin) && termio.IsTerminal(os.Stdout) {
				return runDashboard()
			}
			return c.Help()
		},
	}
	chosen = contextChoice{} // a new command line: its context is read anew
	root.PersistentFlags().StringVar(&contextFlag, "context", "", "the machine to act on: a context from gondolin context ls (default $"+contexts.EnvContext+", else the one chosen by gondolin context use, else this machine)")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError("%v (see: %s --help)", err, c.CommandPath())
	})
	root.Version = buildVersion().String()
	root.SetVersionTemplate("{{.Version}}\n")
	root.AddCommand(newVersionCmd(), guestCode(newExecCmd()), newCpCmd(), guestCode(newBashCmd()), guestCode(newAttachCmd()), newListCmd(), newInspectCmd(), newStopCmd(), newRmCmd(), newLogsCmd(), newImageCmd(), newSupervisorCmd(), newUICmd(), newPolicyCmd(), newEventsCmd(), newSnapshotCmd(), newIngressCmd(), newContextCmd())
	for _, c := range root.Commands() {
		c.SetFlagErrorFunc(root.FlagErrorFunc())
	}
	addCompletions(root)
	return root
}

// runtime opens gondolin's state, which is this machine's: a command
// that needs it is refused when the context is on another one.
func runtime() (*sessions.Runtime, error) {
	if err := hereOnly(); err != nil {
		return nil, err
	}
	home, err := layout.DefaultHome()
	if err != nil {
		return nil, err
	}
	return sessions.NewRuntime(home)
}

// contextFlag is --context, on every command.
var contextFlag string

// selectedContext is the context the command uses (--context,
// GONDOLIN_CONTEXT, the stored choice, or the default: this machine).
func selectedContext() (contexts.Context, error) {
	// Read once per command line (a command asks several times);
	// newRoot starts each one afresh.
	if chosen.done {
		return chosen.ctx, chosen.err
	}
	home, err := layout.DefaultHome()
	if err != nil {
		return contexts.Context{}, err
	}
	c, err := contexts.Open(home).Selected(contextFlag, os.Getenv)
	chosen = contextChoice{true, c, err}
	return c, err
}

// chosen is selectedContext's answer for this command.
var chosen contextChoice

type contextChoice struct {
	done bool
	ctx  contexts.Context
	err  error
}

// remote reports whether the command's context is on another machine.
func remote() bool {
	c, err := selectedContext()
	return err == nil && c.Remote()
}

// hereOnly refuses, for a context on another machine, what acts on this
// machine's files (the image store, a snapshot by its disk path).
func hereOnly() error {
	c, err := selectedContext()
	if err != nil {
		return err
	}
	if c.Remote() {
		return usageError("this command acts on this machine's files, and context %s is on %s: run it there (ssh), or with --context default", c.Name, c.Host)
	}
	return nil
}

// dialSupervisor connects to the home's supervisor, starting it when
// start is set.
func dialSupervisor(start bool) (*sessions.Client, error) {
	c, _, err := dialSupervisorInfo(start)
	return c, err
}

// remoteClient is a client of context c's supervisor, on another
// machine: each connection a dial-stdio over ssh, which starts the
// supervisor there when start is set. It connects when first used.
func remoteClient(c contexts.Context, start bool) *sessions.Client {
	return sessions.NewDialClient(func(ctx context.Context) (net.Conn, error) { return c.Dial(ctx, !start) })
}

// dialSupervisorInfo is dialSupervisor, with what its ping said.
func dialSupervisorInfo(start bool) (*sessions.Client, sessions.PingInfo, error) {
	home, err := layout.DefaultHome()
	if err != nil {
		return nil, sessions.PingInfo{}, err
	}
	sel, err := selectedContext()
	if err != nil {
		return nil, sessions.PingInfo{}, err
	}
	if sel.Remote() {
		// No ping first: every connection the dialer makes has checked
		// its far supervisor (dial-stdio's greeting, or the forward's
		// ping), and starts it unless told not to; a failure comes
		// back from the first request, in one line. What a ping would
		// say (network namespace, accelerator) is the far machine's,
		// not this command's to compare.
		return remoteClient(sel, start), sessions.PingInfo{}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	return sessions.ConnectInfo(ctx, home, sessions.ConnectOptions{Start: start})
}

// withSupervisor is a command's RunE that runs run with a client of the
// home's supervisor (started on demand when start is set).
func withSupervisor(start bool, run func(c *cobra.Command, client *sessions.Client, args []string) error) func(*cobra.Command, []string) error {
	return func(c *cobra.Command, args []string) error {
		client, err := dialSupervisor(start)
		if err != nil {
			return err
		}
		return run(c, client, args)
	}
}

// subcommandArgs is the Args of a command that only groups others: a
// word that names none of them is a usage error, not a reason for help.
// (Cobra shows a group's help for any word unless the group runs.)
func subcommandArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError("unknown command %q for %s (see: %s --help)", args[0], c.CommandPath(), c.CommandPath())
	}
	return nil
}

// showHelp is the RunE of a group: alone, it shows its help.
func showHelp(c *cobra.Command, args []string) error { return c.Help() }

// noArgs rejects positional arguments with a usage error.
func noArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError("%s takes no arguments, got %q", commandName(c), args[0])
	}
	return nil
}

// commandName is c's path without the program's name, which Run already
// puts before every error ("gondolin: image tag needs ...").
func commandName(c *cobra.Command) string {
	return strings.TrimPrefix(c.CommandPath(), c.Root().Name()+" ")
}

func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError("%s needs %s (see: %s --help)", commandName(c), what, c.CommandPath())
		}
		return nil
	}
}

// atLeastOne wants one or more positional arguments.
func atLeastOne(what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) == 0 {
			return usageError("%s needs %s", c.Name(), what)
		}
		return nil
	}
}
