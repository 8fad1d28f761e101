package netpolicy

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/gondolin/gondolin/internal/errdefs"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// DefaultSSHPort is the port of an --ssh-allow-host or --ssh-credential
// that names none.
const DefaultSSHPort = 22

// DefaultSSHUser is the upstream login name when neither the
// --ssh-allow-host rule nor a matching --ssh-credential names one: the
// name git hosting services (GitHub, GitLab, Gitea, Bitbucket) use for
// every account.
const DefaultSSHUser = "git"

// SSHAgentFromEnv is the value of Flags.SSHAgent that means "the socket in
// $SSH_AUTH_SOCK": the CLI gives it as the flag's no-argument default, so
// that `--ssh-agent` alone uses the caller's agent.
const SSHAgentFromEnv = "$SSH_AUTH_SOCK"

// SSHHost is a destination guest SSH may reach: a host pattern (see
// MatchHost) and an exact port, with the login name the host uses there
// and what the guest may run.
type SSHHost struct {
	// User is the upstream login name (--ssh-allow-host USER@HOST); empty
	// means the user of the most specific matching credential that names
	// one, else DefaultSSHUser (see Policy.sshLogin). The guest must log
	// in with that same name; it never chooses another.
	User string `json:"user,omitempty"`
	Host string `json:"host"`
	Port uint16 `json:"port"`
	// AnyCommand (--ssh-allow-exec) lets any exec command pass, not
	// only git's (parseGitCommand): a command line on the upstream.
	AnyCommand bool `json:"any_command,omitempty"`
}

// String is the entry as the user wrote it: [USER@]HOST:PORT.
func (h SSHHost) String() string { return userPattern(h.User, h.Host, h.Port) }

// flag names the flag the entry comes from.
func (h SSHHost) flag() string {
	if h.AnyCommand {
		return "--ssh-allow-exec"
	}
	return "--ssh-allow-host"
}

// SSHCredential is a private key the host uses to log in to matching SSH
// upstreams on the guest's behalf. Only its path is stored: the key is
// read from disk each time it is needed and never leaves the host process.
type SSHCredential struct {
	// User restricts the credential to upstream logins as this user
	// (git@github.com), and names the login when the --ssh-allow-host
	// rule does not (see Policy.sshLogin); empty matches every login.
	User string `json:"user,omitempty"`
	Host string `json:"host"` // pattern, see MatchHost
	Port uint16 `json:"port"`
	// Key is the absolute host path of an OpenSSH, PKCS#1, PKCS#8 or
	// SEC1 private key.
	Key string `json:"key"`
	// PassphraseEnv names the host environment variable the passphrase
	// was read from, so that errors can say which one to set.
	PassphraseEnv string `json:"passphrase_env,omitempty"`
	// Passphrase unlocks Key. Like a secret's value it lives in memory
	// only (it never serialises) and is lost with the supervisor.
	Passphrase SecretValue `json:"-"`
}

// ID names the credential as the user wrote it: [USER@]HOST:PORT. It keys
// SSHPassphrases and appears in events and errors (the key path does not).
func (c SSHCredential) ID() string { return userPattern(c.User, c.Host, c.Port) }

// String shows the credential without its passphrase.
func (c SSHCredential) String() string {
	s := c.ID() + "=" + c.Key
	if c.PassphraseEnv != "" {
		s += ",passphrase-env=" + c.PassphraseEnv
	}
	return s
}

func joinPattern(host string, port uint16) string {
	return net.JoinHostPort(host, strconv.Itoa(int(port)))
}

// userPattern is [USER@]HOST:PORT, as --ssh-allow-host and
// --ssh-credential spell an entry.
func userPattern(user, host string, port uint16) string {
	s := joinPattern(host, port)
	if user != "" {
		s = user + "@" + s
	}
	return s
}

// ParseSSHHost parses --ssh-allow-host [USER@]HOST[:PORT] (port 22 by
// default; an IPv6 literal with a port goes in brackets). USER is the
// upstream login name (see SSHHost.User).
func ParseSSHHost(s string) (SSHHost, error) {
	return parseSSHHost("--ssh-allow-host", s)
}

// ParseSSHExecHost parses --ssh-allow-exec [USER@]HOST[:PORT]: as
// --ssh-allow-host, and any command passes (SSHHost.AnyCommand).
func ParseSSHExecHost(s string) (SSHHost, error) {
	h, err := parseSSHHost("--ssh-allow-exec", s)
	h.AnyCommand = err == nil
	return h, err
}

