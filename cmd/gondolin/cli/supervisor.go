package cli

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/termsafe"
	"github.com/gondolin/gondolin/sessions"
	"github.com/gondolin/gondolin/vm"
	"github.com/spf13/cobra"
)

func newSupervisorCmd() *cobra.Command {
	var (
		poolSize   int
		poolMemory string
	)
	c := &cobra.Command{
		Use:   "supervisor",
		Short: "Run the background supervisor that owns the VMs (started on demand)",
		Long: `Run the supervisor in the foreground. Commands that need it start it on
demand, detached, with its log in $GONDOLIN_HOME/supervisor.log. Exactly one
runs per GONDOLIN_HOME. VMs outlive it: a new supervisor adopts them.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			// Always this home's: it is what dial-stdio and every
			// command start, whatever context the user has chosen.
			home, err := layout.DefaultHome()
			if err != nil {
				return err
			}
			opts, err := sessions.PoolOptionsFromEnv()
			if err != nil {
				return err
			}
			if c.Flags().Changed("pool") {
				opts.Size = poolSize
			}
			if c.Flags().Changed("pool-memory") {
				if opts.MemoryMiB, err = sessions.ParseMemory(poolMemory); err != nil {
					return usageError("--pool-memory %s: %v", poolMemory, err)
				}
			}
			if opts.Size < 0 || opts.Size > 64 {
				return usageError("--pool: want a number of VMs from 0 to 64")
			}
			logger := log.New(os.Stderr, "", log.LstdFlags)
			return sessions.RunSupervisor(home, logger, opts)
		},
	}
	c.Flags().IntVar(&poolSize, "pool", sessions.DefaultPoolSize,
		"warm pool: VMs kept restored and paused per VM shape in use, for exec and bash to claim (0: none; env "+layout.EnvPool+")")
	c.Flags().StringVar(&poolMemory, "pool-memory", fmt.Sprintf("%dM", sessions.DefaultPoolMemoryMiB),
		"bound on the guest memory of all warm pool VMs together (env "+layout.EnvPoolMemory+")")
	var all bool
	stop := &cobra.Command{
		Use:   "stop [--all]",
		Short: "Stop the supervisor (VMs keep running; --all stops them too)",
		Args:  noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			client, home, err := runningSupervisor()
			if err != nil {
				return err
			}
			if client == nil {
				fmt.Fprintf(os.Stderr, "gondolin: no supervisor is running for %s\n", home)
				return nil // what was asked is so
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := client.StopSupervisor(ctx, all); err != nil {
				return err
			}
			return sessions.WaitStopped(ctx, home)
		},
	}
	stop.Flags().BoolVar(&all, "all", false, "stop every VM too")
	var asJSON bool
	status := &cobra.Command{
		Use:   "status [--json]",
		Short: "Show whether the supervisor runs, and what it holds",
		Long: `Show whether the supervisor runs, and what it holds. Exits 3 when no
supervisor is running (--json then prints {"running": false, "home": ...}).`,
		Args: noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			client, home, err := runningSupervisor()
			if err != nil {
				return err
			}
			if client == nil {
				if asJSON {
					printJSON(map[string]any{"running": false, "home": home})
				} else {
					fmt.Printf("no supervisor is running for %s\n", home)
				}
				return &exitError{code: exitNotRunning}
			}
			st, err := client.Status(context.Background())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(st)
			}
			fmt.Printf("supervisor %d running since %s for %s: %d sessions (%d live), %s resident itself, %s in sessions' VMs\n",
				st.PID, st.Started.Local().Format(time.DateTime), st.Home, st.Sessions, st.Live,
				humanBytes(st.RSSBytes), humanBytes(st.SessionsRSSBytes))
			for _, l := range poolLines(st.Pool) {
				fmt.Println(l)
			}
			for _, t := range st.Templates {
				fmt.Println(templateLine(t))
			}
			return nil
		},
	}
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	c.AddCommand(stop, status, newDialStdioCmd())
	return c
}

// templateLine describes one template for supervisor status.
func templateLine(t vm.TemplateInfo) string {
	what := termsafe.String(t.Label)
	if what == "" {
		what = t.Key
	}
	shape := fmt.Sprintf("%d CPU, %d MiB", t.CPUs, t.MemoryMiB)
	if !t.Network {
		shape += ", no network"
	}
	line := fmt.Sprintf("template %s (%s): %s", what, shape, t.State)
	switch t.State {
	case vm.TemplateReady:
		line += fmt.Sprintf(", built %s (boot %s, save %s, check %s)", t.Built.Local().Format(time.DateTime),
			msText(t.BootMS), msText(t.SaveMS), msText(t.VerifyMS))
	case vm.TemplateBuilding:
		line += fmt.Sprintf(" since %s", t.Built.Local().Format(time.TimeOnly))
	case vm.TemplateBroken:
		line += fmt.Sprintf(" at %s, moved aside to %s: %s", t.Broken.Local().Format(time.DateTime), t.Dir, termsafe.String(t.Reason))
	case vm.TemplateStale:
		line += " (saved by an older gondolin, or never checked: new VMs do not use it)"
	}
	return line
}

// poolLines describe the warm pool for supervisor status: a summary,
// then one line per shape.
func poolLines(p sessions.PoolStatus) []string {
	if p.Size == 0 {
		return []string{"warm pool: off (" + layout.EnvPool + "=0 or supervisor --pool 0)"}
	}
	ready, warming := 0, 0
	for _, sh := range p.Shapes {
		ready += sh.Ready
		warming += sh.Warming
	}
	head := fmt.Sprintf("warm pool: %d ready (%d per shape)", ready, p.Size)
	if warming > 0 {
		head += fmt.Sprintf(", %d warming", warming)
	}
	head += fmt.Sprintf(", %d MiB reserved of %d MiB, %s resident; %s, %d found it empty",
		p.ReservedMiB, p.MemoryMiB, humanBytes(p.RSSBytes), countText(p.Claims, "claim"), p.Misses)
	lines := []string{head}
	for _, sh := range p.Shapes {
		image := "default image"
		if sh.Image != "" {
			image = termsafe.String(sh.Image)
		}
		line := fmt.Sprintf("  %s, %s, %d MiB", image, countText(uint64(max(sh.CPUs, 0)), "CPU"), sh.MemoryMiB)
		if !sh.Network {
			line += ", no network"
		}
		line += fmt.Sprintf(": %d ready, %d warming, %s resident", sh.Ready, sh.Warming, humanBytes(sh.RSSBytes))
		if sh.Error != "" {
			line += ": last error: " + termsafe.String(sh.Error)
		}
		lines = append(lines, line)
	}
	return lines
}

// countText is "1 claim", "2 claims".
func countText(n uint64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func msText(ms int64) string {
	return (time.Duration(ms) * time.Millisecond).String()
}

// exitNotRunning is supervisor status's exit code when none runs (as an
// init script's status: "program is not running").
const exitNotRunning = 3

// runningSupervisor connects to the home's supervisor without starting
// one: a nil client (and no error) when none is running.
func runningSupervisor() (*sessions.Client, layout.Home, error) {
	// supervisor stop and status wait on and name this machine's home.
	if err := hereOnly(); err != nil {
		return nil, "", err
	}
	home, err := layout.DefaultHome()
	if err != nil {
		return nil, "", err
	}
	client, err := dialSupervisor(false)
	if errors.Is(err, errdefs.ErrUnavailable) {
		return nil, home, nil
	}
	return client, home, err
}
