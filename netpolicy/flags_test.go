package netpolicy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gondolin/gondolin/internal/errdefs"
)

func TestParseHostSecret(t *testing.T) {
	env := map[string]string{"GITHUB_TOKEN": "ghp_fromenv123", "EMPTY": ""}
	getenv := func(k string) string { return env[k] }
	tests := []struct {
		spec      string
		wantName  string
		wantHosts []string
		wantValue string
		wantSpec  string // as String shows it (the url option included)
		wantErr   string
	}{
		{spec: "GITHUB_TOKEN@api.github.com", wantName: "GITHUB_TOKEN", wantHosts: []string{"api.github.com"}, wantValue: "ghp_fromenv123", wantSpec: "GITHUB_TOKEN@api.github.com=[redacted]"},
		// The url option: the value may go into the URL too.
		{spec: "GITHUB_TOKEN:url@api.github.com", wantName: "GITHUB_TOKEN", wantHosts: []string{"api.github.com"}, wantValue: "ghp_fromenv123", wantSpec: "GITHUB_TOKEN:url@api.github.com=[redacted]"},
		{spec: "MAPS:url@maps.example.com=k:v@x", wantName: "MAPS", wantHosts: []string{"maps.example.com"}, wantValue: "k:v@x", wantSpec: "MAPS:url@maps.example.com=[redacted]"},
		{spec: "X:URL@api.example.com=v", wantErr: `unknown option "URL"`},
		{spec: "X:@api.example.com=v", wantErr: `unknown option ""`},
		{spec: "X:header@api.example.com=v", wantErr: "the only one is url"},
		{spec: "TOKEN@a.example.com,*.B.example.com=s3cr3t=with=equals", wantName: "TOKEN", wantHosts: []string{"a.example.com", "*.b.example.com"}, wantValue: "s3cr3t=with=equals"},
		{spec: "MISSING@api.example.com", wantErr: "environment variable MISSING is not set"},
		{spec: "EMPTY@api.example.com", wantErr: "environment variable EMPTY is not set"},
		{spec: "X@api.example.com=", wantErr: "empty value"},
		{spec: "api.example.com=v", wantErr: "want NAME[:url]@HOST"},
		{spec: "@api.example.com=v", wantErr: "want NAME[:url]@HOST"},
		{spec: "X@=value", wantErr: "want NAME[:url]@HOST"},
		{spec: "1X@api.example.com=v", wantErr: "not a variable name"},
		{spec: "X@bad host=v", wantErr: "host"},
		{spec: "X@a.com,,b.com=v", wantErr: "host"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			s, err := ParseHostSecret(tt.spec, getenv)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, errdefs.ErrInvalid) {
					t.Fatalf("err = %v, want one containing %q and wrapping errdefs.ErrInvalid", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error is not one line: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.Name != tt.wantName || fmt.Sprint(s.Hosts) != fmt.Sprint(tt.wantHosts) || s.Value.Reveal() != tt.wantValue {
				t.Errorf("got %s hosts %v", s.Name, s.Hosts)
			}
			if tt.wantSpec != "" && s.String() != tt.wantSpec {
				t.Errorf("String() = %q, want %q", s.String(), tt.wantSpec)
			}
		})
	}
}