func parseSSHHost(flag, s string) (SSHHost, error) {
	var h SSHHost
	dest := s
	if user, hp, ok := strings.Cut(s, "@"); ok {
		if !validSSHUser(user) {
			return SSHHost{}, fmt.Errorf("%w: %s %s: bad user name %q", errdefs.ErrInvalid, flag, s, user)
		}
		h.User, dest = user, hp
	}
	host, port, err := splitHostPattern(dest)
	if err != nil {
		return SSHHost{}, fmt.Errorf("%w: %s %s: %v", errdefs.ErrInvalid, flag, s, err)
	}
	h.Host, h.Port = host, port
	return h, nil
}

// splitHostPattern splits HOST[:PORT] where HOST is a pattern, checks
// both halves and returns the canonical pattern.
func splitHostPattern(s string) (string, uint16, error) {
	host, port := s, uint16(DefaultSSHPort)
	if h, p, err := net.SplitHostPort(s); err == nil {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return "", 0, fmt.Errorf("bad port %q", p)
		}
		host, port = h, uint16(n)
	} else if strings.Count(s, ":") == 1 {
		return "", 0, errors.New("want HOST[:PORT]")
	}
	pat, err := ParseAllowHost(host)
	if err != nil {
		return "", 0, errors.New("want a host name with optional * wildcards, or an IP address")
	}
	return pat, port, nil
}

// ParseSSHCredential parses --ssh-credential
// [USER@]HOST[:PORT]=KEY_PATH[,passphrase-env=ENV]. The key path is made
// absolute (the supervisor runs elsewhere); the passphrase is read with
// getenv now, since only the CLI has the user's environment. Errors never
// contain the passphrase.
func ParseSSHCredential(s string, getenv func(string) string) (SSHCredential, error) {
	bad := func(why string) (SSHCredential, error) {
		return SSHCredential{}, fmt.Errorf("%w: --ssh-credential %s: %s", errdefs.ErrInvalid, s, why)
	}
	dest, rest, ok := strings.Cut(s, "=")
	if !ok || rest == "" {
		return bad("want [USER@]HOST[:PORT]=KEY_PATH[,passphrase-env=ENV]")
	}
	var c SSHCredential
	if user, hp, ok := strings.Cut(dest, "@"); ok {
		if !validSSHUser(user) {
			return bad(fmt.Sprintf("bad user name %q", user))
		}
		c.User, dest = user, hp
	}
	host, port, err := splitHostPattern(dest)
	if err != nil {
		return bad(err.Error())
	}
	c.Host, c.Port = host, port
	// The path is everything up to the last ",passphrase-env=", so a
	// path with commas still works.
	path := rest
	if i := strings.LastIndex(rest, ",passphrase-env="); i >= 0 {
		path, c.PassphraseEnv = rest[:i], rest[i+len(",passphrase-env="):]
		if !envNameRE.MatchString(c.PassphraseEnv) {
			return bad(fmt.Sprintf("passphrase-env %q is not a variable name", c.PassphraseEnv))
		}
		v := ""
		if getenv != nil {
			v = getenv(c.PassphraseEnv)
		}
		if v == "" {
			return bad(fmt.Sprintf("environment variable %s is not set; export it with the key's passphrase", c.PassphraseEnv))
		}
		c.Passphrase = NewSecretValue(v)
	}
	if path == "" {
		return bad("empty key path")
	}
	if c.Key, err = filepath.Abs(expandHome(path)); err != nil {
		return bad(err.Error())
	}
	return c, nil
}

// expandHome expands a leading ~/ (a path given as --flag=~/x escapes the
// shell's own expansion).
func expandHome(p string) string {
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, rest)
		}
	}
	return p
}

// validSSHUser accepts what OpenSSH accepts as a remote user name, minus
// anything that could confuse a log line: no spaces, controls or '@'.
func validSSHUser(u string) bool {
	if u == "" || len(u) > 64 {
		return false
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		if c <= ' ' || c >= 0x7f || c == '@' || c == ':' || c == '/' {
			return false
		}
	}
	return true
}

