package netpolicy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// internalPrefixes are the ranges a guest may never reach unless the
// policy lifts one of them with AllowInternal: the host itself, its LAN,
// cloud metadata services, and every entry of the IANA IPv4 and IPv6
// special-purpose address registries that is not globally reachable (or
// that, like 192.0.0.0/24 and 2001::/23, is a protocol block whose few
// anycast addresses no guest needs). IPv6 outside 2000::/3 is reserved
// and blocked as a whole (InternalRange); IPv4-mapped addresses and
// NAT64's 64:ff9b::/96 are classified by the IPv4 address they embed.
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
	{netip.MustParsePrefix("192.0.2.0/24"), "documentation (TEST-NET-1)"},
	// Deprecated (RFC 7526): relays that would carry 6to4 anywhere.
	{netip.MustParsePrefix("192.88.99.0/24"), "6to4 relay anycast (deprecated)"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private (RFC 1918)"},
	// The benchmarking range is where synthetic DNS answers live. Those
	// addresses exist only between the guest and this process (a flow
	// to one is attributed to its name and dialled by name); as an
	// upstream address, one is never a real service.
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking/synthetic (198.18.0.0/15)"},
	{netip.MustParsePrefix("198.51.100.0/24"), "documentation (TEST-NET-2)"},
	{netip.MustParsePrefix("203.0.113.0/24"), "documentation (TEST-NET-3)"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	// 240/4 is reserved and holds the limited broadcast address.
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved or broadcast"},

	{netip.MustParsePrefix("::/128"), "unspecified IPv6"},
	{netip.MustParsePrefix("::1/128"), "loopback IPv6"},
	{netip.MustParsePrefix("::/96"), "IPv4-compatible IPv6 (deprecated)"},
	{netip.MustParsePrefix("::ffff:0:0:0/96"), "IPv4-translated IPv6 (SIIT)"},
	// Local-use NAT64 (RFC 8215) may embed the IPv4 address at any of
	// RFC 6052's offsets, so it cannot be read back: blocked whole.
	{netip.MustParsePrefix("64:ff9b:1::/48"), "local-use NAT64"},
	{netip.MustParsePrefix("100::/64"), "discard-only IPv6"},
	{netip.MustParsePrefix("100:0:0:1::/64"), "dummy IPv6 prefix"},
	// Teredo (2001::/32) embeds a server's and a client's IPv4 address;
	// the rest of the block is benchmarking (2001:2::/48), ORCHID and
	// a few service anycasts.
	{netip.MustParsePrefix("2001::/32"), "Teredo (embeds IPv4)"},
	{netip.MustParsePrefix("2001::/23"), "IETF protocol assignments (2001::/23)"},
	{netip.MustParsePrefix("2001:db8::/32"), "documentation IPv6"},
	// 6to4 embeds an IPv4 address in the prefix; a host with a 6to4
	// relay could be steered to an internal v4 address through it. 6to4
	// is deprecated, so the whole range goes rather than the internal
	// part of it.
	{netip.MustParsePrefix("2002::/16"), "6to4 (embeds IPv4)"},
	{netip.MustParsePrefix("3fff::/20"), "documentation IPv6"},
	{netip.MustParsePrefix("5f00::/16"), "segment routing SIDs"},
	{netip.MustParsePrefix("fc00::/7"), "unique local IPv6"},
	{netip.MustParsePrefix("fe80::/10"), "link-local IPv6"},
	{netip.MustParsePrefix("fec0::/10"), "site-local IPv6"},
	{netip.MustParsePrefix("ff00::/8"), "multicast IPv6"},
}

var (
	// nat64Prefix is the well-known NAT64 prefix (RFC 6052), which an
	// IPv6-only host's DNS64 hands out for IPv4-only names: usable, so
	// its addresses are classified by the IPv4 address in their last 32
	// bits.
	nat64Prefix = netip.MustParsePrefix("64:ff9b::/96")
	// globalUnicast is all the IPv6 space allocated for global unicast
	// (the rest is reserved by the IETF).
	globalUnicast = netip.MustParsePrefix("2000::/3")
)

// InternalRange reports whether ip is an address a guest may not reach by
// default, and which range it is in: an internal or special-purpose
// range (internalPrefixes), or an address of one of this host's
// interfaces as they are now (read again at most every hostAddrsTTL), so
// that a service bound to 0.0.0.0 or :: on the host is not reachable
// through its public address either. Zoned addresses are always
// internal: a zone only means something on the host's own links. An
// IPv4-mapped address is its IPv4 address; a NAT64 address (64:ff9b::/96)
// is internal when the IPv4 address it embeds is.
func InternalRange(ip netip.Addr) (what string, internal bool) {
	if !ip.IsValid() {
		return "invalid address", true
	}
	if ip.Zone() != "" {
		return "zoned (link-scoped) address", true
	}
	if ip.Is4In6() {
		what, internal := InternalRange(ip.Unmap())
		if internal {
			what = "IPv4-mapped, " + what
		}
		return what, internal
	}
	if nat64Prefix.Contains(ip) {
		b := ip.As16()
		v4 := netip.AddrFrom4([4]byte(b[12:]))
		if what, internal := InternalRange(v4); internal {
			return "NAT64 of " + v4.String() + ", " + what, true
		}
		return "", false
	}
	for _, r := range internalPrefixes {
		if r.prefix.Contains(ip) {
			return r.what, true
		}
	}
	if ip.Is6() && !globalUnicast.Contains(ip) {
		return "reserved IPv6 (outside 2000::/3)", true
	}
	if ifname, ok := hostAddrs.lookup(ip); ok {
		return "an address of this host (" + ifname + ")", true
	}
	return "", false
}

// ipAllowed reports whether the policy lets a flow reach ip on port; when
// it does not, reason says why in a form fit for an event. An IPv4-mapped
// address is checked, as it is dialled, as its IPv4 address.
func (p *Policy) ipAllowed(ip netip.Addr, port uint16) (reason string, ok bool) {
	ip = ip.Unmap()
	what, internal := InternalRange(ip)
	if !internal {
		return "", true
	}
	var near *InternalGrant
	for i, g := range p.AllowInternal {
		if g.Prefix.Contains(ip) {
			if g.coversPort(port) {
				return "", true
			}
			near = &p.AllowInternal[i]
		}
	}
	if near != nil {
		return fmt.Sprintf("%s is internal (%s) and --allow-internal %s does not cover port %d", ip, what, near, port), false
	}
	lift := InternalGrant{Prefix: netip.PrefixFrom(ip, ip.BitLen()), FromPort: port, ToPort: port}
	return fmt.Sprintf("%s is internal (%s); lift it with --allow-internal %s", ip, what, lift), false
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
