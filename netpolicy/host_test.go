package netpolicy

import (
	"errors"
	"maps"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestNormalizeHost(t *testing.T) {
	tests := []struct {
		in       string
		wantName string
		wantIP   string
		wantErr  bool
	}{
		{in: "example.com", wantName: "example.com"},
		{in: "Example.COM.", wantName: "example.com"},
		{in: "example.com:8443", wantName: "example.com"},
		{in: "EXAMPLE.com.:443", wantName: "example.com"},
		{in: "under_score.example", wantName: "under_score.example"},
		{in: "127.0.0.1", wantIP: "127.0.0.1"},
		{in: "127.0.0.1:8080", wantIP: "127.0.0.1"},
		{in: "127.0.0.1.", wantIP: "127.0.0.1"},
		{in: "2130706433", wantIP: "127.0.0.1"},
		{in: "2130706433:80", wantIP: "127.0.0.1"},
		{in: "0177.0.0.1", wantIP: "127.0.0.1"},
		{in: "0x7f.1", wantIP: "127.0.0.1"},
		{in: "0X7F.1", wantIP: "127.0.0.1"},
		{in: "0x7f000001", wantIP: "127.0.0.1"},
		{in: "127.1", wantIP: "127.0.0.1"},
		{in: "127.0.1", wantIP: "127.0.0.1"},
		{in: "017700000001", wantIP: "127.0.0.1"},
		{in: "0xa9.0xfe.0xa9.0xfe", wantIP: "169.254.169.254"},
		{in: "169.254.43518", wantIP: "169.254.169.254"},
		{in: "0", wantIP: "0.0.0.0"},
		{in: "0x", wantIP: "0.0.0.0"},
		{in: "[::1]", wantIP: "::1"},
		{in: "[::1]:443", wantIP: "::1"},
		{in: "::1", wantIP: "::1"},
		{in: "[::ffff:127.0.0.1]", wantIP: "::ffff:127.0.0.1"},
		{in: "[::FFFF:7f00:1]:80", wantIP: "::ffff:127.0.0.1"},
		{in: "[64:ff9b::7f00:1]", wantIP: "64:ff9b::7f00:1"},
		{in: "", wantErr: true},
		{in: "256.0.0.1", wantErr: true},
		{in: "1.2.3.4.5", wantErr: true},
		{in: "0x100.1.1.1", wantErr: true},
		{in: "09.1.1.1", wantErr: true},
		{in: "4294967296", wantErr: true},
		{in: "1.2.65536", wantErr: true},
		{in: "foo.123", wantErr: true},
		{in: "exa mple.com", wantErr: true},
		{in: "example.com:0", wantErr: true},
		{in: "example.com:99999", wantErr: true},
		{in: "example.com:", wantErr: true},
		{in: "[fe80::1%eth0]", wantErr: true},
		{in: "fe80::1%eth0", wantErr: true},
		{in: "[::1", wantErr: true},
		{in: "[127.0.0.1]", wantErr: true},
		{in: "a..b", wantErr: true},
		{in: "ex\x00ample.com", wantErr: true},
		{in: "例え.jp", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			name, ip, err := NormalizeHost(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("NormalizeHost(%q) = %q, %v; want error", tt.in, name, ip)
				}
				return
			}
			if err != nil {
				t.Fatalf("NormalizeHost(%q): %v", tt.in, err)
			}
			if name != tt.wantName {
				t.Errorf("name = %q, want %q", name, tt.wantName)
			}
			gotIP := ""
			if ip.IsValid() {
				gotIP = ip.String()
			}
			if gotIP != tt.wantIP {
				t.Errorf("ip = %q, want %q", gotIP, tt.wantIP)
			}
		})
	}
}