// validateSSH checks the SSH fields (Validate calls it). It does no I/O:
// CheckSSHFiles reads the files.
func (p Policy) validateSSH() error {
	for i, h := range p.SSHAllow {
		if _, err := ParseAllowHost(h.Host); err != nil || h.Port == 0 || (h.User != "" && !validSSHUser(h.User)) {
			return fmt.Errorf("%w: %s %s: want [USER@]HOST[:PORT]", errdefs.ErrInvalid, h.flag(), h)
		}
		// One destination, one login and one command rule: two that
		// differ would leave the choice to an accident of order.
		for _, o := range p.SSHAllow[:i] {
			if o.Host == h.Host && o.Port == h.Port && o != h {
				return fmt.Errorf("%w: %s and %s %s name the same destination; give it once", errdefs.ErrInvalid, o.flag()+" "+o.String(), h.flag(), h)
			}
		}
	}
	if p.SSHAgent != "" && !filepath.IsAbs(p.SSHAgent) {
		return fmt.Errorf("%w: --ssh-agent %s: want an absolute socket path", errdefs.ErrInvalid, p.SSHAgent)
	}
	for _, f := range p.SSHKnownHosts {
		if !filepath.IsAbs(f) {
			return fmt.Errorf("%w: --ssh-known-hosts %s: want an absolute path", errdefs.ErrInvalid, f)
		}
	}
	ids := map[string]bool{}
	for _, c := range p.SSHCredentials {
		switch {
		case c.User != "" && !validSSHUser(c.User):
			return fmt.Errorf("%w: --ssh-credential %s: bad user name", errdefs.ErrInvalid, c.ID())
		case c.Port == 0:
			return fmt.Errorf("%w: --ssh-credential %s: no port", errdefs.ErrInvalid, c.ID())
		case !filepath.IsAbs(c.Key):
			return fmt.Errorf("%w: --ssh-credential %s: want an absolute key path", errdefs.ErrInvalid, c.ID())
		case c.PassphraseEnv != "" && !envNameRE.MatchString(c.PassphraseEnv):
			return fmt.Errorf("%w: --ssh-credential %s: bad passphrase-env", errdefs.ErrInvalid, c.ID())
		case c.Passphrase.IsSet() && c.Passphrase.Reveal() == "":
			return fmt.Errorf("%w: --ssh-credential %s: empty passphrase", errdefs.ErrInvalid, c.ID())
		}
		if _, err := ParseAllowHost(c.Host); err != nil {
			return fmt.Errorf("%w: --ssh-credential %s: bad host", errdefs.ErrInvalid, c.ID())
		}
		if ids[c.ID()] {
			return fmt.Errorf("%w: --ssh-credential %s is given twice", errdefs.ErrInvalid, c.ID())
		}
		ids[c.ID()] = true
	}
	if len(p.SSHAllow) > 0 {
		// Said here, at the command line, rather than at the first
		// clone: without known hosts every connection would be
		// refused, and gondolin never trusts a key on first use.
		if len(p.SSHKnownHosts) == 0 {
			return fmt.Errorf("%w: --ssh-allow-host needs --ssh-known-hosts FILE to verify upstream host keys (gondolin never trusts a key on first use; ~/.ssh/known_hosts is the usual file)", errdefs.ErrInvalid)
		}
		if p.SSHAgent == "" && len(p.SSHCredentials) == 0 {
			return fmt.Errorf("%w: --ssh-allow-host needs --ssh-agent or --ssh-credential to log in upstream", errdefs.ErrInvalid)
		}
	}
	return nil
}

// CheckSSHFiles reads the known_hosts files and every credential's key
// (with its passphrase) and reports the first that cannot be used, so
// that a typo fails at the command line rather than at the first git
// clone. The keys read are dropped at once. Flags.Policy calls it; the
// supervisor may call it again on a live policy change.
func (p Policy) CheckSSHFiles() error {
	if len(p.SSHKnownHosts) > 0 {
		if _, err := knownhosts.New(p.SSHKnownHosts...); err != nil {
			return fmt.Errorf("%w: --ssh-known-hosts: %v", errdefs.ErrInvalid, err)
		}
	}
	for _, c := range p.SSHCredentials {
		if _, err := c.signer(); err != nil {
			return fmt.Errorf("%w: %v", errdefs.ErrInvalid, err)
		}
	}
	if p.SSHAgent != "" {
		if fi, err := os.Stat(p.SSHAgent); err != nil || fi.Mode().Type() != os.ModeSocket {
			return fmt.Errorf("%w: --ssh-agent: no agent socket there (is ssh-agent running? is SSH_AUTH_SOCK set?)", errdefs.ErrInvalid)
		}
	}
	return nil
}

// signer reads and decrypts the credential's key. Its errors name the
// credential, never the key's bytes or the passphrase.
func (c SSHCredential) signer() (ssh.Signer, error) {
	pem, err := os.ReadFile(c.Key)
	if err != nil {
		return nil, fmt.Errorf("--ssh-credential %s: read key: %w", c.ID(), errors.Unwrap(err))
	}
	var s ssh.Signer
	if c.Passphrase.IsSet() {
		s, err = ssh.ParsePrivateKeyWithPassphrase(pem, []byte(c.Passphrase.Reveal()))
	} else {
		s, err = ssh.ParsePrivateKey(pem)
	}
	var missing *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &missing) && c.PassphraseEnv != "":
		return nil, fmt.Errorf("--ssh-credential %s: the key's passphrase (from $%s) is not known; the supervisor forgets it when it restarts: give it again", c.ID(), c.PassphraseEnv)
	case errors.As(err, &missing):
		return nil, fmt.Errorf("--ssh-credential %s: the key is encrypted; add ,passphrase-env=VAR naming a variable that holds its passphrase", c.ID())
	case errors.Is(err, x509.IncorrectPasswordError):
		return nil, fmt.Errorf("--ssh-credential %s: wrong passphrase", c.ID())
	case err != nil:
		return nil, fmt.Errorf("--ssh-credential %s: not a usable private key (%v)", c.ID(), err)
	}
	return s, nil
}

