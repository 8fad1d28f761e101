package netpolicy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/netpolicy/netpolicytest"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/miekg/dns"
)

// clientHello captures a real ClientHello from crypto/tls.
func clientHello(t testing.TB, sni string, alpn []string) []byte {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	go func() {
		tls.Client(c1, &tls.Config{ServerName: sni, NextProtos: alpn, InsecureSkipVerify: true}).Handshake()
	}()
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(c2, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(c2, body); err != nil {
		t.Fatal(err)
	}
	return append(hdr, body...)
}

func TestParseClientHello(t *testing.T) {
	hello := clientHello(t, "api.example.com", []string{"h2", "http/1.1"})
	if sniff(hello) != kindTLS || sniff(hello[:2]) != kindNeedMore {
		t.Fatal("sniff")
	}
	sni, alpn, err := parseClientHello(hello)
	if err != nil || sni != "api.example.com" || strings.Join(alpn, ",") != "h2,http/1.1" {
		t.Fatalf("%q %v %v", sni, alpn, err)
	}
	for i := 0; i < len(hello); i++ {
		parseClientHello(hello[:i]) // truncations never panic
	}
	if _, _, err := parseClientHello(hello[:len(hello)-1]); err == nil {
		t.Error("truncated hello parsed")
	}
	noSNI := clientHello(t, "", nil)
	if sni, _, err := parseClientHello(noSNI); err != nil || sni != "" {
		t.Errorf("no SNI: %q %v", sni, err)
	}
}

func TestSniff(t *testing.T) {
	for in, want := range map[string]flowKind{
		"GET / HTTP/1.1\r\n":         kindHTTP,
		"PROPFIND ":                  kindHTTP,
		"GE":                         kindNeedMore,
		"":                           kindNeedMore,
		"SSH-2.0-OpenSSH":            kindSSH,
		"SSH-2.":                     kindNeedMore,
		"SSH-1.99-OpenSSH":           kindOther,
		"get / HTTP/1.1":             kindOther,
		" GET":                       kindOther,
		"\x16\x03\x01\x02":           kindTLS,
		"\x16\x02\x01":               kindOther,
		"\x00\x00":                   kindOther,
		"AAAAAAAAAAAAAAAAAAAAAAAAA ": kindOther,
	} {
		if got := sniff([]byte(in)); got != want {
			t.Errorf("sniff(%q) = %v, want %v", in, got, want)
		}
	}
}

func FuzzClientHello(f *testing.F) {
	f.Add(clientHello(f, "api.example.com", []string{"http/1.1"}))
	f.Add(clientHello(f, "", nil))
	f.Add([]byte{0x16, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		sni, _, err := parseClientHello(b)
		if err == nil && len(sni) > len(b) {
			t.Fatal("SNI longer than input")
		}
		sniff(b)
	})
}

// FuzzHTTPRequest runs guest bytes through what an HTTP flow meets before
// anything leaves the host: sniffing, request parsing with a header limit,
// host normalisation, the allowlist and secret substitution.
func FuzzHTTPRequest(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: api.github.com\r\nAuthorization: Bearer " + tokenPH + "\r\n\r\n"))
	f.Add([]byte("POST /x?k=" + tokenPH + " HTTP/1.1\r\nHost: 0x7f.1:80\r\nContent-Length: 3\r\n\r\nabc"))
	f.Add([]byte("GET http://evil/ HTTP/1.1\r\nHost: [::ffff:127.0.0.1]\r\nAuthorization: Basic Zm9vOmJhcg==\r\n\r\n"))
	f.Add([]byte("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"))
	p := secretPolicy()
	f.Fuzz(func(t *testing.T, b []byte) {
		if sniff(b) != kindHTTP {
			return
		}
		r, err := http.ReadRequest(bufio.NewReader(io.LimitReader(bytes.NewReader(b), 64<<10)))
		if err != nil {
			return
		}
		name, ip, err := NormalizeHost(r.Host)
		if err != nil {
			return
		}
		host := canonicalHost(name, ip)
		if n2, ip2, err := NormalizeHost(host); err != nil || canonicalHost(n2, ip2) != host {
			t.Fatalf("canonical form %q of %q is not stable", host, r.Host)
		}
		p.hostRule(host)
		if ip.IsValid() {
			p.ipAllowed(ip, 80)
		}
		v := p.applySecrets(host, r)
		for _, s := range p.Secrets {
			if slices.Contains(v.used, s.Name) && !s.secretHost(host) {
				t.Fatalf("secret %s substituted for %q", s.Name, host)
			}
		}
	})
}

func FuzzNormalizeHost(f *testing.F) {
	for _, s := range []string{"example.com", "0x7f.1", "127.1", "[::ffff:127.0.0.1]:80", "2130706433", "A.B.", "0177.0.0.01", "1.2.3.0x4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		name, ip, err := NormalizeHost(s)
		if err != nil {
			return
		}
		if (name == "") == !ip.IsValid() {
			t.Fatalf("%q: name %q ip %v", s, name, ip)
		}
		c := canonicalHost(name, ip)
		n2, ip2, err := NormalizeHost(c)
		if ip.Is6() {
			n2, ip2, err = NormalizeHost("[" + c + "]")
		}
		if err != nil || canonicalHost(n2, ip2) != c {
			t.Fatalf("%q -> %q not stable: %q %v %v", s, c, n2, ip2, err)
		}
	})
}