// TestSecretValueNeverPrinted checks every way a value could leak through
// formatting or JSON.
func TestSecretValueNeverPrinted(t *testing.T) {
	const value = "super-secret-value-42"
	p := DefaultPolicy()
	p.Secrets = []Secret{{Name: "TOKEN", Hosts: []string{"api.example.com"}, Value: NewSecretValue(value)}}
	p.fillPlaceholders(nil)
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	outs := []string{
		string(b),
		fmt.Sprint(p), fmt.Sprintf("%v", p), fmt.Sprintf("%+v", p), fmt.Sprintf("%#v", p),
		p.Secrets[0].String(), fmt.Sprintf("%v", p.Secrets[0]), fmt.Sprintf("%q", p.Secrets[0].Value), fmt.Sprintf("%x", p.Secrets[0].Value),
		fmt.Sprintf("%+v", &p), p.Secrets[0].String(),
	}
	for _, o := range outs {
		if strings.Contains(o, value) {
			t.Errorf("value leaked: %s", o)
		}
	}
	if !strings.Contains(string(b), `"has_value":true`) || !strings.Contains(string(b), p.Secrets[0].Placeholder) {
		t.Errorf("JSON lacks has_value or placeholder: %s", b)
	}
	// A round trip keeps everything but the value.
	var q Policy
	if err := json.Unmarshal(b, &q); err != nil {
		t.Fatal(err)
	}
	if q.Secrets[0].Value.IsSet() || q.Secrets[0].Placeholder != p.Secrets[0].Placeholder {
		t.Errorf("round trip: %+v", q.Secrets[0])
	}
	if got := q.MissingSecrets(); fmt.Sprint(got) != "[TOKEN]" {
		t.Errorf("MissingSecrets = %v", got)
	}
	if err := q.Validate(); err != nil {
		t.Errorf("restored policy invalid: %v", err)
	}
}

func TestParseTCPMap(t *testing.T) {
	tests := []struct {
		in      string
		want    TCPMap
		wantErr bool
	}{
		{in: "db=127.0.0.1:5432", want: TCPMap{GuestHost: "db", GuestPort: 5432, Upstream: "127.0.0.1:5432"}},
		{in: "DB.internal:15432=db.example.com:5432", want: TCPMap{GuestHost: "db.internal", GuestPort: 15432, Upstream: "db.example.com:5432"}},
		{in: "10.0.2.100:22=[::1]:2222", want: TCPMap{GuestHost: "10.0.2.100", GuestPort: 22, Upstream: "[::1]:2222"}},
		{in: "db=host", wantErr: true},
		{in: "db:0=h:1", wantErr: true},
		{in: "db=h:70000", wantErr: true},
		{in: "=h:1", wantErr: true},
		{in: "db", wantErr: true},
		{in: "d b=h:1", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			m, err := ParseTCPMap(tt.in)
			if tt.wantErr {
				if !errors.Is(err, errdefs.ErrInvalid) {
					t.Fatalf("err = %v, want errdefs.ErrInvalid", err)
				}
				return
			}
			if err != nil || m != tt.want {
				t.Fatalf("= %+v, %v; want %+v", m, err, tt.want)
			}
		})
	}
}

func TestParseSmallFlags(t *testing.T) {
	if r, err := ParseResolve("API.example.com.=127.0.0.1"); err != nil || r.Host != "api.example.com" || r.IP != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("ParseResolve = %+v, %v", r, err)
	}
	if r, err := ParseResolve("h=[::1]"); err != nil || r.IP != netip.MustParseAddr("::1") {
		t.Errorf("ParseResolve v6 = %+v, %v", r, err)
	}
	for _, bad := range []string{"h", "h=", "h=1.2.3", "1.2.3.4=1.2.3.4", "h:80=1.2.3.4", "=1.2.3.4"} {
		if _, err := ParseResolve(bad); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("ParseResolve(%q) err = %v", bad, err)
		}
	}
	for _, good := range []string{"synthetic", "trusted", "open", "OPEN"} {
		if _, err := ParseDNSMode(good); err != nil {
			t.Errorf("ParseDNSMode(%q): %v", good, err)
		}
	}
	if _, err := ParseDNSMode("none"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("ParseDNSMode(none) err = %v", err)
	}
	for _, good := range []string{"api.github.com", "*.github.com", "*", "1.2.3.4", "[::1]", "Host.Example."} {
		if _, err := ParseAllowHost(good); err != nil {
			t.Errorf("ParseAllowHost(%q): %v", good, err)
		}
	}
	for _, bad := range []string{"", "a b", "http://x.com", "x.com/path", "x..com", "x.com:443"} {
		if _, err := ParseAllowHost(bad); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("ParseAllowHost(%q) err = %v", bad, err)
		}
	}
	if s, err := ParseDNSServer("1.1.1.1"); err != nil || s != "1.1.1.1" {
		t.Errorf("ParseDNSServer = %q, %v", s, err)
	}
	if s, err := ParseDNSServer("127.0.0.1:5353"); err != nil || s != "127.0.0.1:5353" {
		t.Errorf("ParseDNSServer = %q, %v", s, err)
	}
	if _, err := ParseDNSServer("dns.google"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("ParseDNSServer(name) err = %v", err)
	}
}

