package sessions

import (
	"os"

	"regexp"
	"strconv"
	"strings"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/mounts"
	"github.com/gondolin/gondolin/netpolicy"
)

// Spec is everything that describes a VM to create.
type Spec struct {
	Image     string   `json:"image"`
	CPUs      int      `json:"cpus,omitempty"`
	MemoryMiB int      `json:"memory_mib,omitempty"`
	Env       []string `json:"env,omitempty"`
	Cwd       string   `json:"cwd,omitempty"`
	Name      string   `json:"name,omitempty"`
	// Cold boots the image instead of cloning its saved template.
	Cold bool `json:"cold,omitempty"`
	// NoNetwork gives the VM no NIC at all.
	NoNetwork bool `json:"no_network,omitempty"`
	// Policy is the network policy; nil means the default (public HTTP
	// and HTTPS to any host). Secret values never serialise.
	Policy *netpolicy.Policy `json:"policy,omitempty"`
	// Mounts are host directories (read-write or read-only) and memory
	// filesystems to mount in the guest.
	Mounts []mounts.Spec `json:"mounts,omitempty"`
}

// shape is what of spec a template depends on: the image and the VM's
// size and devices. Nothing else (policy, secrets, mounts) leaves with it.
func (s Spec) shape() Spec {
	return Spec{Image: s.Image, CPUs: s.CPUs, MemoryMiB: s.MemoryMiB, NoNetwork: s.NoNetwork}
}

// ParseMounts reads --mount-hostfs HOST:GUEST[:ro] and --mount-memfs
// GUEST values into spec.Mounts, checking them together (a guest path
// used twice, or one inside another, is refused). Host directories must
// exist now: a bad one is an error before anything boots.
func (s *Spec) ParseMounts(hostfs, memfs []string) error {
	return s.parseMounts(hostfs, memfs, mounts.ParseHostFS)
}

func (s *Spec) parseMounts(hostfs, memfs []string, parseHostFS func(string) (mounts.Spec, error)) error {
	for _, v := range hostfs {
		m, err := parseHostFS(v)
		if err != nil {
			return errdefs.Field("--mount-hostfs", err)
		}
		s.Mounts = append(s.Mounts, m)
	}
	for _, v := range memfs {
		m, err := mounts.ParseMemFS(v)
		if err != nil {
			return errdefs.Field("--mount-memfs", err)
		}
		s.Mounts = append(s.Mounts, m)
	}
	if err := mounts.Check(s.Mounts); err != nil {
		return errdefs.Field("--mount-hostfs", err)
	}
	return nil
}

// hostMounts are the mounts a host server must serve.
func (s *Spec) hostMounts() []mounts.Spec {
	var out []mounts.Spec
	for _, m := range s.Mounts {
		if !m.Memory {
			out = append(out, m)
		}
	}
	return out
}

// policy returns the spec's network policy or the default one.
func (s *Spec) policy() netpolicy.Policy {
	if s.Policy == nil {
		return netpolicy.DefaultPolicy()
	}
	return s.Policy.Clone()
}

var (
	envKey   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	nameRule = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)
)

// Validate checks a Spec; errors wrap errdefs.ErrInvalid and name the flag.
func (s *Spec) Validate() error { return s.validate(true) }

// validate is Validate; here says whether the host directories are on
// this machine, to be checked (the client of another machine's
// supervisor leaves them to it).
func (s *Spec) validate(here bool) error {
	if s.CPUs < 0 || s.CPUs > 64 {
		return fieldf("--cpus", "--cpus %d: use 1 to 64", s.CPUs)
	}
	if s.MemoryMiB != 0 && (s.MemoryMiB < 64 || s.MemoryMiB > 1<<20) {
		return fieldf("--memory", "--memory %dM: use 64M to 1T", s.MemoryMiB)
	}
	for _, kv := range s.Env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || !envKey.MatchString(k) {
			return fieldf("--env", "--env %q: use KEY=VALUE with KEY made of letters, digits and _", kv)
		}
		if strings.ContainsRune(kv, 0) {
			return fieldf("--env", "--env %q: NUL byte in value", k)
		}
	}
	if s.Cwd != "" && !strings.HasPrefix(s.Cwd, "/") {
		return fieldf("--cwd", "--cwd %q: use an absolute guest path", s.Cwd)
	}
	if s.Policy != nil {
		if s.NoNetwork {
			return fieldf("--no-network", "--no-network cannot be combined with network policy flags")
		}
		if err := s.Policy.Validate(); err != nil {
			return err // of class invalid, naming its flag
		}
	}
	if len(s.Mounts) > 0 {
		if err := mounts.Check(s.Mounts); err != nil {
			return errdefs.Field("--mount-hostfs", err)
		}
		for _, m := range s.Mounts {
			if m.Memory || !here {
				continue
			}
			if st, err := os.Stat(m.HostPath); err != nil || !st.IsDir() {
				return fieldf("--mount-hostfs", "--mount-hostfs %s: the host directory %s is not there", m.GuestPath, m.HostPath)
			}
		}
	}
	if s.Name != "" && !nameRule.MatchString(s.Name) {
		return fieldf("--name", "--name %q: use letters, digits, '.', '_' and '-' (at most 63, starting with a letter or digit)", s.Name)
	}
	return nil
}

// ParseMemory reads a memory size: a number of MiB, or a number with a
// K, M, G or T suffix (binary units, optional trailing B or iB).
func ParseMemory(s string) (int, error) {
	orig := s
	s = strings.TrimSpace(strings.ToUpper(s))
	s = strings.TrimSuffix(strings.TrimSuffix(s, "IB"), "B")
	mult := 1.0 / 1024 // KiB in MiB
	unit := s[max(len(s)-1, 0):]
	switch unit {
	case "K":
	case "M":
		mult = 1
	case "G":
		mult = 1024
	case "T":
		mult = 1024 * 1024
	default:
		unit = ""
		mult = 1
	}
	n, err := strconv.ParseFloat(strings.TrimSuffix(s, unit), 64)
	if err != nil || n <= 0 || n != n {
		return 0, fieldf("--memory", "--memory %q: use a size such as 512M or 2G", orig)
	}
	mib := n * mult
	if mib < 64 || mib > 1<<20 {
		return 0, fieldf("--memory", "--memory %q: use 64M to 1T", orig)
	}
	return int(mib), nil
}
