package sessions

import (
	"os"
	"path/filepath"

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
}

// Build checks the input and returns the Spec it describes. getenv
// supplies secret values, SSH passphrases and $SSH_AUTH_SOCK (os.Getenv
// in the CLI). Every error is an errdefs.FieldError naming the flag to
// fix; host directories and SSH files are checked here, on the machine
// the user typed them on.
func (f SpecFlags) Build(getenv func(string) string) (*Spec, error) {
	spec := &Spec{Image: f.Image, Env: f.Env, Cwd: f.Cwd, CPUs: f.CPUs, Name: f.Name, Cold: f.Cold, NoNetwork: f.NoNetwork}
	if err := spec.ParseMounts(f.HostFS, f.MemFS); err != nil {
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
	return spec, spec.Validate()
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
