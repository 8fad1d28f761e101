package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/gondolin/gondolin/contexts"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/termio"
)

// The commands that make a VM take some thirty flags: their help lists
// them by what they are about, in this order, rather than in one
// alphabetical block, and ends with the environment variables they read.

// groupKey is the pflag annotation that names a flag's help group.
const groupKey = "gondolin_help_group"

// Help groups, in the order the help shows them.
const (
	groupCommand = "Command"
	groupSession = "Session"
	groupVM      = "VM"
	groupMounts  = "Mount"
	groupNetwork = "Network"
	groupSecrets = "Secret"
	groupSSH     = "SSH"
)

var groupOrder = []string{groupCommand, groupSession, groupVM, groupMounts, groupNetwork, groupSecrets, groupSSH}

// setGroup puts the named flags of fs in a help group.
func setGroup(fs *pflag.FlagSet, group string, names ...string) {
	for _, n := range names {
		if err := fs.SetAnnotation(n, groupKey, []string{group}); err != nil {
			panic(err) // a flag renamed without its group: caught by TestHelpGroups
		}
	}
}

// envVar is an environment variable a command's help lists.
type envVar struct{ name, meaning string }

// vmEnv are the variables every command that makes a VM reads.
var vmEnv = []envVar{
	{layout.EnvHome, "all state (default $XDG_DATA_HOME/gondolin, else ~/.local/share/gondolin)"},
	{contexts.EnvContext, "the machine to act on, as --context (see gondolin context)"},
	{layout.EnvDefaultImage, "the image without --image (default default:latest)"},
	{layout.EnvCPUs, "virtual CPUs without --cpus (default 1)"},
	{layout.EnvMemory, "guest memory without --memory (default 256M)"},
	{layout.EnvAccel, "kvm, tcg or auto (default: KVM where a probe boot works)"},
	{layout.EnvDebug, "log the guest's boot and console to stderr"},
}

// groupedHelp makes c's usage list its flags by group, then env.
func groupedHelp(c *cobra.Command, env []envVar) {
	c.SetUsageFunc(func(c *cobra.Command) error {
		w := c.OutOrStderr()
		fmt.Fprintf(w, "Usage:\n  %s\n", c.UseLine())
		if c.Example != "" {
			fmt.Fprintf(w, "\nExamples:\n%s\n", c.Example)
		}
		width := 100
		if termio.IsTerminal(os.Stdout) {
			if _, cols := termio.Size(os.Stdout); cols > 40 {
				width = int(cols)
			}
		}
		for _, g := range append(groupOrder, "") {
			fs := pflag.NewFlagSet(g, pflag.ContinueOnError)
			c.LocalFlags().VisitAll(func(f *pflag.Flag) {
				if got := f.Annotations[groupKey]; len(got) == 1 && got[0] == g || len(got) == 0 && g == "" {
					fs.AddFlag(f)
				}
			})
			if !fs.HasFlags() {
				continue
			}
			title := g + " flags"
			if g == "" {
				title = "Other flags"
			}
			fmt.Fprintf(w, "\n%s:\n%s", title, fs.FlagUsagesWrapped(width))
		}
		if inherited := c.InheritedFlags(); inherited.HasFlags() {
			fmt.Fprintf(w, "\nGlobal flags:\n%s", inherited.FlagUsagesWrapped(width))
		}
		if len(env) > 0 {
			fmt.Fprintf(w, "\nEnvironment:\n")
			pad := 0
			for _, e := range env {
				pad = max(pad, len(e.name))
			}
			for _, e := range env {
				fmt.Fprintf(w, "  %-*s  %s\n", pad, e.name, e.meaning)
			}
		}
		return nil
	})
}

// groupVMFlags files the flags vmFlags.register made.
func groupVMFlags(fs *pflag.FlagSet) {
	setGroup(fs, groupVM, "image", "cpus", "memory", "cold", "env", "cwd")
	setGroup(fs, groupMounts, "mount-hostfs", "mount-memfs")
	setGroup(fs, groupNetwork, "allow-host", "allow-internal", "dns", "dns-trusted-server", "tcp-map", "disable-websockets", "resolve", "no-network")
	setGroup(fs, groupSecrets, "host-secret", "host-secret-file")
	setGroup(fs, groupSSH, "ssh-allow-host", "ssh-allow-exec", "ssh-agent", "ssh-known-hosts", "ssh-credential")
}