func TestParseAllowInternal(t *testing.T) {
	for _, tt := range []struct {
		in, want string // want: the canonical spelling, or "" for an error
		errWant  string // part of the error
	}{
		{in: "127.0.0.1", want: "127.0.0.1/32"},
		{in: "10.0.0.0/8", want: "10.0.0.0/8"},
		{in: "127.0.0.1:8080", want: "127.0.0.1/32:8080"},
		{in: "10.1.2.3/32:5432", want: "10.1.2.3/32:5432"},
		{in: "10.0.0.0/8:8000-8999", want: "10.0.0.0/8:8000-8999"},
		{in: "10.0.0.0/8:80-80", want: "10.0.0.0/8:80"},
		{in: "::1", want: "::1/128"},
		{in: "fd00::/8", want: "fd00::/8"},
		{in: "[::1]", want: "::1/128"},
		{in: "[::1]:8080", want: "[::1]/128:8080"},
		{in: "[::1]/128:8080", want: "[::1]/128:8080"},
		{in: "[fd00::]/8:5432", want: "[fd00::]/8:5432"},
		{in: "[fd00::/8]:5432", want: "[fd00::]/8:5432"},
		{in: "[fd00::]/8", want: "fd00::/8"},
		{in: "[fd00::]/8:1-65535", want: "[fd00::]/8:1-65535"},
		{in: "", errWant: "want CIDR"},
		{in: "x", errWant: "want CIDR"},
		{in: "10.0.0.1/8", errWant: "did you mean 10.0.0.0/8?"},
		{in: "10.0.0.0/33", errWant: "want CIDR"},
		{in: "10.0.0.1:0", errWant: "bad port"},
		{in: "10.0.0.1:", errWant: "bad port"},
		{in: "10.0.0.1:65536", errWant: "bad port"},
		{in: "10.0.0.1:90-80", errWant: "bad port"},
		{in: "10.0.0.1:80-", errWant: "bad port"},
		{in: "10.0.0.1:http", errWant: "bad port"},
		{in: "10.0.0.1:-5", errWant: "bad port"},
		{in: "fd00::/8:5432", errWant: "in brackets: [fd00::]/8:5432"},
		{in: "[10.0.0.1]:80", errWant: "brackets are for IPv6 only"},
		{in: "[::1", errWant: "missing ]"},
		{in: "[::1]x", errWant: "want [IPV6]/BITS:PORT"},
		{in: "[::1]/200:80", errWant: "want CIDR"},
		{in: "[fe80::1%eth0]:80", errWant: "want CIDR"},
		{in: "::ffff:127.0.0.1", errWant: "IPv4 range itself"},
	} {
		t.Run(tt.in, func(t *testing.T) {
			g, err := ParseAllowInternal(tt.in)
			if tt.want == "" {
				if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), tt.errWant) || strings.Contains(err.Error(), "\n") {
					t.Fatalf("ParseAllowInternal(%q) = %v, %v; want an error with %q", tt.in, g, err, tt.errWant)
				}
				return
			}
			if err != nil || g.String() != tt.want {
				t.Fatalf("ParseAllowInternal(%q) = %v, %v; want %s", tt.in, g, err, tt.want)
			}
			// The canonical spelling reads back as the same grant.
			if g2, err := ParseAllowInternal(g.String()); err != nil || g2 != g {
				t.Fatalf("%s reads back as %v, %v", g, g2, err)
			}
		})
	}
}

