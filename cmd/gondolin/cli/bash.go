package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/gondolin/gondolin/ingress"
	"github.com/gondolin/gondolin/internal/termio"
	"github.com/gondolin/gondolin/internal/termsafe"
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
		listen     []string
		ssh        bool
		sshAccess  sessions.SSHAccess
	)
	c := &cobra.Command{
		Use:   "bash [flags] [-- CMD...]",
		Short: "Start a session: a VM with a shell you can detach from (Ctrl-])",
		Long: `Create a session and attach to a terminal running CMD (default: bash,
else sh). Ctrl-] detaches and the shell keeps running; gondolin attach
brings it back. When CMD exits the session stops, unless --keep.`,
		Example: `  gondolin bash
  gondolin bash --name dev --keep --mount-hostfs .:/work --cwd /work
  gondolin bash --name web --detach --keep --listen 8080=80 -- python3 -m http.server 80
  gondolin bash --resume before-upgrade
  gondolin bash --ssh --name remote-edit`,
		RunE: func(c *cobra.Command, args []string) error {
			if err := vf.checkCommand(args); err != nil {
				return err
			}
			keys, err := termio.ParseDetachKeys(detachKeys)
			if err != nil {
				return usageError("%v", err)
			}
			spec, err := vf.spec()
			if err != nil {
				return err
			}
			req := sessions.CreateRequest{Spec: *spec, Command: args, Keep: keep, Label: label,
				SecretValues: spec.SecretValues(), Resume: resume}
			if spec.Policy != nil {
				req.SSHPassphrases = spec.Policy.SSHPassphrases()
			}
			for _, l := range listen {
				r, err := ingress.ParseRoute(l)
				if err != nil {
					return usageError("--listen: %v", err)
				}
				r.DisableWebSockets = vf.Net.DisableWebSockets
				req.Listen = append(req.Listen, r)
			}
			if ssh {
				req.SSH = &sshAccess
			} else if sshAccess != (sessions.SSHAccess{}) {
				return usageError("--ssh-user, --ssh-port and --ssh-listen go with --ssh")
			}
			client, err := dialSupervisor(true)
			if err != nil {
				return err
			}
			rows, cols := termio.Size(os.Stdout)
			req.Rows, req.Cols = rows, cols
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			s, err := client.Create(ctx, req)
			if err != nil {
				return err
			}
			for _, r := range s.Ingress {
				fmt.Fprintf(os.Stderr, "gondolin: %s -> guest port %d\n", termsafe.String(r.URL()), r.GuestPort)
			}
			if s.SSHCommand != "" {
				fmt.Fprintf(os.Stderr, "gondolin: log in with: %s\n", termsafe.String(s.SSHCommand))
			}
			for _, e := range s.Errors {
				fmt.Fprintf(os.Stderr, "gondolin: warning: %s\n", termsafe.String(e))
			}
			if detach {
				fmt.Println(termsafe.String(s.ID)) // the supervisor's, maybe another machine's
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
	c.Flags().StringVar(&vf.Name, "name", "", "session name (usable wherever an ID is)")
	c.Flags().BoolVarP(&detach, "detach", "d", false, "create the session and print its ID without attaching")
	c.Flags().BoolVar(&keep, "keep", false, "keep the session running after CMD exits")
	c.Flags().StringVar(&label, "label", "", "free text shown in gondolin list")
	c.Flags().StringArrayVar(&listen, "listen", nil, "[HOST:]PORT[=GUEST_PORT]: forward HTTP (and WebSockets) from a host listener (default 127.0.0.1) to a guest port")
	c.Flags().BoolVar(&ssh, "ssh", false, "open an SSH endpoint on the host that logs into the VM, and print the ssh command")
	c.Flags().StringVar(&sshAccess.User, "ssh-user", "", "user name the SSH endpoint accepts (default root)")
	c.Flags().IntVar(&sshAccess.Port, "ssh-port", 0, "SSH endpoint port (default: a free one)")
	c.Flags().StringVar(&sshAccess.Listen, "ssh-listen", "", "SSH endpoint address (default 127.0.0.1)")
	c.Flags().StringVar(&resume, "resume", "", "make the session from a snapshot (ID, name, or .qcow2 path) instead of an image; one this home did not make boots as a disk checkpoint with only this command's mounts and network policy")
	c.Flags().StringVar(&detachKeys, "detach-keys", termio.DefaultDetachKeys, "key sequence that detaches")
	setGroup(c.Flags(), groupSession, "name", "detach", "keep", "label", "resume", "detach-keys", "listen")
	setGroup(c.Flags(), groupSSH, "ssh", "ssh-user", "ssh-port", "ssh-listen")
	groupedHelp(c, vmEnv)
	return c
}