// TestInternalSpellings checks that every spelling of an internal address
// a client could put in a URL ends up classified as internal.
func TestInternalSpellings(t *testing.T) {
	internal := []string{
		"127.0.0.1", "2130706433", "0177.0.0.1", "0x7f.1", "127.1", "127.0.0.1.", "LOCALHOST.localdomain.x:1",
		"[::ffff:127.0.0.1]", "[::ffff:7f00:1]:8080", "[::127.0.0.1]", "[::1]", "[::]", "0.0.0.0", "0",
		"10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "100.64.0.1", "100.127.255.255",
		"169.254.169.254", "0xa9fea9fe", "169.254.43518", "224.0.0.1", "239.255.255.250", "255.255.255.255",
		"[fc00::1]", "[fd12:3456::1]", "[fe80::1]", "[ff02::1]", "[64:ff9b::a00:1]", "[64:ff9b:1::1]",
		"[2002:7f00:1::1]", "198.18.0.5", "192.0.0.8", "[fec0::1]",
	}
	p := &Policy{}
	for _, h := range internal {
		t.Run(h, func(t *testing.T) {
			name, ip, err := NormalizeHost(h)
			if err != nil {
				t.Fatal(err)
			}
			if name != "" {
				if name != "localhost.localdomain.x" {
					t.Fatalf("%q parsed as name %q", h, name)
				}
				return
			}
			if reason, ok := p.ipAllowed(ip, 80); ok {
				t.Fatalf("%q (%v) allowed", h, ip)
			} else if reason == "" {
				t.Fatal("no reason")
			}
		})
	}
	public := []string{"8.8.8.8", "1.1.1.1", "134744072", "[2606:4700:4700::1111]", "100.128.0.1", "172.32.0.1", "11.0.0.1", "198.20.0.1"}
	for _, h := range public {
		t.Run(h, func(t *testing.T) {
			_, ip, err := NormalizeHost(h)
			if err != nil {
				t.Fatal(err)
			}
			if reason, ok := p.ipAllowed(ip, 80); !ok {
				t.Fatalf("%q blocked: %s", h, reason)
			}
		})
	}
}

func TestAllowInternalLiftsOneRange(t *testing.T) {
	p := &Policy{AllowInternal: []InternalGrant{
		{Prefix: netip.MustParsePrefix("127.0.0.1/32")},
		{Prefix: netip.MustParsePrefix("10.9.0.0/16"), FromPort: 5432, ToPort: 5432},
		{Prefix: netip.MustParsePrefix("fd00::/8"), FromPort: 8000, ToPort: 8999},
	}}
	for _, tt := range []struct {
		ip   string
		port uint16
		want bool
	}{
		{"127.0.0.1", 80, true},
		{"127.0.0.1", 65535, true},
		{"127.0.0.2", 80, false},
		{"10.9.3.4", 5432, true},
		{"10.9.3.4", 5433, false},
		{"10.9.3.4", 22, false},
		{"10.10.0.1", 5432, false},
		{"fd12::1", 8000, true},
		{"fd12::1", 8999, true},
		{"fd12::1", 9000, false},
		{"fd12::1", 7999, false},
		// A mapped address is dialled as its IPv4 address, and lifted
		// as it.
		{"::ffff:127.0.0.1", 80, true},
		{"::ffff:10.9.3.4", 22, false},
		// NAT64 reaches the translator's view of the address, not
		// this host's: lifting 127.0.0.1 does not lift it.
		{"64:ff9b::7f00:1", 80, false},
		{"169.254.169.254", 80, false},
		{"8.8.8.8", 80, true},
	} {
		if r, got := p.ipAllowed(netip.MustParseAddr(tt.ip), tt.port); got != tt.want {
			t.Errorf("ipAllowed(%s, %d) = %v (%s), want %v", tt.ip, tt.port, got, r, tt.want)
		}
	}
	r, _ := p.ipAllowed(netip.MustParseAddr("10.9.3.4"), 22)
	if want := "10.9.3.4 is internal (private (RFC 1918)) and --allow-internal 10.9.0.0/16:5432 does not cover port 22"; r != want {
		t.Errorf("reason %q, want %q", r, want)
	}
	r, _ = p.ipAllowed(netip.MustParseAddr("192.168.1.1"), 443)
	if want := "lift it with --allow-internal 192.168.1.1/32:443"; !strings.Contains(r, want) {
		t.Errorf("reason %q, want it to say %q", r, want)
	}
	r, _ = p.ipAllowed(netip.MustParseAddr("fe80::1"), 443)
	if want := "lift it with --allow-internal [fe80::1]/128:443"; !strings.Contains(r, want) {
		t.Errorf("reason %q, want it to say %q", r, want)
	}
}

