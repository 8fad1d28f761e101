package netpolicy

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/gondolin/gondolin/internal/errdefs"
)

// Every parse and validation error wraps errdefs.ErrInvalid, so the CLI
// maps it to its bad-input exit code and the supervisor API to a 400.

// Policy is what one VM's network may do. It is a plain value: the CLI
// builds it from flags, the supervisor stores it (secret values are never
// serialised) and hands it to a Network (Options.Policy, then
// Network.UpdatePolicy).
type Policy struct {
	// Allow lists host patterns (see MatchHost) that HTTP and HTTPS
	// requests may reach. Empty allows nothing; ["*"] allows every
	// public host (what the CLI gives when no --allow-host is set).
	Allow []string `json:"allow,omitempty"`
	// Deny lists host patterns that are refused even when Allow matches
	// (what `gondolin policy deny` adds).
	Deny []string `json:"deny,omitempty"`
	// Secrets are substituted into requests to their hosts only.
	Secrets []Secret `json:"secrets,omitempty"`
	// DNS is how the guest's DNS queries are answered ("" = synthetic).
	DNS DNSMode `json:"dns,omitempty"`
	// DNSServers are the upstreams of trusted and open DNS, as IP or
	// IP:PORT; empty means the host's own resolvers (/etc/resolv.conf).
	DNSServers []string `json:"dns_servers,omitempty"`
	// TCPMaps forward raw TCP to explicit upstreams.
	TCPMaps []TCPMap `json:"tcp_maps,omitempty"`
	// AllowInternal lifts the internal-range block for these ranges
	// (and ports) only.
	AllowInternal []InternalGrant `json:"allow_internal,omitempty"`
	// Resolve pins the host-side resolution of names, as curl --resolve.
	Resolve []ResolvePin `json:"resolve,omitempty"`
	// DisableWebSockets refuses WebSocket upgrades.
	DisableWebSockets bool `json:"disable_websockets,omitempty"`

	// SSHAllow lists the destinations guest SSH may reach through the
	// host's SSH proxy (git over SSH). Empty: SSH flows are reset.
	SSHAllow []SSHHost `json:"ssh_allow,omitempty"`
	// SSHAgent is the host path of the ssh-agent socket used to log in
	// upstream. Like every SSH field it is host-side only: the policy
	// is never sent to the guest.
	SSHAgent string `json:"ssh_agent,omitempty"`
	// SSHKnownHosts are OpenSSH known_hosts files (host paths) that
	// upstream host keys must be in.
	SSHKnownHosts []string `json:"ssh_known_hosts,omitempty"`
	// SSHCredentials are private keys (host paths) for upstream logins,
	// tried before the agent's keys.
	SSHCredentials []SSHCredential `json:"ssh_credentials,omitempty"`
}

// DNSMode selects how guest DNS queries are answered.
type DNSMode string

const (
	// DNSSynthetic answers A queries with a synthetic address per name
	// and never sends a query out of the host.
	DNSSynthetic DNSMode = "synthetic"
	// DNSTrusted forwards well-formed ordinary queries to the trusted
	// servers (or the host's resolvers).
	DNSTrusted DNSMode = "trusted"
	// DNSOpen forwards every standard query (one question, no records
	// but OPT; see dns.go), of any type, for names the policy allows.
	DNSOpen DNSMode = "open"
)

// Secret is a value the guest may use but never see: the guest's
// environment holds Placeholder under Name, and the host puts Value in its
// place only in requests to Hosts.
type Secret struct {
	Name  string   `json:"name"`
	Hosts []string `json:"hosts"`
	// Placeholder is what the guest sees. Empty until a Network assigns
	// one; kept across policy updates and supervisor restarts so that
	// the guest's environment stays valid.
	Placeholder string `json:"placeholder,omitempty"`
	// Value is the real secret; it lives in memory only.
	Value SecretValue `json:"-"`
	// InURL lets the host substitute the value for the placeholder in
	// the URL path and query as well as in headers (--host-secret
	// NAME:url@HOSTS). Off by default: servers repeat URLs in far more
	// places than headers (error pages, redirects, logs others can
	// read), and responses are scrubbed of exact echoes only.
	InURL bool `json:"in_url,omitempty"`
}

