package netpolicy

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/gondolin/gondolin/internal/errdefs"
)

// Flags holds the network flags of `gondolin exec` and `bash` as the user
// spelled them; Policy turns them into a validated Policy. Repeatable
// flags are slices in command-line order.
type Flags struct {
	AllowHost         []string // --allow-host PATTERN
	HostSecret        []string // --host-secret NAME[:url]@HOST[,HOST...][=VALUE]
	HostSecretFile    []string // --host-secret-file NAME[:url]@HOST[,HOST...]=PATH ("-": stdin)
	DNS               string   // --dns synthetic|trusted|open
	DNSTrustedServer  []string // --dns-trusted-server IP
	TCPMap            []string // --tcp-map GUEST_HOST[:PORT]=UPSTREAM_HOST:PORT
	AllowInternal     []string // --allow-internal CIDR[:PORT[-PORT]]
	Resolve           []string // --resolve HOST=IP
	DisableWebSockets bool     // --disable-websockets

	SSHAllowHost  []string // --ssh-allow-host [USER@]HOST[:PORT]
	SSHAllowExec  []string // --ssh-allow-exec [USER@]HOST[:PORT]: any command, not only git's
	SSHAgent      string   // --ssh-agent [SOCK]; SSHAgentFromEnv means $SSH_AUTH_SOCK
	SSHKnownHosts []string // --ssh-known-hosts PATH
	SSHCredential []string // --ssh-credential [USER@]HOST[:PORT]=KEY_PATH[,passphrase-env=ENV]
}

// Set reports whether any flag was given: with none, a VM gets the
// default policy.
func (f Flags) Set() bool {
	return len(f.AllowHost)+len(f.HostSecret)+len(f.HostSecretFile)+len(f.DNSTrustedServer)+len(f.TCPMap)+len(f.AllowInternal)+len(f.Resolve)+
		len(f.SSHAllowHost)+len(f.SSHAllowExec)+len(f.SSHKnownHosts)+len(f.SSHCredential) > 0 ||
		f.DNS != "" || f.DisableWebSockets || f.SSHAgent != ""
}

// Policy builds the policy the flags describe. With no --allow-host every
// public host is allowed; --dns-trusted-server without --dns implies
// trusted. getenv supplies secret values not given inline, SSH key
// passphrases and $SSH_AUTH_SOCK (os.Getenv). SSH paths are made
// absolute, and the known_hosts files and keys are read once
// (CheckSSHFiles) so that a bad one fails here.
func (f Flags) Policy(getenv func(string) string) (Policy, error) {
	var p Policy
	if err := appendParsed(&p.Allow, f.AllowHost, ParseAllowHost); err != nil {
		return Policy{}, errdefs.Field("--allow-host", err)
	}
	if len(p.Allow) == 0 {
		p.Allow = []string{"*"}
	}
	if err := appendParsed(&p.Secrets, f.HostSecret, func(s string) (Secret, error) { return ParseHostSecret(s, getenv) }); err != nil {
		return Policy{}, errdefs.Field("--host-secret", err)
	}
	stdinUsed := false
	if err := appendParsed(&p.Secrets, f.HostSecretFile, func(s string) (Secret, error) { return parseHostSecretFile(s, &stdinUsed) }); err != nil {
		return Policy{}, errdefs.Field("--host-secret-file", err)
	}
	p.DNS = DNSSynthetic
	if f.DNS != "" {
		m, err := ParseDNSMode(f.DNS)
		if err != nil {
			return Policy{}, errdefs.Field("--dns", err)
		}
		p.DNS = m
	} else if len(f.DNSTrustedServer) > 0 {
		p.DNS = DNSTrusted
	}
	if err := appendParsed(&p.DNSServers, f.DNSTrustedServer, ParseDNSServer); err != nil {
		return Policy{}, errdefs.Field("--dns-trusted-server", err)
	}
	if err := appendParsed(&p.TCPMaps, f.TCPMap, ParseTCPMap); err != nil {
		return Policy{}, errdefs.Field("--tcp-map", err)
	}
	if err := appendParsed(&p.AllowInternal, f.AllowInternal, ParseAllowInternal); err != nil {
		return Policy{}, errdefs.Field("--allow-internal", err)
	}
	if err := appendParsed(&p.Resolve, f.Resolve, ParseResolve); err != nil {
		return Policy{}, errdefs.Field("--resolve", err)
	}
	p.DisableWebSockets = f.DisableWebSockets
	if err := f.sshPolicy(&p, getenv); err != nil {
		return Policy{}, err
	}
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
	if err := p.CheckSSHFiles(); err != nil {
		return Policy{}, err
	}
	return p, nil
}