// TestInternalRange covers the IANA IPv4 and IPv6 special-purpose
// registries and the IPv6 spellings that embed an IPv4 address.
func TestInternalRange(t *testing.T) {
	withHostAddrs(t, nil)
	for _, tt := range []struct {
		ip   string
		want string // part of the range's description; "" = public
	}{
		{"0.0.0.0", "this-network"},
		{"0.1.2.3", "this-network"},
		{"10.0.0.1", "RFC 1918"},
		{"100.64.0.1", "carrier-grade NAT"},
		{"100.127.255.255", "carrier-grade NAT"},
		{"127.0.0.1", "loopback"},
		{"127.255.255.254", "loopback"},
		{"169.254.169.254", "cloud metadata"},
		{"172.16.0.1", "RFC 1918"},
		{"172.31.255.255", "RFC 1918"},
		{"192.0.0.8", "IETF protocol assignments"},
		{"192.0.0.170", "IETF protocol assignments"},
		{"192.0.2.1", "TEST-NET-1"},
		{"192.88.99.1", "6to4 relay"},
		{"192.168.1.1", "RFC 1918"},
		{"198.18.0.1", "benchmarking/synthetic"},
		{"198.19.255.255", "benchmarking/synthetic"},
		{"198.51.100.7", "TEST-NET-2"},
		{"203.0.113.5", "TEST-NET-3"},
		{"224.0.0.1", "multicast"},
		{"239.255.255.250", "multicast"},
		{"240.0.0.1", "reserved"},
		{"255.255.255.255", "broadcast"},
		{"::", "unspecified"},
		{"::1", "loopback IPv6"},
		{"::127.0.0.1", "IPv4-compatible"},
		{"::ffff:127.0.0.1", "IPv4-mapped, loopback"},
		{"::ffff:169.254.169.254", "IPv4-mapped, link-local"},
		{"::ffff:0:7f00:1", "IPv4-translated"},
		{"::ffff:0:808:808", "IPv4-translated"},
		{"64:ff9b::7f00:1", "NAT64 of 127.0.0.1, loopback"},
		{"64:ff9b::a9fe:a9fe", "NAT64 of 169.254.169.254"},
		{"64:ff9b::c0a8:101", "NAT64 of 192.168.1.1"},
		{"64:ff9b:1::808:808", "local-use NAT64"},
		{"100::1", "discard-only"},
		{"100:0:0:1::5", "dummy"},
		{"2001::1", "Teredo"},
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"},
		{"2001:2::1", "IETF protocol assignments"},
		{"2001:10::1", "IETF protocol assignments"},
		{"2001:20::1", "IETF protocol assignments"},
		{"2001:1ff::1", "IETF protocol assignments"},
		{"2001:db8::1", "documentation"},
		{"2002:7f00:1::1", "6to4"},
		{"2002:808:808::1", "6to4"},
		{"3fff::1", "documentation"},
		{"5f00::1", "segment routing"},
		{"fc00::1", "unique local"},
		{"fd12:3456::1", "unique local"},
		{"fe80::1", "link-local IPv6"},
		{"febf::1", "link-local IPv6"},
		{"fec0::1", "site-local"},
		{"ff02::1", "multicast IPv6"},
		{"1::1", "reserved IPv6"},
		{"4000::1", "reserved IPv6"},
		{"e000::1", "reserved IPv6"},

		{"8.8.8.8", ""},
		{"1.1.1.1", ""},
		{"100.128.0.1", ""},
		{"172.32.0.1", ""},
		{"192.0.1.1", ""},
		{"192.0.3.1", ""},
		{"198.17.255.255", ""},
		{"198.20.0.1", ""},
		{"223.255.255.255", ""},
		{"::ffff:8.8.8.8", ""},
		{"64:ff9b::808:808", ""},
		{"2001:200::1", ""},
		{"2001:4860:4860::8888", ""},
		{"2606:4700:4700::1111", ""},
		{"2a00:1450:4001::1", ""},
	} {
		t.Run(tt.ip, func(t *testing.T) {
			what, internal := InternalRange(netip.MustParseAddr(tt.ip))
			if tt.want == "" {
				if internal {
					t.Fatalf("internal (%s), want public", what)
				}
				return
			}
			if !internal || !strings.Contains(what, tt.want) {
				t.Fatalf("InternalRange = %q, %v; want internal, %q", what, internal, tt.want)
			}
		})
	}
	if what, internal := InternalRange(netip.MustParseAddr("fe80::1%eth0")); !internal || !strings.Contains(what, "zoned") {
		t.Errorf("zoned: %q, %v", what, internal)
	}
	if _, internal := InternalRange(netip.Addr{}); !internal {
		t.Error("the zero Addr is not internal")
	}
}

