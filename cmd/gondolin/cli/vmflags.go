package cli

import (
	"os"
	"strings"

	"github.com/gondolin/gondolin/netpolicy"
	"github.com/gondolin/gondolin/sessions"
	"github.com/spf13/pflag"
)

// vmFlags are the flags every command that creates a VM shares, read
// into the builder the dashboard's form uses too.
type vmFlags struct {
	sessions.SpecFlags
}

func (f *vmFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.Image, "image", "", "guest image (name:tag, name, or image ID; default $GONDOLIN_DEFAULT_IMAGE or default:latest)")
	fs.StringArrayVar(&f.Env, "env", nil, "set an environment variable in the guest, KEY=VALUE (repeatable; not for secrets)")
	fs.StringVar(&f.Cwd, "cwd", "", "working directory in the guest")
	fs.IntVar(&f.CPUs, "cpus", 0, "virtual CPUs (default $GONDOLIN_CPUS or 1)")
	fs.StringVar(&f.Memory, "memory", "", "guest memory, e.g. 512M or 2G (default $GONDOLIN_MEMORY or 256M)")
	fs.BoolVar(&f.Cold, "cold", false, "boot the image instead of cloning its saved template")
	fs.StringArrayVar(&f.HostFS, "mount-hostfs", nil, "HOST:GUEST[:ro]: mount a host directory in the guest, read-write or read-only (repeatable); with a --context on another machine, HOST is an absolute path on that machine")
	fs.StringArrayVar(&f.MemFS, "mount-memfs", nil, "GUEST: a memory filesystem at this guest path, gone with the VM (repeatable)")
	fs.StringArrayVar(&f.Net.AllowHost, "allow-host", nil, "allow HTTP(S) to this host pattern, * wildcards (repeatable; default: any public host)")
	fs.StringArrayVar(&f.Net.HostSecret, "host-secret", nil, "NAME[:url]@HOST[,HOST...][=VALUE]: the guest sees a placeholder in $NAME; the host puts the value (from the host env when omitted) into request headers to those hosts only (:url: the URL too). =VALUE lands in argv and your shell history: prefer the env or --host-secret-file")
	fs.StringArrayVar(&f.Net.HostSecretFile, "host-secret-file", nil, "NAME[:url]@HOST[,HOST...]=PATH: as --host-secret, the value read from a file (- for standard input)")
	fs.StringVar(&f.Net.DNS, "dns", "", "DNS mode: synthetic (default), trusted or open")
	fs.StringArrayVar(&f.Net.DNSTrustedServer, "dns-trusted-server", nil, "resolver for --dns trusted (default: the host's)")
	fs.StringArrayVar(&f.Net.TCPMap, "tcp-map", nil, "GUEST_HOST[:PORT]=UPSTREAM_HOST:PORT: forward raw TCP to an explicit upstream (an internal upstream given as an IP or a --resolve pin needs no --allow-internal: the map opens that host:port only)")
	fs.BoolVar(&f.Net.DisableWebSockets, "disable-websockets", false, "refuse WebSocket upgrades")
	fs.StringArrayVar(&f.Net.AllowInternal, "allow-internal", nil, "CIDR[:PORT[-PORT]]: lift internal-range blocking for this range, on these ports only when given, e.g. 127.0.0.1/32:8080, 10.0.0.0/8:5432-5433, [::1]/128:8080 (local work and tests)")
	fs.StringArrayVar(&f.Net.Resolve, "resolve", nil, "HOST=IP: pin the host-side resolution of a name (as curl's --resolve)")
	fs.BoolVar(&f.NoNetwork, "no-network", false, "give the VM no network interface at all")
	fs.StringArrayVar(&f.Net.SSHAllowHost, "ssh-allow-host", nil, "[USER@]HOST[:PORT]: allow git over SSH to this host, * wildcards; the key stays on the host. Only git-upload-pack, git-receive-pack and git-upload-archive with one repository path pass; the host logs in as USER (default: a matching --ssh-credential's user, else git) and the guest must use that name")
	fs.StringArrayVar(&f.Net.SSHAllowExec, "ssh-allow-exec", nil, "[USER@]HOST[:PORT]: as --ssh-allow-host, and ANY command passes: the guest gets a command line on the upstream as that user (still no shell, terminal, sftp or forwarding)")
	fs.StringVar(&f.Net.SSHAgent, "ssh-agent", "", "authenticate upstream SSH with an ssh-agent: --ssh-agent alone uses $SSH_AUTH_SOCK, --ssh-agent=PATH that socket (the value needs the =)")
	fs.Lookup("ssh-agent").NoOptDefVal = netpolicy.SSHAgentFromEnv
	fs.StringArrayVar(&f.Net.SSHKnownHosts, "ssh-known-hosts", nil, "OpenSSH known_hosts file that upstream host keys must match (default ~/.ssh/known_hosts when it exists)")
	fs.StringArrayVar(&f.Net.SSHCredential, "ssh-credential", nil, "[USER@]HOST[:PORT]=KEY_PATH[,passphrase-env=ENV]: a host-side key for upstream SSH logins (as USER only, when given; USER is then the login name unless the --ssh-allow-host rule names one)")
	groupVMFlags(fs)
}

// checkCommand refuses a command line where --ssh-agent, given alone,
// is followed by what reads as its socket: the flag's value goes with
// '=' (--ssh-agent=PATH), and the separate word would be run as the
// command.
func (f *vmFlags) checkCommand(args []string) error {
	if f.Net.SSHAgent != netpolicy.SSHAgentFromEnv || len(args) == 0 {
		return nil
	}
	st, err := os.Stat(args[0])
	if err == nil && st.Mode()&os.ModeSocket != 0 || strings.HasSuffix(args[0], ".sock") {
		return usageError("--ssh-agent takes its socket as --ssh-agent=%s (alone it means $SSH_AUTH_SOCK, and %q would be the command)", args[0], args[0])
	}
	return nil
}

// newVMOnly lists the flags of fs that shape a new VM and were given:
// --env and --cwd apply to any command, the rest only to a VM being made.
func newVMOnly(fs *pflag.FlagSet) []string {
	var given []string
	var probe vmFlags
	names := pflag.NewFlagSet("probe", pflag.ContinueOnError)
	probe.register(names)
	fs.Visit(func(fl *pflag.Flag) {
		if names.Lookup(fl.Name) != nil && fl.Name != "env" && fl.Name != "cwd" {
			given = append(given, "--"+fl.Name)
		}
	})
	return given
}

func (f *vmFlags) spec() (*sessions.Spec, error) {
	f.Elsewhere = remote() // its supervisor checks the host directories
	if f.Elsewhere && len(f.Net.SSHAllowHost)+len(f.Net.SSHAllowExec)+len(f.Net.SSHCredential)+len(f.Net.SSHKnownHosts) > 0 || f.Elsewhere && f.Net.SSHAgent != "" {
		// Their keys, agent socket and known_hosts are files of this
		// machine, which the far supervisor would open as its own.
		return nil, usageError("git over ssh (--ssh-allow-host and the --ssh-* flags) is not available through a context on another machine yet: its keys and known_hosts would be that machine's files, not these")
	}
	return f.Build(os.Getenv)
}