// appendParsed appends each value, parsed, to list, in order; it stops
// at the first that does not parse.
func appendParsed[T any](list *[]T, values []string, parse func(string) (T, error)) error {
	for _, s := range values {
		v, err := parse(s)
		if err != nil {
			return err
		}
		*list = append(*list, v)
	}
	return nil
}

func (f Flags) sshPolicy(p *Policy, getenv func(string) string) error {
	if err := appendParsed(&p.SSHAllow, f.SSHAllowHost, ParseSSHHost); err != nil {
		return err
	}
	if err := appendParsed(&p.SSHAllow, f.SSHAllowExec, ParseSSHExecHost); err != nil {
		return err
	}
	if sock := f.SSHAgent; sock != "" {
		if sock == SSHAgentFromEnv {
			if getenv != nil {
				sock = getenv("SSH_AUTH_SOCK")
			}
			if sock == "" || sock == SSHAgentFromEnv {
				return fmt.Errorf("%w: --ssh-agent: SSH_AUTH_SOCK is not set; start ssh-agent or give the socket path", errdefs.ErrInvalid)
			}
		}
		abs, err := filepath.Abs(expandHome(sock))
		if err != nil {
			return fmt.Errorf("%w: --ssh-agent %s: %v", errdefs.ErrInvalid, sock, err)
		}
		p.SSHAgent = abs
	}
	for _, s := range f.SSHKnownHosts {
		abs, err := filepath.Abs(expandHome(s))
		if err != nil || s == "" {
			return fmt.Errorf("%w: --ssh-known-hosts %q: want a file", errdefs.ErrInvalid, s)
		}
		p.SSHKnownHosts = append(p.SSHKnownHosts, abs)
	}
	return appendParsed(&p.SSHCredentials, f.SSHCredential, func(s string) (SSHCredential, error) { return ParseSSHCredential(s, getenv) })
}

// ParseAllowHost checks an --allow-host pattern (a host name with optional
// * wildcards, or an IP literal) and returns it in canonical form.
func ParseAllowHost(s string) (string, error) {
	pat := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), ".")
	if pat == "" {
		return "", fmt.Errorf("%w: --allow-host: empty pattern", errdefs.ErrInvalid)
	}
	if a, err := netip.ParseAddr(strings.Trim(pat, "[]")); err == nil {
		if a.Zone() != "" {
			return "", fmt.Errorf("%w: --allow-host %s: zoned addresses are not allowed", errdefs.ErrInvalid, s)
		}
		return a.String(), nil
	}
	if len(pat) > 253 {
		return "", fmt.Errorf("%w: --allow-host %.40s...: too long", errdefs.ErrInvalid, s)
	}
	for _, l := range strings.Split(pat, ".") {
		if !validLabel(strings.ReplaceAll(l, "*", "a")) {
			return "", fmt.Errorf("%w: --allow-host %q: want a host name with optional * wildcards, like *.example.com", errdefs.ErrInvalid, s)
		}
	}
	return pat, nil
}

// ParseHostSecret parses NAME[:url]@HOST[,HOST...][=VALUE]. Without
// =VALUE the value is getenv(NAME); a missing or empty variable is an
// error naming it. The url option lets the value be substituted into
// the URL path and query too (Secret.InURL); without it the value goes
// into headers only. Errors never contain the value.
func ParseHostSecret(spec string, getenv func(string) string) (Secret, error) {
	head, value, inline := strings.Cut(spec, "=")
	nameOpts, hosts, ok := strings.Cut(head, "@")
	name, opts, hasOpts := strings.Cut(nameOpts, ":")
	if !ok || name == "" || hosts == "" {
		return Secret{}, fmt.Errorf("%w: --host-secret %s: want NAME[:url]@HOST[,HOST...][=VALUE]", errdefs.ErrInvalid, head)
	}
	if !envNameRE.MatchString(name) {
		return Secret{}, fmt.Errorf("%w: --host-secret %s: %q is not a variable name", errdefs.ErrInvalid, head, name)
	}
	s := Secret{Name: name}
	if hasOpts {
		for _, o := range strings.Split(opts, ":") {
			if o != "url" {
				return Secret{}, fmt.Errorf("%w: --host-secret %s: unknown option %q; the only one is url (substitute into the URL too), as in %s:url@%s", errdefs.ErrInvalid, head, o, name, hosts)
			}
			s.InURL = true
		}
	}
	for _, h := range strings.Split(hosts, ",") {
		pat, err := ParseAllowHost(h)
		if err != nil {
			return Secret{}, fmt.Errorf("%w: --host-secret %s: host %q: want a host name with optional * wildcards", errdefs.ErrInvalid, head, h)
		}
		s.Hosts = append(s.Hosts, pat)
	}
	if !inline {
		if getenv != nil {
			value = getenv(name)
		}
		if value == "" {
			return Secret{}, fmt.Errorf("%w: --host-secret %s: environment variable %s is not set; export it or write %s=VALUE", errdefs.ErrInvalid, head, name, head)
		}
	} else if value == "" {
		return Secret{}, fmt.Errorf("%w: --host-secret %s: empty value", errdefs.ErrInvalid, head)
	}
	s.Value = NewSecretValue(value)
	return s, nil
}