// withHostAddrs makes the host's interface addresses addrs (address to
// interface name) for one test.
func withHostAddrs(t *testing.T, addrs map[string]string) {
	t.Helper()
	old := hostAddrs
	m := map[netip.Addr]string{}
	for a, ifname := range addrs {
		m[netip.MustParseAddr(a)] = ifname
	}
	hostAddrs = &hostAddrCache{read: func() (map[netip.Addr]string, error) { return m, nil }}
	t.Cleanup(func() { hostAddrs = old })
}

// TestHostAddressesAreInternal (issue 12, item 11): anything bound to
// 0.0.0.0 or :: on the host answers on the host's own addresses, public
// ones included; they are internal, read again as they change, and
// --allow-internal lifts them like any range.
func TestHostAddressesAreInternal(t *testing.T) {
	addrs := map[netip.Addr]string{
		netip.MustParseAddr("11.22.33.44"):         "eth0",
		netip.MustParseAddr("2a01:4f8:1:2::3"):     "eth0",
		netip.MustParseAddr("2a01:4f8:1:2:abcd::"): "wlan0",
	}
	var mu sync.Mutex
	reads := 0
	old := hostAddrs
	hostAddrs = &hostAddrCache{read: func() (map[netip.Addr]string, error) {
		mu.Lock()
		defer mu.Unlock()
		reads++
		return maps.Clone(addrs), nil
	}}
	t.Cleanup(func() { hostAddrs = old })
	p := &Policy{}
	for _, tt := range []struct{ ip, want string }{
		{"11.22.33.44", "an address of this host (eth0)"},
		{"::ffff:11.22.33.44", "IPv4-mapped, an address of this host (eth0)"},
		{"64:ff9b::b16:212c", "NAT64 of 11.22.33.44, an address of this host (eth0)"},
		{"2a01:4f8:1:2::3", "an address of this host (eth0)"},
		{"2a01:4f8:1:2:abcd::", "an address of this host (wlan0)"},
		{"11.22.33.45", ""},
		{"2a01:4f8:1:2::4", ""},
	} {
		what, internal := InternalRange(netip.MustParseAddr(tt.ip))
		if what != tt.want || internal != (tt.want != "") {
			t.Errorf("InternalRange(%s) = %q, %v; want %q", tt.ip, what, internal, tt.want)
		}
		if _, ok := p.ipAllowed(netip.MustParseAddr(tt.ip), 8080); ok != (tt.want == "") {
			t.Errorf("ipAllowed(%s) = %v", tt.ip, ok)
		}
	}
	lifted := &Policy{AllowInternal: []InternalGrant{{Prefix: netip.MustParsePrefix("11.22.33.44/32"), FromPort: 8080, ToPort: 8080}}}
	if r, ok := lifted.ipAllowed(netip.MustParseAddr("11.22.33.44"), 8080); !ok {
		t.Errorf("--allow-internal 11.22.33.44/32:8080 does not lift port 8080: %s", r)
	}
	if _, ok := lifted.ipAllowed(netip.MustParseAddr("11.22.33.44"), 22); ok {
		t.Error("--allow-internal 11.22.33.44/32:8080 lifts port 22")
	}

	// A new address is seen once the reading is older than hostAddrsTTL;
	// a removed one is public again; readings are not made per check.
	mu.Lock()
	addrs[netip.MustParseAddr("11.22.33.45")] = "tun0"
	delete(addrs, netip.MustParseAddr("11.22.33.44"))
	before := reads
	mu.Unlock()
	for range 100 {
		InternalRange(netip.MustParseAddr("8.8.8.8"))
	}
	mu.Lock()
	if reads-before > 1 {
		t.Errorf("%d readings of the interfaces for 100 checks", reads-before)
	}
	mu.Unlock()
	hostAddrs.mu.Lock()
	hostAddrs.at = time.Time{}
	hostAddrs.mu.Unlock()
	if what, internal := InternalRange(netip.MustParseAddr("11.22.33.45")); !internal || what != "an address of this host (tun0)" {
		t.Errorf("new address: %q, %v", what, internal)
	}
	if _, internal := InternalRange(netip.MustParseAddr("11.22.33.44")); internal {
		t.Error("a removed address is still the host's")
	}

	// A failed reading keeps the last one.
	hostAddrs.mu.Lock()
	hostAddrs.read = func() (map[netip.Addr]string, error) { return nil, errors.New("netlink: no") }
	hostAddrs.at = time.Time{}
	hostAddrs.mu.Unlock()
	if _, internal := InternalRange(netip.MustParseAddr("11.22.33.45")); !internal {
		t.Error("a failed reading unblocked the host's address")
	}
}

