package cli

import (
	"context"
	"fmt"
	"os"

	"github.com/gondolin/gondolin/internal/termio"
	"github.com/gondolin/gondolin/sessions"
	"github.com/spf13/cobra"
)

func newAttachCmd() *cobra.Command {
	var (
		detachKeys string
		env        []string
		cwd        string
	)
	c := &cobra.Command{
		Use:   "attach ID [--env K=V] [--cwd DIR] [-- CMD...]",
		Short: "Attach to a session's terminal (Ctrl-] detaches)",
		Long: `Without CMD, reattach to the session's most recent running terminal and
repaint its current screen; with CMD, open a new terminal running it.
Ctrl-] detaches (--detach-keys changes it, e.g. ctrl-p,ctrl-q); the
terminal keeps running. Several clients may attach to one terminal.`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) == 0 || c.ArgsLenAtDash() == 0 {
				return usageError("attach needs a session: gondolin attach ID [-- CMD...]")
			}
			if c.ArgsLenAtDash() > 1 {
				return usageError("attach takes one session before --, got %q", args[:c.ArgsLenAtDash()])
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			keys, err := termio.ParseDetachKeys(detachKeys)
			if err != nil {
				return usageError("%v", err)
			}
			if (len(env) > 0 || cwd != "") && len(args) == 1 {
				return usageError("--env and --cwd are for a new terminal: gondolin attach %s --env K=V --cwd DIR -- CMD", args[0])
			}
			client, err := dialSupervisor(true)
			if err != nil {
				return err
			}
			ref, cmdArgs := args[0], args[1:]
			var ptyID uint64
			if len(cmdArgs) > 0 {
				rows, cols := termio.Size(os.Stdout)
				p, err := client.OpenPTY(context.Background(), ref, sessions.OpenPTYRequest{Command: cmdArgs, Rows: rows, Cols: cols, Env: env, Cwd: cwd})
				if err != nil {
					return err
				}
				ptyID = p.ID
			}
			return attachTerminal(client, ref, ptyID, keys)
		},
	}
	// Flags may follow the session (attach dev --detach-keys ...); the
	// command's own flags go after --.
	c.Flags().StringVar(&detachKeys, "detach-keys", termio.DefaultDetachKeys, "key sequence that detaches")
	c.Flags().StringArrayVar(&env, "env", nil, "with CMD: set an environment variable in its terminal, KEY=VALUE (repeatable)")
	c.Flags().StringVar(&cwd, "cwd", "", "with CMD: its working directory (default: the session's)")
	return c
}

// attachTerminal joins the user's terminal to a guest terminal until the
// user detaches or the guest process exits (whose exit code becomes ours).
func attachTerminal(client *sessions.Client, ref string, ptyID uint64, detachKeys []byte) error {
	res, err := sessions.AttachTerminal(context.Background(), client, ref, ptyID, detachKeys, os.Stdin, os.Stdout)
	switch {
	case err != nil:
		return err
	case res.Detached:
		fmt.Fprintf(os.Stderr, "\r\ngondolin: detached; reattach with: gondolin attach %s\r\n", ref)
	case res.ExitCode != 0:
		return &exitError{code: res.ExitCode}
	}
	return nil
}
