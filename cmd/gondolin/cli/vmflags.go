package cli

import (
	"os"
	"path/filepath"

	"github.com/gondolin/gondolin/netpolicy"
	"github.com/gondolin/gondolin/sessions"
	"github.com/spf13/pflag"
)

// vmFlags are the flags every command that creates a VM shares.
type vmFlags struct {
	image     string
	env       []string
	cwd       string
	cpus      int
	memory    string
	name      string
	cold      bool
	net       netpolicy.Flags
	noNetwork bool
	hostfs    []string
	memfs     []string
}

func (f *vmFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.image, "image", "", "guest image (name:tag, name, or image ID; default $GONDOLIN_DEFAULT_IMAGE or default:latest)")
	fs.StringArrayVar(&f.env, "env", nil, "set an environment variable in the guest, KEY=VALUE (repeatable; not for secrets)")
	fs.StringVar(&f.cwd, "cwd", "", "working directory in the guest")
	fs.IntVar(&f.cpus, "cpus", 0, "virtual CPUs (default 1)")
	fs.StringVar(&f.memory, "memory", "", "guest memory, e.g. 512M or 2G (default 256M)")
	fs.BoolVar(&f.cold, "cold", false, "boot the image instead of cloning its saved template")
	fs.StringArrayVar(&f.hostfs, "mount-hostfs", nil, "HOST:GUEST[:ro]: mount a host directory in the guest, read-write or read-only (repeatable)")
	fs.StringArrayVar(&f.memfs, "mount-memfs", nil, "GUEST: a memory filesystem at this guest path, gone with the VM (repeatable)")
	fs.StringArrayVar(&f.net.AllowHost, "allow-host", nil, "allow HTTP(S) to this host pattern, * wildcards (repeatable; default: any public host)")
	fs.StringArrayVar(&f.net.HostSecret, "host-secret", nil, "NAME[:url]@HOST[,HOST...][=VALUE]: the guest sees a placeholder in $NAME; the host puts the value (from the host env when omitted) into request headers to those hosts only (:url: the URL too). =VALUE lands in argv and your shell history: prefer the env or --host-secret-file")
	fs.StringArrayVar(&f.net.HostSecretFile, "host-secret-file", nil, "NAME[:url]@HOST[,HOST...]=PATH: as --host-secret, the value read from a file (- for standard input)")
	fs.StringVar(&f.net.DNS, "dns", "", "DNS mode: synthetic (default), trusted or open")
	fs.StringArrayVar(&f.net.DNSTrustedServer, "dns-trusted-server", nil, "resolver for --dns trusted (default: the host's)")
	fs.StringArrayVar(&f.net.TCPMap, "tcp-map", nil, "GUEST_HOST[:PORT]=UPSTREAM_HOST:PORT: forward raw TCP to an explicit upstream (an internal upstream given as an IP or a --resolve pin needs no --allow-internal: the map opens that host:port only)")
	fs.BoolVar(&f.net.DisableWebSockets, "disable-websockets", false, "refuse WebSocket upgrades")
	fs.StringArrayVar(&f.net.AllowInternal, "allow-internal", nil, "CIDR[:PORT[-PORT]]: lift internal-range blocking for this range, on these ports only when given, e.g. 127.0.0.1/32:8080, 10.0.0.0/8:5432-5433, [::1]/128:8080 (local work and tests)")
	fs.StringArrayVar(&f.net.Resolve, "resolve", nil, "HOST=IP: pin the host-side resolution of a name (as curl's --resolve)")
	fs.BoolVar(&f.noNetwork, "no-network", false, "give the VM no network interface at all")
	fs.StringArrayVar(&f.net.SSHAllowHost, "ssh-allow-host", nil, "[USER@]HOST[:PORT]: allow git over SSH to this host, * wildcards; the key stays on the host. Only git-upload-pack, git-receive-pack and git-upload-archive with one repository path pass; the host logs in as USER (default: a matching --ssh-credential's user, else git) and the guest must use that name")
	fs.StringArrayVar(&f.net.SSHAllowExec, "ssh-allow-exec", nil, "[USER@]HOST[:PORT]: as --ssh-allow-host, and ANY command passes: the guest gets a command line on the upstream as that user (still no shell, terminal, sftp or forwarding)")
	fs.StringVar(&f.net.SSHAgent, "ssh-agent", "", "authenticate upstream SSH with this ssh-agent socket (alone: $SSH_AUTH_SOCK)")
	fs.Lookup("ssh-agent").NoOptDefVal = netpolicy.SSHAgentFromEnv
	fs.StringArrayVar(&f.net.SSHKnownHosts, "ssh-known-hosts", nil, "OpenSSH known_hosts file that upstream host keys must match (default ~/.ssh/known_hosts when it exists)")
	fs.StringArrayVar(&f.net.SSHCredential, "ssh-credential", nil, "[USER@]HOST[:PORT]=KEY_PATH[,passphrase-env=ENV]: a host-side key for upstream SSH logins (as USER only, when given; USER is then the login name unless the --ssh-allow-host rule names one)")
}

// networkFlagsSet reports whether any network policy flag was given.
func (f *vmFlags) networkFlagsSet() bool {
	n := f.net
	return len(n.AllowHost)+len(n.HostSecret)+len(n.HostSecretFile)+len(n.DNSTrustedServer)+len(n.TCPMap)+len(n.AllowInternal)+len(n.Resolve)+
		len(n.SSHAllowHost)+len(n.SSHAllowExec)+len(n.SSHKnownHosts)+len(n.SSHCredential) > 0 ||
		n.DNS != "" || n.DisableWebSockets || n.SSHAgent != ""
}

func (f *vmFlags) spec() (*sessions.Spec, error) {
	spec := &sessions.Spec{Image: f.image, Env: f.env, Cwd: f.cwd, CPUs: f.cpus, Name: f.name, Cold: f.cold, NoNetwork: f.noNetwork}
	if err := spec.ParseMounts(f.hostfs, f.memfs); err != nil {
		return nil, err
	}
	if f.networkFlagsSet() {
		if f.noNetwork {
			return nil, usageError("--no-network cannot be combined with network policy flags")
		}
		if len(f.net.SSHAllowHost)+len(f.net.SSHAllowExec) > 0 && len(f.net.SSHKnownHosts) == 0 {
			// No trust on first use: the user's own known hosts, if any.
			if home, err := os.UserHomeDir(); err == nil {
				if kh := filepath.Join(home, ".ssh", "known_hosts"); fileExists(kh) {
					f.net.SSHKnownHosts = []string{kh}
				}
			}
		}
		p, err := f.net.Policy(os.Getenv)
		if err != nil {
			return nil, usageError("%v", err)
		}
		spec.Policy = &p
	}
	if f.memory != "" {
		mib, err := sessions.ParseMemory(f.memory)
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