// TestReadHostAddrs reads this machine's interfaces: loopback at least.
func TestReadHostAddrs(t *testing.T) {
	m, err := readHostAddrs()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m[netip.MustParseAddr("127.0.0.1")]; !ok {
		t.Fatalf("127.0.0.1 is not among %v", m)
	}
}

func TestMatchHost(t *testing.T) {
	tests := []struct {
		pattern, host string
		want          bool
	}{
		{"api.github.com", "api.github.com", true},
		{"API.GitHub.com.", "api.github.com", true},
		{"api.github.com", "github.com", false},
		{"api.github.com", "xapi.github.com", false},
		{"api.github.com", "api.github.com.evil.com", false},
		{"*.github.com", "api.github.com", true},
		{"*.github.com", "a.b.github.com", true},
		{"*.github.com", "github.com", false},
		{"*.github.com", "evilgithub.com", false},
		{"*github.com", "evilgithub.com", true},
		{"*", "anything.example", true},
		{"*", "1.2.3.4", true},
		{"api.*.com", "api.x.com", true},
		{"api.*.com", "api.x.org", false},
		{"a*b*c", "abc", true},
		{"a*b*c", "aXXbYYc", true},
		{"a*b*c", "aXXbYY", false},
		{"**", "x", true},
		{"1.2.3.4", "1.2.3.4", true},
		{"1.2.3.4", "1.2.3.5", false},
		{"[::1]", "::1", true},
		{"github.com", "1.2.3.4", false},
	}
	for _, tt := range tests {
		if got := MatchHost(tt.pattern, tt.host); got != tt.want {
			t.Errorf("MatchHost(%q, %q) = %v, want %v", tt.pattern, tt.host, got, tt.want)
		}
	}
}

func TestHostRule(t *testing.T) {
	p := &Policy{Allow: []string{"*.example.com", "api.github.com"}, Deny: []string{"evil.example.com"}}
	for _, tt := range []struct {
		host     string
		ok       bool
		wantRule string
	}{
		{"a.example.com", true, "allow *.example.com"},
		{"evil.example.com", false, "deny evil.example.com"},
		{"api.github.com", true, "allow api.github.com"},
		{"github.com", false, "not in allowlist"},
	} {
		rule, ok := p.hostRule(tt.host)
		if ok != tt.ok || rule != tt.wantRule {
			t.Errorf("hostRule(%q) = %q, %v; want %q, %v", tt.host, rule, ok, tt.wantRule, tt.ok)
		}
	}
	if _, ok := (&Policy{}).hostRule("example.com"); ok {
		t.Error("empty allowlist allows")
	}
}

func TestAllowDenyLastWins(t *testing.T) {
	p := DefaultPolicy()
	if err := p.AllowHost("api.example.com"); err != nil {
		t.Fatal(err)
	}
	if err := p.DenyHost("*"); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.hostRule("api.example.com"); !ok {
		t.Error("api.example.com should stay allowed")
	}
	if _, ok := p.hostRule("other.example.com"); ok {
		t.Error("denying * must not allow other hosts")
	}
	if err := p.DenyHost("api.example.com"); err != nil {
		t.Fatal(err)
	}
	if len(p.Allow) != 0 {
		t.Fatalf("allow = %v", p.Allow)
	}
	if _, ok := p.hostRule("api.example.com"); ok {
		t.Error("denied host allowed")
	}
	if err := p.AllowHost("api.example.com"); err != nil {
		t.Fatal(err)
	}
	if rule, ok := p.hostRule("api.example.com"); !ok {
		t.Errorf("re-allowed host refused: %s", rule)
	}
}