func fuzzNetwork() *Network {
	return &Network{
		synth:  newSynthTable(),
		events: newEventLog(16),
		log:    slog.New(slog.DiscardHandler),
		ctx:    context.Background(),
	}
}

// FuzzDNSQuery feeds guest bytes to the DNS server in synthetic mode (the
// default, which never sends anything out) and checks every answer parses.
func FuzzDNSQuery(f *testing.F) {
	for _, q := range []struct {
		name string
		typ  uint16
	}{{"api.example.com.", dns.TypeA}, {"x.", dns.TypeAAAA}, {"5.0.18.198.in-addr.arpa.", dns.TypePTR}, {"a.b.", dns.TypeANY}} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.typ)
		m.SetEdns0(4096, true)
		b, _ := m.Pack()
		f.Add(b)
	}
	n := fuzzNetwork()
	p := &Policy{DNS: DNSSynthetic}
	f.Fuzz(func(t *testing.T, q []byte) {
		for _, tcp := range []bool{false, true} {
			out := n.answerDNS(context.Background(), p, q, tcp)
			if out == nil {
				continue
			}
			m := new(dns.Msg)
			if err := m.Unpack(out); err != nil {
				t.Fatalf("answer does not parse: %v", err)
			}
			if !tcp && len(out) > 4096 {
				t.Fatalf("UDP answer of %d bytes", len(out))
			}
		}
	})
}

// FuzzDHCP feeds guest frames to the DHCP server.
func FuzzDHCP(f *testing.F) {
	disc, _ := dhcpv4.NewDiscovery(DefaultGuestMAC)
	f.Add(netpolicytest.DHCPRequestFrame(disc))
	req, _ := dhcpv4.NewDiscovery(DefaultGuestMAC, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest))
	f.Add(netpolicytest.DHCPRequestFrame(req))
	f.Fuzz(func(t *testing.T, frame []byte) {
		out := dhcpReply(frame, DefaultGuestMAC)
		if out == nil {
			return
		}
		if m := netpolicytest.DHCPFromFrame(out[4:]); m == nil {
			t.Fatal("reply is not a DHCP frame")
		} else if y := m.YourIPAddr; !y.IsUnspecified() && y.String() != GuestIP.String() {
			t.Fatalf("offered %v", y)
		}
	})
}

// FuzzSSHBanner feeds guest bytes, as they arrive in pieces, to what an
// SSH flow meets before the handshake: classification (sniff and the
// bounded read) and the identification line check.
func FuzzSSHBanner(f *testing.F) {
	for _, s := range []string{
		"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u6\r\n", "SSH-2.0-Go\r\n\x00\x00\x01\x14", "SSH-2.0-JSCH-0.1.54\n",
		"SSH-2.0-", "SSH-1.99-x\r\n", "SSH-2.0-\x1b]0;x\a\r\n", "SSH-2.0-" + strings.Repeat("x", 300), "GET / HTTP/1.1\r\n",
	} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, b []byte, step uint8) {
		// The bytes come in pieces of step bytes; peek stops as soon
		// as classify says so.
		got, kind, done := 0, kindNeedMore, false
		for !done && got < len(b) {
			got = min(len(b), got+max(1, int(step)))
			kind, done = classify(b[:got])
		}
		if kind == kindSSH {
			if !bytes.HasPrefix(b, sshPrefix) {
				t.Fatalf("%q classified as SSH", b[:got])
			}
			if done && got > maxSSHBanner+int(step) {
				t.Fatalf("read %d bytes before deciding", got)
			}
		}
		// A prefix of SSH stays SSH with more bytes.
		if kind == kindSSH && sniff(b) != kindSSH {
			t.Fatal("classification changed with more bytes")
		}
		sw, err := parseSSHBanner(b[:got])
		if err != nil {
			return
		}
		line, _ := sshBannerLine(b[:got])
		if kind != kindSSH || line > maxSSHBanner || sw == "" {
			t.Fatalf("accepted %q (kind %v, line %d, software %q)", b[:got], kind, line, sw)
		}
		for _, c := range []byte(sw) {
			if c <= ' ' || c > '~' {
				t.Fatalf("software version %q has byte %#x", sw, c)
			}
		}
	})
}