// maxSecretFile bounds a secret read from a file: a token, not a disk.
const maxSecretFile = 64 << 10

// secretStdin is where --host-secret-file NAME@HOST=- reads (a variable
// for tests).
var secretStdin io.Reader = os.Stdin

// parseHostSecretFile parses NAME[:url]@HOST[,HOST...]=PATH and reads
// the value from PATH, or from standard input for "-" (once per
// command), so that it is in neither argv nor the shell's history. One
// trailing newline (as echo and editors leave) is dropped.
func parseHostSecretFile(spec string, stdinUsed *bool) (Secret, error) {
	head, path, ok := strings.Cut(spec, "=")
	if !ok || path == "" {
		return Secret{}, fmt.Errorf("%w: --host-secret-file %s: want NAME@HOST[,HOST...]=PATH (- for standard input)", errdefs.ErrInvalid, spec)
	}
	var r io.Reader
	if path == "-" {
		if *stdinUsed {
			return Secret{}, fmt.Errorf("%w: --host-secret-file %s: standard input can give one secret only", errdefs.ErrInvalid, head)
		}
		*stdinUsed = true
		r = secretStdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return Secret{}, fmt.Errorf("%w: --host-secret-file %s: %v", errdefs.ErrInvalid, head, err)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxSecretFile+1))
	switch {
	case err != nil:
		return Secret{}, fmt.Errorf("%w: --host-secret-file %s: read %s: %v", errdefs.ErrInvalid, head, path, err)
	case len(b) > maxSecretFile:
		return Secret{}, fmt.Errorf("%w: --host-secret-file %s: %s is longer than %d KiB; a secret value is expected", errdefs.ErrInvalid, head, path, maxSecretFile>>10)
	}
	value := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if value == "" || strings.ContainsAny(value, "\r\n\x00") {
		return Secret{}, fmt.Errorf("%w: --host-secret-file %s: %s must hold one non-empty line", errdefs.ErrInvalid, head, path)
	}
	sec, err := ParseHostSecret(head+"=x", nil)
	if err != nil {
		return Secret{}, err
	}
	sec.Value = NewSecretValue(value)
	return sec, nil
}

// ParseDNSMode parses --dns.
func ParseDNSMode(s string) (DNSMode, error) {
	switch m := DNSMode(strings.ToLower(s)); m {
	case DNSSynthetic, DNSTrusted, DNSOpen:
		return m, nil
	}
	return "", fmt.Errorf("%w: --dns %q: want synthetic, trusted or open", errdefs.ErrInvalid, s)
}

// ParseDNSServer parses --dns-trusted-server: an IP, or IP:PORT (a port is
// mostly useful in tests).
func ParseDNSServer(s string) (string, error) {
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return a.String(), nil
	}
	if ap, err := netip.ParseAddrPort(s); err == nil && ap.Port() != 0 && ap.Addr().Zone() == "" {
		return ap.String(), nil
	}
	return "", fmt.Errorf("%w: --dns-trusted-server %q: want an IP address", errdefs.ErrInvalid, s)
}

// ParseTCPMap parses GUEST_HOST[:PORT]=UPSTREAM_HOST:PORT. Without a guest
// port the guest uses the upstream's port.
func ParseTCPMap(s string) (TCPMap, error) {
	bad := func(why string) (TCPMap, error) {
		return TCPMap{}, fmt.Errorf("%w: --tcp-map %s: %s", errdefs.ErrInvalid, s, why)
	}
	guest, up, ok := strings.Cut(s, "=")
	if !ok {
		return bad("want GUEST_HOST[:PORT]=UPSTREAM_HOST:PORT")
	}
	uhost, uport, err := net.SplitHostPort(up)
	if err != nil {
		return bad("upstream needs HOST:PORT")
	}
	upn, err := strconv.ParseUint(uport, 10, 16)
	if err != nil || upn == 0 {
		return bad("bad upstream port " + strconv.Quote(uport))
	}
	uname, uip, err := NormalizeHost(uhost)
	if err != nil {
		return bad("bad upstream host " + strconv.Quote(uhost))
	}
	m := TCPMap{Upstream: net.JoinHostPort(canonicalHost(uname, uip), uport), GuestPort: uint16(upn)}
	ghost := guest
	if h, p, err := net.SplitHostPort(guest); err == nil {
		gpn, err := strconv.ParseUint(p, 10, 16)
		if err != nil || gpn == 0 {
			return bad("bad guest port " + strconv.Quote(p))
		}
		ghost, m.GuestPort = h, uint16(gpn)
	}
	gname, gip, err := NormalizeHost(ghost)
	if err != nil || ghost == "" {
		return bad("bad guest host " + strconv.Quote(ghost))
	}
	m.GuestHost = canonicalHost(gname, gip)
	return m, nil
}

