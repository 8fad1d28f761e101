package netpolicy

import (
	"net/netip"
	"testing"
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
			if reason, ok := p.ipAllowed(ip); ok {
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
			if reason, ok := p.ipAllowed(ip); !ok {
				t.Fatalf("%q blocked: %s", h, reason)
			}
		})
	}
}

func TestAllowInternalLiftsOneRange(t *testing.T) {
	p := &Policy{AllowInternal: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("10.9.0.0/16")}}
	for _, tt := range []struct {
		ip   string
		want bool
	}{
		{"127.0.0.1", true},
		{"127.0.0.2", false},
		{"10.9.3.4", true},
		{"10.10.0.1", false},
		{"::ffff:127.0.0.1", false}, // mapped spelling is its own range
		{"169.254.169.254", false},
		{"8.8.8.8", true},
	} {
		if _, got := p.ipAllowed(netip.MustParseAddr(tt.ip)); got != tt.want {
			t.Errorf("ipAllowed(%s) = %v, want %v", tt.ip, got, tt.want)
		}
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