// Spec is the secret as --host-secret spells it, without the value:
// NAME[:url]@HOST[,HOST...]. ParseHostSecret reads it back.
func (s Secret) Spec() string {
	name := s.Name
	if s.InURL {
		name += ":url"
	}
	return name + "@" + strings.Join(s.Hosts, ",")
}

// MarshalJSON writes the secret without its value, adding has_value so that
// `policy show` can say which secrets need to be set again.
func (s Secret) MarshalJSON() ([]byte, error) {
	type plain Secret
	return json.Marshal(struct {
		plain
		HasValue bool `json:"has_value"`
	}{plain(s), s.Value.IsSet()})
}

// UnmarshalJSON reads what MarshalJSON writes (has_value is informative
// only), so a policy survives a round trip through strict decoders.
func (s *Secret) UnmarshalJSON(b []byte) error {
	type plain Secret
	var v struct {
		plain
		HasValue bool `json:"has_value"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*s = Secret(v.plain)
	return nil
}

// String shows the secret with its value masked.
func (s Secret) String() string {
	return fmt.Sprintf("%s=%v", s.Spec(), s.Value)
}

// SecretValue holds a secret's real value. It prints as "[redacted]" with
// every fmt verb, is left out of JSON, and hides the bytes behind a pointer
// so that even reflection-based dumps of a Policy show no value.
type SecretValue struct{ p *string }

// NewSecretValue wraps a real secret value.
func NewSecretValue(v string) SecretValue { return SecretValue{&v} }

// IsSet reports whether a value is held.
func (v SecretValue) IsSet() bool { return v.p != nil }

// Reveal returns the real value; call it only where the value is about to
// be sent to one of the secret's hosts.
func (v SecretValue) Reveal() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}

// String masks the value.
func (v SecretValue) String() string {
	if v.p == nil {
		return "[unset]"
	}
	return "[redacted]"
}

// GoString masks the value for %#v.
func (v SecretValue) GoString() string { return v.String() }

// Format masks the value for every verb.
func (v SecretValue) Format(f fmt.State, _ rune) { io.WriteString(f, v.String()) }

// MarshalJSON never writes the value.
func (SecretValue) MarshalJSON() ([]byte, error) { return []byte("null"), nil }

// TCPMap forwards raw TCP from GuestHost:GuestPort (a name the guest
// resolves through synthetic DNS, or an IP) to Upstream (HOST:PORT). The
// map authorizes its own upstream: when HOST is an IP or a name pinned
// with --resolve, that address is reachable on PORT through this map
// even if it is internal, and nothing else is opened (Network.resolve).
type TCPMap struct {
	GuestHost string `json:"guest_host"`
	GuestPort uint16 `json:"guest_port"`
	Upstream  string `json:"upstream"`
}

func (m TCPMap) String() string {
	return net.JoinHostPort(m.GuestHost, strconv.Itoa(int(m.GuestPort))) + "=" + m.Upstream
}

// InternalGrant lifts the internal-range block (see InternalRange) for the
// addresses in Prefix, on the ports FromPort to ToPort (inclusive), or on
// every port when both are zero. Its text and JSON form is what
// --allow-internal takes (ParseAllowInternal): CIDR[:PORT[-PORT]], so a
// policy stored before grants had ports ("10.0.0.0/8") still reads, as
// every port.
type InternalGrant struct {
	Prefix           netip.Prefix
	FromPort, ToPort uint16
}

// coversPort reports whether the grant applies to port.
func (g InternalGrant) coversPort(port uint16) bool {
	return g.FromPort == 0 && g.ToPort == 0 || g.FromPort <= port && port <= g.ToPort
}

// String spells the grant as --allow-internal does: 10.0.0.0/8,
// 10.1.2.3/32:5432, [fd00::]/8:8000-8999.
func (g InternalGrant) String() string {
	if g.FromPort == 0 && g.ToPort == 0 {
		return g.Prefix.String()
	}
	addr := g.Prefix.Addr().String()
	if g.Prefix.Addr().Is6() {
		addr = "[" + addr + "]"
	}
	s := addr + "/" + strconv.Itoa(g.Prefix.Bits()) + ":" + strconv.Itoa(int(g.FromPort))
	if g.ToPort != g.FromPort {
		s += "-" + strconv.Itoa(int(g.ToPort))
	}
	return s
}

// MarshalText writes the grant's flag spelling.
func (g InternalGrant) MarshalText() ([]byte, error) { return []byte(g.String()), nil }

// UnmarshalText reads what MarshalText writes, and a bare prefix.
func (g *InternalGrant) UnmarshalText(b []byte) error {
	v, err := ParseAllowInternal(string(b))
	if err != nil {
		return err
	}
	*g = v
	return nil
}

// ResolvePin makes the host resolve Host to IP (as curl --resolve).
type ResolvePin struct {
	Host string     `json:"host"`
	IP   netip.Addr `json:"ip"`
}

// DefaultPolicy is the policy of a VM started without network flags: every
// public host over HTTP and HTTPS, synthetic DNS, nothing internal.
func DefaultPolicy() Policy {
	return Policy{Allow: []string{"*"}, DNS: DNSSynthetic}
}

// Clone returns a deep copy, so a caller can edit it while a Network keeps
// using the original.
func (p Policy) Clone() Policy {
	q := p
	q.Allow = slices.Clone(p.Allow)
	q.Deny = slices.Clone(p.Deny)
	q.DNSServers = slices.Clone(p.DNSServers)
	q.TCPMaps = slices.Clone(p.TCPMaps)
	q.AllowInternal = slices.Clone(p.AllowInternal)
	q.Resolve = slices.Clone(p.Resolve)
	q.SSHAllow = slices.Clone(p.SSHAllow)
	q.SSHKnownHosts = slices.Clone(p.SSHKnownHosts)
	q.SSHCredentials = slices.Clone(p.SSHCredentials)
	q.Secrets = make([]Secret, len(p.Secrets))
	for i, s := range p.Secrets {
		s.Hosts = slices.Clone(s.Hosts)
		q.Secrets[i] = s
	}
	if p.Secrets == nil {
		q.Secrets = nil
	}
	return q
}

// AllowHost adds pattern to the allowlist and drops an identical Deny
// entry, so the last command about a pattern wins.
func (p *Policy) AllowHost(pattern string) error { return moveHost(pattern, &p.Deny, &p.Allow) }

// DenyHost removes pattern from the allowlist and adds it to Deny. Denying
// the last allowed pattern leaves an empty allowlist, which allows nothing
// (never "everything").
func (p *Policy) DenyHost(pattern string) error { return moveHost(pattern, &p.Allow, &p.Deny) }

// moveHost takes the canonical pattern out of from and puts it in to
// (once).
func moveHost(pattern string, from, to *[]string) error {
	pat, err := ParseAllowHost(pattern)
	if err != nil {
		return err
	}
	*from = slices.DeleteFunc(*from, func(s string) bool { return s == pat })
	if !slices.Contains(*to, pat) {
		*to = append(*to, pat)
	}
	return nil
}

// SetSecret adds s or replaces the secret of the same name. A replaced
// secret keeps its placeholder, so the guest's environment stays valid
// while the value rotates.
func (p *Policy) SetSecret(s Secret) {
	for i, old := range p.Secrets {
		if old.Name == s.Name {
			if s.Placeholder == "" {
				s.Placeholder = old.Placeholder
			}
			p.Secrets[i] = s
			return
		}
	}
	p.Secrets = append(p.Secrets, s)
}

// RemoveSecret removes the named secret and reports whether it existed.
func (p *Policy) RemoveSecret(name string) bool {
	n := len(p.Secrets)
	p.Secrets = slices.DeleteFunc(p.Secrets, func(s Secret) bool { return s.Name == name })
	return len(p.Secrets) != n
}

// MissingSecrets names the secrets that have no value: after a supervisor
// restart the values are gone (they are never written to disk) and
// requests that use these secrets are refused until they are set again.
func (p Policy) MissingSecrets() []string {
	var out []string
	for _, s := range p.Secrets {
		if !s.Value.IsSet() {
			out = append(out, s.Name)
		}
	}
	return out
}

// SecretEnv returns NAME=PLACEHOLDER for every secret that has a
// placeholder: the guest processes' view of the secrets.
func (p Policy) SecretEnv() []string {
	var out []string
	for _, s := range p.Secrets {
		if s.Placeholder != "" {
			out = append(out, s.Name+"="+s.Placeholder)
		}
	}
	return out
}

var (
	envNameRE     = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	placeholderRE = regexp.MustCompile(`^GONDOLIN_SECRET_[0-9a-f]{32}$`)
)

// placeholderPrefix starts every placeholder, so a guest value is easy to
// recognise as one.
const placeholderPrefix = "GONDOLIN_SECRET_"

// newPlaceholder returns a fresh random placeholder (128 bits).
func newPlaceholder() string {
	var b [16]byte
	rand.Read(b[:])
	return placeholderPrefix + hex.EncodeToString(b[:])
}

// fillPlaceholders gives every secret without a placeholder the one the
// same-named secret had in prev, else a fresh one.
func (p *Policy) fillPlaceholders(prev *Policy) {
	for i := range p.Secrets {
		s := &p.Secrets[i]
		if s.Placeholder != "" {
			continue
		}
		if prev != nil {
			for _, o := range prev.Secrets {
				if o.Name == s.Name && o.Placeholder != "" {
					s.Placeholder = o.Placeholder
				}
			}
		}
		if s.Placeholder == "" {
			s.Placeholder = newPlaceholder()
		}
	}
}

// Validate checks every field and returns the first problem as a one-line
// error wrapping errdefs.ErrInvalid.
func (p Policy) Validate() error {
	for _, pat := range append(slices.Clone(p.Allow), p.Deny...) {
		if _, err := ParseAllowHost(pat); err != nil {
			return errdefs.Field("--allow-host", err)
		}
	}
	seen := map[string]bool{}
	placeholders := map[string]bool{}
	for _, s := range p.Secrets {
		if !envNameRE.MatchString(s.Name) {
			return errdefs.Field("--host-secret", fmt.Errorf("%w: secret name %q: want a variable name (letters, digits, _)", errdefs.ErrInvalid, s.Name))
		}
		if seen[s.Name] {
			return errdefs.Field("--host-secret", fmt.Errorf("%w: secret %s is given twice", errdefs.ErrInvalid, s.Name))
		}
		seen[s.Name] = true
		if len(s.Hosts) == 0 {
			return errdefs.Field("--host-secret", fmt.Errorf("%w: secret %s has no hosts; write NAME@HOST[,HOST...]", errdefs.ErrInvalid, s.Name))
		}
		for _, h := range s.Hosts {
			if _, err := ParseAllowHost(h); err != nil {
				return errdefs.Field("--host-secret", fmt.Errorf("secret %s: %w", s.Name, err))
			}
		}
		if s.Placeholder != "" {
			if !placeholderRE.MatchString(s.Placeholder) {
				return errdefs.Field("--host-secret", fmt.Errorf("%w: secret %s: malformed placeholder", errdefs.ErrInvalid, s.Name))
			}
			if placeholders[s.Placeholder] {
				return errdefs.Field("--host-secret", fmt.Errorf("%w: secret %s: placeholder shared with another secret", errdefs.ErrInvalid, s.Name))
			}
			placeholders[s.Placeholder] = true
		}
		if s.Value.IsSet() && s.Value.Reveal() == "" {
			return errdefs.Field("--host-secret", fmt.Errorf("%w: secret %s has an empty value", errdefs.ErrInvalid, s.Name))
		}
	}
	if _, err := ParseDNSMode(string(p.DNS)); err != nil && p.DNS != "" {
		return err
	}
	for _, s := range p.DNSServers {
		if _, err := ParseDNSServer(s); err != nil {
			return err
		}
	}
	if len(p.DNSServers) > 0 && (p.DNS == "" || p.DNS == DNSSynthetic) {
		return fmt.Errorf("%w: --dns-trusted-server needs --dns trusted or --dns open", errdefs.ErrInvalid)
	}
	maps := map[string]bool{}
	for _, m := range p.TCPMaps {
		if _, err := ParseTCPMap(m.String()); err != nil {
			return err
		}
		key := strings.ToLower(m.GuestHost) + ":" + strconv.Itoa(int(m.GuestPort))
		if maps[key] {
			return fmt.Errorf("%w: --tcp-map %s: %s is mapped twice", errdefs.ErrInvalid, m, key)
		}
		maps[key] = true
	}
	for _, g := range p.AllowInternal {
		if !g.Prefix.IsValid() || g.Prefix != g.Prefix.Masked() {
			return fmt.Errorf("%w: --allow-internal %s: not a network address", errdefs.ErrInvalid, g.Prefix)
		}
		if (g.FromPort == 0) != (g.ToPort == 0) || g.ToPort < g.FromPort {
			return fmt.Errorf("%w: --allow-internal %s: bad port range %d-%d", errdefs.ErrInvalid, g.Prefix, g.FromPort, g.ToPort)
		}
	}
	pins := map[string]bool{}
	for _, r := range p.Resolve {
		name, ip, err := NormalizeHost(r.Host)
		if err != nil || ip.IsValid() {
			return fmt.Errorf("%w: --resolve %s: want a host name", errdefs.ErrInvalid, r.Host)
		}
		if !r.IP.IsValid() {
			return fmt.Errorf("%w: --resolve %s: missing address", errdefs.ErrInvalid, r.Host)
		}
		if pins[name] {
			return fmt.Errorf("%w: --resolve %s is given twice", errdefs.ErrInvalid, name)
		}
		pins[name] = true
	}
	return p.validateSSH()
}

// dnsMode returns the effective mode.
func (p *Policy) dnsMode() DNSMode {
	if p.DNS == "" {
		return DNSSynthetic
	}
	return p.DNS
}

// pinned returns the pinned address for a canonical name.
func (p *Policy) pinned(name string) (netip.Addr, bool) {
	for _, r := range p.Resolve {
		if n, _, _ := NormalizeHost(r.Host); n == name {
			return r.IP, true
		}
	}
	return netip.Addr{}, false
}

// hostRule decides whether HTTP(S) requests may go to a canonical host and
// names the rule that decided. The most specific matching pattern wins
// (the one with the most non-wildcard characters), and deny wins a tie:
// so `deny *` then `allow api.example.com` leaves exactly that host
// allowed, and `allow *.example.com` with `deny evil.example.com` blocks
// just evil.example.com.
func (p *Policy) hostRule(host string) (rule string, ok bool) {
	allows := make([]allowRule, len(p.Allow))
	for i, pat := range p.Allow {
		allows[i] = allowRule{pat, "allow " + pat}
	}
	return p.decide(host, allows)
}

// allowRule is a pattern that allows a host, and the rule's name for
// events.
type allowRule struct{ pattern, rule string }

// decide picks the most specific of allows and p.Deny matching host, deny
// winning a tie, and names it; with no match the host is refused.
func (p *Policy) decide(host string, allows []allowRule) (rule string, ok bool) {
	best, bestScore := "", -1
	for _, a := range allows {
		if s := specificity(a.pattern); s > bestScore && MatchHost(a.pattern, host) {
			best, bestScore, ok = a.rule, s, true
		}
	}
	for _, pat := range p.Deny {
		if s := specificity(pat); s >= bestScore && MatchHost(pat, host) {
			best, bestScore, ok = "deny "+pat, s, false
		}
	}
	switch {
	case best != "":
		return best, ok
	case len(p.Allow) == 0:
		return "allowlist is empty", false
	}
	return "not in allowlist", false
}

func specificity(pattern string) int {
	return len(pattern) - strings.Count(pattern, "*")
}

// tcpMap returns the map for a guest destination, given as the synthetic
// name it was handed out for (or "") and its IP and port.
func (p *Policy) tcpMap(name string, ip netip.Addr, port uint16) (TCPMap, bool) {
	for _, m := range p.TCPMaps {
		if m.GuestPort != port {
			continue
		}
		gname, gip, err := NormalizeHost(m.GuestHost)
		if err != nil {
			continue
		}
		if (gip.IsValid() && gip == ip) || (name != "" && gname == name) {
			return m, true
		}
	}
	return TCPMap{}, false
}