// FuzzScrub feeds the response scrubber input holding a value (and
// another string to replace) at positions and in pieces the fuzzer
// picks. Whatever the chunking the output must equal the one-shot
// replacement, and it must not hold the value: unless the value overlaps
// a replacement (it contains one, or begins where one ends, ...), where
// an echo of the value next to the rest of it can spell it again.
func FuzzScrub(f *testing.F) {
	f.Add(tokenValue, "", []byte("auth: Bearer \n"), []byte{5, 1, 200, 3})
	f.Add("a/b&c<d>", "dTpyZWFs", []byte(`{"h":"Basic ","u":"/x?k="}`), []byte{0, 11, 12, 2, 1})
	f.Add("aa", "a", []byte("aaaaaaa"), []byte{1, 2, 3})
	const ph = "GONDOLIN_SECRET_00112233445566778899aabbccddeeff"
	f.Fuzz(func(t *testing.T, value, other string, data, cuts []byte) {
		if value == "" || len(value) > 512 || len(cuts) == 0 || len(cuts) > 64 || len(data) > 8<<10 {
			return // (the input is built by copying: keep it small)
		}
		// The value (and the other string) inserted where cuts say.
		in := string(data)
		for i, c := range cuts {
			at := int(c) % (len(in) + 1)
			s := value
			if i%3 == 2 && other != "" {
				s = other
			}
			in = in[:at] + s + in[at:]
		}
		pairs := echoPairs(value, ph)
		if other != "" {
			pairs = append(pairs, scrubPair{other, "[other]"})
		}
		want := oneShot(pairs, in)
		sizes, reads := make([]int, len(cuts)), make([]int, len(cuts))
		for i, c := range cuts {
			sizes[i] = int(c)%23 + 1
			reads[i] = int(c>>3)%31 + 1
		}
		r := newReplacer(pairs)
		got := scrubStream(t, r, in, sizes, reads, cuts[0]&1 == 1)
		if got != want {
			t.Fatalf("streamed %q\none-shot %q", got, want)
		}
		if strings.Contains(got, value) && !overlapsAny(value, pairs) {
			t.Fatalf("output holds the value: %q", got)
		}
	})
}

// overlapsAny reports whether v could be spelled across or inside a
// replacement: v and a replacement contain one another, or one ends
// with the beginning of the other.
func overlapsAny(v string, pairs []scrubPair) bool {
	for _, p := range pairs {
		n := p.new
		if strings.Contains(n, v) || (n != "" && strings.Contains(v, n)) {
			return true
		}
		for k := 1; k < min(len(v), len(n)); k++ {
			if strings.HasSuffix(n, v[:k]) || strings.HasPrefix(n, v[len(v)-k:]) {
				return true
			}
		}
	}
	return false
}

// FuzzParseAllowInternal: whatever --allow-internal or a stored policy
// holds, a grant that parses is valid and reads back from its own
// spelling as the same grant.
func FuzzParseAllowInternal(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "127.0.0.1:8080", "10.0.0.0/8:1-65535", "[::1]/128:80", "[fd00::/8]:5432", "fd00::/8", "[::1]", "::ffff:1.2.3.4", "1.2.3.4:80-", "\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		g, err := ParseAllowInternal(s)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q", err)
			}
			return
		}
		if err := (Policy{AllowInternal: []InternalGrant{g}}).Validate(); err != nil {
			t.Fatalf("%q parsed to an invalid grant %v: %v", s, g, err)
		}
		g2, err := ParseAllowInternal(g.String())
		if err != nil || g2 != g {
			t.Fatalf("%q -> %v -> %v, %v", s, g, g2, err)
		}
	})
}
