package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/gondolin/gondolin/internal/termio"
	"github.com/gondolin/gondolin/sessions"
	"github.com/spf13/cobra"
)

func newBashCmd() *cobra.Command {
	var (
		vf         vmFlags
		detach     bool
		keep       bool
		label      string
		detachKeys string
		resume     string
	)
	c := &cobra.Command{
		Use:   "bash [flags] [-- CMD...]",
		Short: "Start a session: a VM with a shell you can detach from (Ctrl-])",
		Long: `Create a session and attach to a terminal running CMD (default: bash,
else sh). Ctrl-] detaches and the shell keeps running; gondolin attach
brings it back. When CMD exits the session stops, unless --keep.`,
		RunE: func(c *cobra.Command, args []string) error {
			keys, err := termio.ParseDetachKeys(detachKeys)
			if err != nil {
				return usageError("%v", err)
			}
			spec, err := vf.spec()
			if err != nil {
				return err
			}
			client, err := dialSupervisor(true)
			if err != nil {
				return err
			}
			rows, cols := termio.Size(os.Stdout)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			s, err := client.Create(ctx, sessions.CreateRequest{Spec: *spec, Command: args, Keep: keep, Label: label, Rows: rows, Cols: cols, SecretValues: spec.SecretValues(), Resume: resume})
			if err != nil {
				return err
			}
			if detach {
				fmt.Println(s.ID)
				return nil
			}
			var ptyID uint64
			if len(s.PTYs) > 0 {
				ptyID = s.PTYs[0].ID
			}
			return attachTerminal(client, s.ID, ptyID, keys)
		},
	}
	c.Flags().SetInterspersed(false)
	vf.register(c.Flags())
	c.Flags().StringVar(&vf.name, "name", "", "session name (usable wherever an ID is)")
	c.Flags().BoolVarP(&detach, "detach", "d", false, "create the session and print its ID without attaching")
	c.Flags().BoolVar(&keep, "keep", false, "keep the session running after CMD exits")
	c.Flags().StringVar(&label, "label", "", "free text shown in gondolin list")
	c.Flags().StringVar(&resume, "resume", "", "make the session from a snapshot (ID, name, or .qcow2 path) instead of an image")
	c.Flags().StringVar(&detachKeys, "detach-keys", termio.DefaultDetachKeys, "key sequence that detaches")
	return c
}
