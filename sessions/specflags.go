package sessions

import (
	"os"
	"path/filepath"
	"strconv"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/mounts"
	"github.com/gondolin/gondolin/netpolicy"
)

// SpecFlags is a Spec as the user typed it, in the CLI's flags or the
// dashboard's new-session form. Build is the one place such input
// becomes a Spec, so both front ends accept and refuse the same things
// with the same messages.
type SpecFlags struct {
	Image     string
	Env       []string // KEY=VALUE
	Cwd       string
	CPUs      int
	Memory    string // as ParseMemory reads it; "" is the default
	Name      string
	Cold      bool
	NoNetwork bool
	Net       netpolicy.Flags
	HostFS    []string // --mount-hostfs HOST:GUEST[:ro]
	MemFS     []string // --mount-memfs GUEST
	// Elsewhere: the VM runs on another machine (a context), whose
	// supervisor checks the host directories; here only their syntax
	// is.
	Elsewhere bool
}

// Build checks the input and returns the Spec it describes. getenv
// supplies secret values, SSH passphrases and $SSH_AUTH_SOCK (os.Getenv
// in the CLI). Every error is an errdefs.FieldError naming the flag to
// fix; host directories and SSH files are checked here, on the machine
// the user typed them on.
func (f SpecFlags) Build(getenv func(string) string) (*Spec, error) {
	if err := f.shapeFromEnv(getenv); err != nil {
		return nil, err
	}
	spec := &Spec{Image: f.Image, Env: f.Env, Cwd: f.Cwd, CPUs: f.CPUs, Name: f.Name, Cold: f.Cold, NoNetwork: f.NoNetwork}
	parseHostFS := mounts.ParseHostFS
	if f.Elsewhere {
		parseHostFS = mounts.ParseHostFSElsewhere
	}
	if err := spec.parseMounts(f.HostFS, f.MemFS, parseHostFS); err != nil {
		return nil, err
	}
	if f.Net.Set() {
		if f.NoNetwork {
			return nil, fieldf("--no-network", "--no-network cannot be combined with network policy flags")
		}
		net := f.Net
		if len(net.SSHAllowHost)+len(net.SSHAllowExec) > 0 && len(net.SSHKnownHosts) == 0 {
			// No trust on first use: the user's own known hosts, if any.
			if home, err := os.UserHomeDir(); err == nil {
				if kh := filepath.Join(home, ".ssh", "known_hosts"); fileExists(kh) {
					net.SSHKnownHosts = []string{kh}
				}
			}
		}
		p, err := net.Policy(getenv)
		if err != nil {
			return nil, err // of class invalid; names its flag when it can
		}
		spec.Policy = &p
	}
	if f.Memory != "" {
		mib, err := ParseMemory(f.Memory)
		if err != nil {
			return nil, err
		}
		spec.MemoryMiB = mib
	}
	if f.Elsewhere {
		return spec, spec.validate(false)
	}
	return spec, spec.Validate()
}

// shapeFromEnv fills in the CPUs and memory the user left open from
// GONDOLIN_CPUS and GONDOLIN_MEMORY: a size set once for every command.
// A bad value is refused by its variable's name, not a flag's.
func (f *SpecFlags) shapeFromEnv(getenv func(string) string) error {
	if v := getenv(layout.EnvCPUs); f.CPUs == 0 && v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 64 {
			return fieldf(layout.EnvCPUs, "%s=%q: use 1 to 64 CPUs (or unset it for 1)", layout.EnvCPUs, v)
		}
		f.CPUs = n
	}
	if v := getenv(layout.EnvMemory); f.Memory == "" && v != "" {
		if _, err := ParseMemory(v); err != nil {
			return fieldf(layout.EnvMemory, "%s=%q: use a size from 64M to 1T, such as 512M or 2G (or unset it for 256M)", layout.EnvMemory, v)
		}
		f.Memory = v
	}
	return nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