// SSHPassphrases returns the credentials' passphrases by credential ID, to
// send from the CLI to the supervisor apart from the policy (they never
// serialise with it), as SecretValues does for secrets.
func (p Policy) SSHPassphrases() map[string]string {
	var out map[string]string
	for _, c := range p.SSHCredentials {
		if c.Passphrase.IsSet() {
			if out == nil {
				out = map[string]string{}
			}
			out[c.ID()] = c.Passphrase.Reveal()
		}
	}
	return out
}

// SetSSHPassphrases puts passphrases received apart back into the policy.
// A passphrase for a credential the policy does not have is an error.
func (p *Policy) SetSSHPassphrases(m map[string]string) error {
	for id, v := range m {
		found := false
		for i := range p.SSHCredentials {
			if p.SSHCredentials[i].ID() == id {
				p.SSHCredentials[i].Passphrase = NewSecretValue(v)
				found = true
			}
		}
		if !found {
			return fmt.Errorf("%w: a passphrase for --ssh-credential %s, which the policy does not have", errdefs.ErrInvalid, id)
		}
	}
	return nil
}

// MissingSSHPassphrases names (by ID) the credentials that need a
// passphrase the policy does not hold: after a supervisor restart, until
// it is given again, logins with those keys fail.
func (p Policy) MissingSSHPassphrases() []string {
	var out []string
	for _, c := range p.SSHCredentials {
		if c.PassphraseEnv != "" && !c.Passphrase.IsSet() {
			out = append(out, c.ID())
		}
	}
	return out
}

// sshRule decides whether guest SSH may reach host:port: the entry that
// allows it, and the rule's name for events. host is canonical
// (NormalizeHost). A Deny pattern (`gondolin policy deny`) applies to
// SSH too, by hostRule's measure: the most specific pattern wins, deny
// on a tie.
func (p *Policy) sshRule(host string, port uint16) (SSHHost, string, bool) {
	var best SSHHost
	bestScore := -1
	for _, h := range p.SSHAllow {
		if s := specificity(h.Host); s > bestScore && h.Port == port && MatchHost(h.Host, host) {
			best, bestScore = h, s
		}
	}
	if bestScore < 0 {
		return SSHHost{}, "", false
	}
	for _, pat := range p.Deny {
		if specificity(pat) >= bestScore && MatchHost(pat, host) {
			return SSHHost{}, "deny " + pat, false
		}
	}
	name := "ssh-allow "
	if best.AnyCommand {
		name = "ssh-allow-exec "
	}
	return best, name + best.String(), true
}

// sshLogin is the upstream login name for host:port under rule: the
// rule's user, else that of the most specific matching credential that
// names one (the first on a tie), else DefaultSSHUser. It is the host's
// choice: the guest's login name must equal it.
func (p *Policy) sshLogin(rule SSHHost, host string, port uint16) string {
	if rule.User != "" {
		return rule.User
	}
	user, best := DefaultSSHUser, -1
	for _, c := range p.SSHCredentials {
		if c.User != "" && c.Port == port && specificity(c.Host) > best && MatchHost(c.Host, host) {
			user, best = c.User, specificity(c.Host)
		}
	}
	return user
}

// sshCredentials returns the credentials that apply to a login as user
// at host:port, most specific host pattern first (a user-bound one before
// a catch-all of the same pattern).
func (p *Policy) sshCredentials(user, host string, port uint16) []SSHCredential {
	var out []SSHCredential
	for _, c := range p.SSHCredentials {
		if c.Port == port && (c.User == "" || c.User == user) && MatchHost(c.Host, host) {
			out = append(out, c)
		}
	}
	score := func(c SSHCredential) int {
		s := specificity(c.Host) * 2
		if c.User != "" {
			s++
		}
		return s
	}
	// Insertion sort: a handful of entries, stable for equal scores.
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && score(out[j]) > score(out[j-1]); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// sshExactNames returns the SSH allow patterns that are plain names, the
// only ones a synthetic address can be traced back to once the DNS table
// is lost (see findTCPMap).
func (p *Policy) sshExactNames() []string {
	var out []string
	for _, h := range p.SSHAllow {
		if !strings.Contains(h.Host, "*") {
			if _, err := netip.ParseAddr(h.Host); err != nil {
				out = append(out, h.Host)
			}
		}
	}
	return out
}