// TestAllowInternalJSON: grants are stored in their flag spelling, and a
// policy stored before grants had ports still means every port.
func TestAllowInternalJSON(t *testing.T) {
	var old Policy
	if err := json.Unmarshal([]byte(`{"allow_internal":["127.0.0.1/32","fd00::/8"]}`), &old); err != nil {
		t.Fatal(err)
	}
	for _, g := range old.AllowInternal {
		if g.FromPort != 0 || g.ToPort != 0 || !g.coversPort(1) || !g.coversPort(65535) {
			t.Errorf("old grant %v does not cover every port", g)
		}
	}
	p := Policy{AllowInternal: []InternalGrant{
		{Prefix: netip.MustParsePrefix("10.0.0.0/8")},
		{Prefix: netip.MustParsePrefix("127.0.0.1/32"), FromPort: 8080, ToPort: 8080},
		{Prefix: netip.MustParsePrefix("fd00::/8"), FromPort: 5000, ToPort: 5999},
	}}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"allow_internal":["10.0.0.0/8","127.0.0.1/32:8080","[fd00::]/8:5000-5999"]}`; string(b) != want {
		t.Fatalf("JSON %s, want %s", b, want)
	}
	var back Policy
	if err := json.Unmarshal(b, &back); err != nil || !slices.Equal(back.AllowInternal, p.AllowInternal) {
		t.Fatalf("round trip: %v, %v", back.AllowInternal, err)
	}
	if err := json.Unmarshal([]byte(`{"allow_internal":["10.0.0.0/8:0"]}`), &back); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("bad stored grant: %v", err)
	}
}

func TestFlagsPolicy(t *testing.T) {
	getenv := func(k string) string { return map[string]string{"TOKEN": "tok-from-env"}[k] }
	p, err := Flags{}.Policy(getenv)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(p.Allow) != "[*]" || p.DNS != DNSSynthetic {
		t.Errorf("default policy = %+v", p)
	}
	p, err = Flags{
		AllowHost:        []string{"api.github.com"},
		HostSecret:       []string{"TOKEN@api.github.com"},
		DNSTrustedServer: []string{"1.1.1.1"},
		TCPMap:           []string{"db=127.0.0.1:5432"},
		AllowInternal:    []string{"127.0.0.1/32"},
		Resolve:          []string{"api.github.com=127.0.0.1"},
	}.Policy(getenv)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(p.Allow) != "[api.github.com]" || p.DNS != DNSTrusted || p.Secrets[0].Value.Reveal() != "tok-from-env" {
		t.Errorf("policy = %+v", p)
	}
	// A TCP map authorizes its own upstream: no --allow-internal needed.
	if _, err := (Flags{TCPMap: []string{"db=127.0.0.1:5432"}}).Policy(getenv); err != nil {
		t.Errorf("TCP map to an internal upstream: %v", err)
	}
	bad := []struct {
		f    Flags
		want string
	}{
		{Flags{HostSecret: []string{"NOPE@x.com"}}, "NOPE is not set"},
		{Flags{AllowInternal: []string{"10.0.0.1/8"}}, "host bits set"},
		{Flags{TCPMap: []string{"db=h:1", "db:1=h:2"}}, "mapped twice"},
		{Flags{DNS: "synthetic", DNSTrustedServer: []string{"1.1.1.1"}}, "needs --dns trusted"},
		{Flags{HostSecret: []string{"A@x.com=1", "A@y.com=2"}}, "given twice"},
		{Flags{Resolve: []string{"a=1.1.1.1", "A.=2.2.2.2"}}, "given twice"},
	}
	for _, tt := range bad {
		_, err := tt.f.Policy(getenv)
		if err == nil || !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: err = %v, want %q", tt.f, err, tt.want)
		}
	}
}

func TestSetSecretKeepsPlaceholder(t *testing.T) {
	p := DefaultPolicy()
	p.SetSecret(Secret{Name: "A", Hosts: []string{"x.com"}, Value: NewSecretValue("one")})
	p.fillPlaceholders(nil)
	ph := p.Secrets[0].Placeholder
	p.SetSecret(Secret{Name: "A", Hosts: []string{"y.com"}, Value: NewSecretValue("two")})
	if p.Secrets[0].Placeholder != ph || p.Secrets[0].Value.Reveal() != "two" || len(p.Secrets) != 1 {
		t.Errorf("after rotation: %+v", p.Secrets)
	}
	// A policy rebuilt from flags (no placeholders) inherits them by name.
	q := DefaultPolicy()
	q.Secrets = []Secret{{Name: "A", Hosts: []string{"x.com"}, Value: NewSecretValue("three")}, {Name: "B", Hosts: []string{"x.com"}, Value: NewSecretValue("b")}}
	q.fillPlaceholders(&p)
	if q.Secrets[0].Placeholder != ph || q.Secrets[1].Placeholder == "" || q.Secrets[1].Placeholder == ph {
		t.Errorf("fill: %+v", q.Secrets)
	}
	if !p.RemoveSecret("A") || p.RemoveSecret("A") || len(p.Secrets) != 0 {
		t.Errorf("RemoveSecret: %+v", p.Secrets)
	}
	if env := q.SecretEnv(); len(env) != 2 || env[0] != "A="+ph {
		t.Errorf("SecretEnv = %v", env)
	}
}

func TestHostSecretFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	token := write("token", "ghp_fromfile\n")
	crlf := write("crlf", "ghp_crlf\r\n")
	twoLines := write("two", "a\nb\n")
	empty := write("empty", "\n")
	big := write("big", strings.Repeat("x", maxSecretFile+1))
	tests := []struct {
		name      string
		specs     []string
		stdin     string
		wantValue []string
		wantInURL bool
		wantErr   string
	}{
		{name: "file", specs: []string{"T@api.example.com=" + token}, wantValue: []string{"ghp_fromfile"}},
		{name: "url option", specs: []string{"T:url@api.example.com=" + token}, wantValue: []string{"ghp_fromfile"}, wantInURL: true},
		{name: "crlf", specs: []string{"T@api.example.com=" + crlf}, wantValue: []string{"ghp_crlf"}},
		{name: "stdin", specs: []string{"T@api.example.com=-"}, stdin: "from-stdin\n", wantValue: []string{"from-stdin"}},
		{name: "stdin twice", specs: []string{"A@a.example.com=-", "B@b.example.com=-"}, stdin: "x", wantErr: "standard input can give one secret only"},
		{name: "two lines", specs: []string{"T@api.example.com=" + twoLines}, wantErr: "one non-empty line"},
		{name: "empty", specs: []string{"T@api.example.com=" + empty}, wantErr: "one non-empty line"},
		{name: "too big", specs: []string{"T@api.example.com=" + big}, wantErr: "longer than 64 KiB"},
		{name: "missing file", specs: []string{"T@api.example.com=" + filepath.Join(dir, "nope")}, wantErr: "no such file"},
		{name: "no path", specs: []string{"T@api.example.com"}, wantErr: "want NAME@HOST"},
		{name: "bad name", specs: []string{"1T@api.example.com=" + token}, wantErr: "not a variable name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old := secretStdin
			secretStdin = strings.NewReader(tt.stdin)
			defer func() { secretStdin = old }()
			p, err := Flags{HostSecretFile: tt.specs}.Policy(func(string) string { return "" })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, errdefs.ErrInvalid) || strings.Contains(err.Error(), "\n") {
					t.Fatalf("err = %v, want one line containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "ghp_") {
					t.Fatalf("error shows the value: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range p.Secrets {
				got = append(got, s.Value.Reveal())
				if s.InURL != tt.wantInURL {
					t.Errorf("InURL = %v", s.InURL)
				}
			}
			if !slices.Equal(got, tt.wantValue) {
				t.Fatalf("values %q, want %q", got, tt.wantValue)
			}
		})
	}
}
