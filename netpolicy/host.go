package netpolicy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// internalPrefixes are the ranges a guest may never reach unless the
// policy lifts one of them with AllowInternal. They cover the host itself,
// its LAN, cloud metadata services and every IPv6 spelling that embeds an
// IPv4 address (so ::ffff:127.0.0.1 cannot sneak past a v4-only list).
var internalPrefixes = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "this-network (0.0.0.0/8)"},
	{netip.MustParsePrefix("10.0.0.0/8"), "private (RFC 1918)"},
	{netip.MustParsePrefix("100.64.0.0/10"), "carrier-grade NAT (100.64.0.0/10)"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local (cloud metadata)"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private (RFC 1918)"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignments (192.0.0.0/24)"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private (RFC 1918)"},
	// The benchmarking range is where synthetic DNS answers live: a name
	// the host resolves into it is never a real service.
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking/synthetic (198.18.0.0/15)"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	// 240/4 is reserved and holds the limited broadcast address.
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved or broadcast"},
	{netip.MustParsePrefix("::/96"), "IPv4-compatible IPv6, loopback or unspecified"},
	{netip.MustParsePrefix("::ffff:0:0/96"), "IPv4-mapped IPv6"},
	{netip.MustParsePrefix("64:ff9b::/96"), "NAT64"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "local-use NAT64"},
	// 6to4 embeds an IPv4 address in the prefix; a host with a 6to4 relay
	// could be steered to an internal v4 address through it.
	{netip.MustParsePrefix("2002::/16"), "6to4 (embeds IPv4)"},
	{netip.MustParsePrefix("fc00::/7"), "unique local IPv6"},
	{netip.MustParsePrefix("fe80::/10"), "link-local IPv6"},
	{netip.MustParsePrefix("fec0::/10"), "site-local IPv6"},
	{netip.MustParsePrefix("ff00::/8"), "multicast IPv6"},
}

// InternalRange reports whether ip is in a range a guest may not reach by
// default, and which one. Zoned addresses are always internal: a zone only
// means something on the host's own links.
func InternalRange(ip netip.Addr) (what string, internal bool) {
	if !ip.IsValid() {
		return "invalid address", true
	}
	if ip.Zone() != "" {
		return "zoned (link-scoped) address", true
	}
	for _, r := range internalPrefixes {
		if r.prefix.Contains(ip) {
			return r.what, true
		}
	}
	return "", false
}

// ipAllowed reports whether the policy lets a flow reach ip; when it does
// not, reason says why in a form fit for an event.
func (p *Policy) ipAllowed(ip netip.Addr) (reason string, ok bool) {
	what, internal := InternalRange(ip)
	if !internal {
		return "", true
	}
	for _, pfx := range p.AllowInternal {
		if pfx.Contains(ip) {
			return "", true
		}
	}
	return fmt.Sprintf("%s is internal (%s); lift it with --allow-internal %s", ip, what, netip.PrefixFrom(ip, ip.BitLen())), false
}

// errBadHost is returned for Host headers and names that are neither a DNS
// name nor an IP literal.
var errBadHost = errors.New("not a host name or IP address")

// NormalizeHost turns a host as a client may spell it (with a port, in
// brackets, upper case, with a trailing dot, or as an IPv4 literal in any
// inet_aton spelling such as 2130706433, 0177.0.0.1, 0x7f.1 or 127.1) into
// one canonical form: a lower-case DNS name without trailing dot, or an IP
// address. Exactly one of name and ip is set on success. Policy checks
// always run on this form, so a spelling trick cannot dodge them.
func NormalizeHost(host string) (name string, ip netip.Addr, err error) {
	h := host
	if strings.HasPrefix(h, "[") {
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return "", netip.Addr{}, fmt.Errorf("%q: %w", host, errBadHost)
		}
		rest := h[end+1:]
		if rest != "" && !validPortSuffix(rest) {
			return "", netip.Addr{}, fmt.Errorf("%q: %w", host, errBadHost)
		}
		a, perr := netip.ParseAddr(h[1:end])
		if perr != nil || !a.Is6() || a.Zone() != "" {
			return "", netip.Addr{}, fmt.Errorf("%q: %w", host, errBadHost)
		}
		return "", a, nil
	}
	switch strings.Count(h, ":") {
	case 0:
	case 1:
		i := strings.IndexByte(h, ':')
		if !validPortSuffix(h[i:]) {
			return "", netip.Addr{}, fmt.Errorf("%q: %w", host, errBadHost)
		}
		h = h[:i]
	default:
		// A bare IPv6 literal (no brackets, so no port).
		a, perr := netip.ParseAddr(h)
		if perr != nil || a.Zone() != "" {
			return "", netip.Addr{}, fmt.Errorf("%q: %w", host, errBadHost)
		}
		return "", a, nil
	}
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	if h == "" || len(h) > 253 {
		return "", netip.Addr{}, fmt.Errorf("%q: %w", host, errBadHost)
	}
	labels := strings.Split(h, ".")
	// As the WHATWG URL standard does: a host whose last label is a
	// number is an IPv4 address and must parse as one.
	if isNumericLabel(labels[len(labels)-1]) {
		a, ok := parseIPv4Loose(labels)
		if !ok {
			return "", netip.Addr{}, fmt.Errorf("%q: %w", host, errBadHost)
		}
		return "", a, nil
	}
	for _, l := range labels {
		if !validLabel(l) {
			return "", netip.Addr{}, fmt.Errorf("%q: %w", host, errBadHost)
		}
	}
	return h, netip.Addr{}, nil
}