// ParseAllowInternal parses --allow-internal CIDR[:PORT[-PORT]]: a range
// (or a single address, taken as /32 or /128) and optionally the one
// port or the inclusive port range it is lifted for; without a port,
// every port. An IPv6 range takes brackets around its address when a
// port follows ([fd00::]/8:5432, [::1]:8080; [fd00::/8]:5432 is read the
// same); without brackets an IPv6 range never has a port. A CIDR with
// host bits set is refused rather than silently widened or narrowed.
func ParseAllowInternal(s string) (InternalGrant, error) {
	bad := func(format string, a ...any) (InternalGrant, error) {
		return InternalGrant{}, fmt.Errorf("%w: --allow-internal %q: %s", errdefs.ErrInvalid, s, fmt.Sprintf(format, a...))
	}
	cidr, ports, hasPorts := s, "", false
	switch {
	case strings.HasPrefix(s, "["):
		inner, rest, ok := strings.Cut(s[1:], "]")
		if !ok {
			return bad("missing ]")
		}
		if bits, ok := strings.CutPrefix(rest, "/"); ok {
			bits, ports, hasPorts = strings.Cut(bits, ":")
			inner += "/" + bits
		} else if rest != "" {
			if ports, hasPorts = strings.CutPrefix(rest, ":"); !hasPorts {
				return bad("want [IPV6]/BITS:PORT")
			}
		}
		if a, _, _ := strings.Cut(inner, "/"); !strings.Contains(a, ":") {
			return bad("brackets are for IPv6 only; write an IPv4 range like 10.1.2.3/32:5432")
		}
		cidr = inner
	case strings.Count(s, ":") == 1:
		cidr, ports, hasPorts = strings.Cut(s, ":")
	}
	var pfx netip.Prefix
	if a, err := netip.ParseAddr(cidr); err == nil && a.Zone() == "" {
		pfx = netip.PrefixFrom(a, a.BitLen())
	} else if pfx, err = netip.ParsePrefix(cidr); err != nil {
		if strings.Count(s, ":") > 1 && !strings.HasPrefix(s, "[") {
			return bad("want an IPv6 CIDR; with a port, put the address in brackets: [fd00::]/8:5432")
		}
		return bad("want CIDR[:PORT[-PORT]], like 10.1.2.3/32:5432 or [::1]/128:8080")
	}
	if pfx.Addr().Is4In6() {
		return bad("write the IPv4 range itself (an IPv4-mapped address is checked as its IPv4 address)")
	}
	if pfx != pfx.Masked() {
		return bad("host bits set; did you mean %s?", pfx.Masked())
	}
	g := InternalGrant{Prefix: pfx}
	if hasPorts {
		lo, hi, isRange := strings.Cut(ports, "-")
		from, err1 := strconv.ParseUint(lo, 10, 16)
		to, err2 := from, error(nil)
		if isRange {
			to, err2 = strconv.ParseUint(hi, 10, 16)
		}
		if err1 != nil || err2 != nil || from == 0 || to < from {
			return bad("bad port %q: want PORT or LOW-HIGH, 1 to 65535", ports)
		}
		g.FromPort, g.ToPort = uint16(from), uint16(to)
	}
	return g, nil
}

// ParseResolve parses --resolve HOST=IP.
func ParseResolve(s string) (ResolvePin, error) {
	host, ipStr, ok := strings.Cut(s, "=")
	if !ok {
		return ResolvePin{}, fmt.Errorf("%w: --resolve %s: want HOST=IP", errdefs.ErrInvalid, s)
	}
	name, hip, err := NormalizeHost(host)
	if err != nil || hip.IsValid() || strings.Contains(host, ":") {
		return ResolvePin{}, fmt.Errorf("%w: --resolve %s: %q is not a host name", errdefs.ErrInvalid, s, host)
	}
	ip, err := netip.ParseAddr(strings.Trim(ipStr, "[]"))
	if err != nil || ip.Zone() != "" {
		return ResolvePin{}, fmt.Errorf("%w: --resolve %s: %q is not an IP address", errdefs.ErrInvalid, s, ipStr)
	}
	return ResolvePin{Host: name, IP: ip}, nil
}