func validPortSuffix(s string) bool {
	if len(s) < 2 || s[0] != ':' || len(s) > 6 {
		return false
	}
	n, err := strconv.ParseUint(s[1:], 10, 16)
	return err == nil && n > 0
}

func validLabel(l string) bool {
	if l == "" || len(l) > 63 {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// isNumericLabel reports whether a label is a number in inet_aton's sense
// (decimal, 0-prefixed octal or 0x-prefixed hex), even an invalid one such
// as "09": such a label makes the whole host an IPv4 literal.
func isNumericLabel(l string) bool {
	if l == "" {
		return false
	}
	if strings.HasPrefix(l, "0x") {
		for i := 2; i < len(l); i++ {
			if !isHex(l[i]) {
				return false
			}
		}
		return true
	}
	for i := 0; i < len(l); i++ {
		if l[i] < '0' || l[i] > '9' {
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f'
}

// parseIPv4Loose parses the dotted forms inet_aton accepts: one to four
// parts, each decimal, octal or hex, the last filling the remaining bytes.
func parseIPv4Loose(parts []string) (netip.Addr, bool) {
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	nums := make([]uint64, len(parts))
	for i, p := range parts {
		var (
			v   uint64
			err error
		)
		switch {
		case p == "":
			return netip.Addr{}, false
		case strings.HasPrefix(p, "0x"):
			if len(p) == 2 {
				v = 0
			} else {
				v, err = strconv.ParseUint(p[2:], 16, 64)
			}
		case len(p) > 1 && p[0] == '0':
			v, err = strconv.ParseUint(p[1:], 8, 64)
		default:
			v, err = strconv.ParseUint(p, 10, 64)
		}
		if err != nil {
			return netip.Addr{}, false
		}
		nums[i] = v
	}
	var out uint32
	for i, v := range nums[:len(nums)-1] {
		if v > 255 {
			return netip.Addr{}, false
		}
		out |= uint32(v) << (24 - 8*i)
	}
	last := nums[len(nums)-1]
	if rem := 5 - len(nums); last >= 1<<(8*rem) {
		return netip.Addr{}, false
	}
	out |= uint32(last)
	return netip.AddrFrom4([4]byte{byte(out >> 24), byte(out >> 16), byte(out >> 8), byte(out)}), true
}

// canonicalHost is NormalizeHost's result as one string.
func canonicalHost(name string, ip netip.Addr) string {
	if ip.IsValid() {
		return ip.String()
	}
	return name
}

// MatchHost reports whether host (as NormalizeHost returns it) matches
// pattern: case-insensitive, whole-name, where each * stands for any run
// of characters, dots included ("*.example.com" matches a.b.example.com
// but not example.com itself). An IP literal matches only a pattern that
// spells the same address.
func MatchHost(pattern, host string) bool {
	pattern = strings.TrimSuffix(strings.ToLower(pattern), ".")
	if a, err := netip.ParseAddr(strings.Trim(pattern, "[]")); err == nil {
		b, err := netip.ParseAddr(host)
		return err == nil && a == b
	}
	return globMatch(pattern, host)
}

// globMatch matches s against a pattern whose only metacharacter is *.
// It runs in O(len(p)*len(s)) at worst, with no recursion, so a guest's
// long Host header cannot make it expensive.
func globMatch(p, s string) bool {
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		switch {
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case pi < len(p) && p[pi] == s[si]:
			pi++
			si++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}
