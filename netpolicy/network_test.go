package netpolicy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/netpolicy/ca"
	"github.com/gondolin/gondolin/netpolicy/netpolicytest"
)

// upstreamServer is a local HTTPS (or HTTP) server standing in for a
// public service. It records what reached it.
type upstreamServer struct {
	*httptest.Server
	mu   sync.Mutex
	seen []*http.Request
}

func (u *upstreamServer) requests() []*http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*http.Request(nil), u.seen...)
}

func (u *upstreamServer) port() string {
	_, p, _ := net.SplitHostPort(u.Listener.Addr().String())
	return p
}

var (
	upstreamCAOnce sync.Once
	upstreamCA     *ca.CA
	hostCA         *ca.CA
)

func testCAs(t testing.TB) (upstream, host *ca.CA) {
	upstreamCAOnce.Do(func() {
		var err error
		if upstreamCA, err = ca.New(); err != nil {
			panic(err)
		}
		if hostCA, err = ca.New(); err != nil {
			panic(err)
		}
	})
	return upstreamCA, hostCA
}

func newUpstream(t testing.TB, useTLS bool, h http.HandlerFunc) *upstreamServer {
	u := &upstreamServer{}
	if h == nil {
		h = func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from %s auth=%q\n", r.Host, r.Header.Get("Authorization"))
		}
	}
	u.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen = append(u.seen, r)
		u.mu.Unlock()
		h(w, r)
	}))
	if useTLS {
		upCA, _ := testCAs(t)
		u.TLS = &tls.Config{GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			return upCA.Leaf(hello.ServerName)
		}}
		u.StartTLS()
	} else {
		u.Start()
	}
	t.Cleanup(u.Close)
	return u
}

func newTestNetwork(t testing.TB, p Policy, tweak ...func(*Options)) *Network {
	upCA, hCA := testCAs(t)
	opts := Options{
		Policy:        p,
		CA:            hCA,
		UpstreamRoots: []*x509.Certificate{upCA.Certificate()},
		// Tests must never touch the real network: unpinned names fail.
		LookupHost: func(ctx context.Context, host string) ([]netip.Addr, error) {
			return nil, fmt.Errorf("no such host %s (test resolver)", host)
		},
	}
	for _, f := range tweak {
		f(&opts)
	}
	n, err := NewNetwork(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// resolveOnly has the host's resolver know one name, as addr.
func resolveOnly(name, addr string) func(*Options) {
	return func(o *Options) {
		o.LookupHost = func(ctx context.Context, host string) ([]netip.Addr, error) {
			if host == name {
				return []netip.Addr{netip.MustParseAddr(addr)}, nil
			}
			return nil, fmt.Errorf("no such host %s", host)
		}
	}
}

func localPolicy(allow ...string) Policy {
	p := DefaultPolicy()
	if len(allow) > 0 {
		p.Allow = allow
	}
	for _, h := range []string{"api.test", "other.test", "new.test", "ws.test", "plain.test"} {
		p.Resolve = append(p.Resolve, ResolvePin{Host: h, IP: netip.MustParseAddr("127.0.0.1")})
	}
	p.AllowInternal = []InternalGrant{{Prefix: netip.MustParsePrefix("127.0.0.1/32")}}
	return p
}

func get(t *testing.T, c *http.Client, url string, hdr map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestDHCPAndDNS(t *testing.T) {
	n := newTestNetwork(t, DefaultPolicy())
	g := netpolicytest.NewGuest(t, n, n.opts.GuestMAC)
	if a, err := g.Lookup("api.example.com"); err == nil {
		t.Fatalf("resolved %v before the guest had a lease", a)
	}
	ack := g.Configure()
	if got := ack.YourIPAddr.String(); got != GuestIP.String() {
		t.Errorf("lease %s, want %s", got, GuestIP)
	}
	if got := ack.DNS(); len(got) != 1 || got[0].String() != GatewayIP.String() {
		t.Errorf("DNS %v", got)
	}
	if ones, _ := ack.SubnetMask().Size(); ones != 24 {
		t.Errorf("mask /%d", ones)
	}
	a1, err := g.Lookup("api.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if !SyntheticPrefix.Contains(a1) {
		t.Errorf("synthetic answer %v outside %v", a1, SyntheticPrefix)
	}
	a2, _ := g.Lookup("API.Example.com")
	a3, _ := g.Lookup("other.example.com")
	if a1 != a2 || a1 == a3 {
		t.Errorf("addresses %v %v %v: want same per name, distinct across names", a1, a2, a3)
	}
	r, err := g.Query("api.example.com", dns.TypeAAAA)
	if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Errorf("AAAA: %v %v", r, err)
	}
	arpa, _ := dns.ReverseAddr(a1.String())
	r, err = g.Query(arpa, dns.TypePTR)
	if err != nil || len(r.Answer) != 1 || r.Answer[0].(*dns.PTR).Ptr != "api.example.com." {
		t.Errorf("PTR: %v %v", r, err)
	}
	m := new(dns.Msg)
	m.SetQuestion("a.example.com.", dns.TypeA)
	m.Question = append(m.Question, m.Question[0])
	if r, err := g.Exchange(m); err != nil || r.Rcode != dns.RcodeFormatError {
		t.Errorf("two questions: %v %v", r, err)
	}
}

func TestMediation(t *testing.T) {
	api := newUpstream(t, true, nil)
	other := newUpstream(t, true, nil)
	p := localPolicy("api.test", "other.test", "ws.test", "plain.test")
	p.Secrets = []Secret{{Name: "TOKEN", Hosts: []string{"api.test"}, Value: NewSecretValue("real-token-value-123")}}
	n := newTestNetwork(t, p)
	g := newTestGuest(t, n)
	c := g.Client()
	env := n.GuestEnv()
	ph := ""
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "TOKEN="); ok {
			ph = v
		}
		if strings.Contains(e, "real-token-value-123") {
			t.Fatalf("guest env holds the value: %q", e)
		}
	}
	if !strings.HasPrefix(ph, placeholderPrefix) {
		t.Fatalf("no placeholder in %v", env)
	}

	t.Run("allowed host gets the real token", func(t *testing.T) {
		// The upstream echoes the header: the guest gets its
		// placeholder back, never the value.
		code, body := get(t, c, "https://api.test:"+api.port()+"/user", map[string]string{"Authorization": "Bearer " + ph})
		if code != 200 || !strings.Contains(body, `auth="Bearer `+ph+`"`) {
			t.Fatalf("%d %q", code, body)
		}
		reqs := api.requests()
		if got := reqs[len(reqs)-1]; got.Host != "api.test:"+api.port() || got.Header.Get("X-Forwarded-For") != "" {
			t.Errorf("upstream saw Host %q XFF %q", got.Host, got.Header.Get("X-Forwarded-For"))
		}
		if got := reqs[len(reqs)-1].Header.Get("Authorization"); got != "Bearer real-token-value-123" {
			t.Errorf("upstream saw Authorization %q", got)
		}
	})
	t.Run("placeholder to another host is blocked and never sent", func(t *testing.T) {
		before := len(other.requests())
		code, body := get(t, c, "https://other.test:"+other.port()+"/", map[string]string{"Authorization": "Bearer " + ph})
		if code != 403 || !strings.Contains(body, "secret TOKEN may only be sent to api.test") {
			t.Fatalf("%d %q", code, body)
		}
		if len(other.requests()) != before {
			t.Fatal("the other server saw the request")
		}
		code, _ = get(t, c, "https://other.test:"+other.port()+"/?t="+ph, nil)
		if code != 403 || len(other.requests()) != before {
			t.Fatalf("placeholder in URL: %d", code)
		}
	})
	t.Run("host not in allowlist", func(t *testing.T) {
		code, body := get(t, c, "https://new.test:"+api.port()+"/", nil)
		if code != 403 || !strings.Contains(body, "not in allowlist") {
			t.Fatalf("%d %q", code, body)
		}
	})
	t.Run("plain http", func(t *testing.T) {
		plain := newUpstream(t, false, nil)
		code, body := get(t, c, "http://plain.test:"+plain.port()+"/x", nil)
		if code != 200 || !strings.Contains(body, "hello from plain.test") {
			t.Fatalf("%d %q", code, body)
		}
	})
	t.Run("secrets over cleartext only to allow-internal addresses", func(t *testing.T) {
		plain := newUpstream(t, false, nil)
		n.UpdatePolicy(func(p *Policy) error {
			p.Secrets[0].Hosts = []string{"api.test", "plain.test", "pub.test"}
			p.Allow = append(p.Allow, "pub.test")
			p.Resolve = append(p.Resolve, ResolvePin{Host: "pub.test", IP: netip.MustParseAddr("93.184.216.34")})
			return nil
		})
		code, body := get(t, c, "http://plain.test:"+plain.port()+"/", map[string]string{"Authorization": "Bearer " + ph})
		if reqs := plain.requests(); code != 200 || len(reqs) == 0 || reqs[len(reqs)-1].Header.Get("Authorization") != "Bearer real-token-value-123" {
			t.Fatalf("to an allow-internal address: %d %q", code, body)
		}
		code, body = get(t, c, "http://pub.test:"+plain.port()+"/", map[string]string{"Authorization": "Bearer " + ph})
		if code != 403 || !strings.Contains(body, "only substituted over HTTPS") {
			t.Fatalf("to a public address: %d %q", code, body)
		}
	})
	t.Run("Host must match the synthetic name", func(t *testing.T) {
		for _, url := range []string{"https://api.test:" + api.port() + "/", "http://api.test:" + api.port() + "/"} {
			code, body := get(t, c, url, map[string]string{"Host": "other.test:" + api.port()})
			if code != 403 || !strings.Contains(body, "is not the name DNS gave") {
				t.Fatalf("%s: %d %q", url, code, body)
			}
		}
		// To a real (non-synthetic) address, SNI and Host must agree.
		sc := g.Client()
		sc.Transport.(*http.Transport).TLSClientConfig.ServerName = "api.test"
		code, body := get(t, sc, "https://10.0.2.2:"+api.port()+"/", map[string]string{"Host": "other.test:" + api.port()})
		if code != 403 || !strings.Contains(body, "does not match the TLS server name") {
			t.Fatalf("%d %q", code, body)
		}
		if code, body := get(t, sc, "https://10.0.2.2:"+api.port()+"/", map[string]string{"Host": "api.test:" + api.port()}); code != 200 {
			t.Fatalf("%d %q", code, body)
		}
	})
	t.Run("CONNECT is refused", func(t *testing.T) {
		conn := g.MustDial(t, "api.test:80")
		fmt.Fprintf(conn, "CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil || resp.StatusCode != 405 {
			t.Fatalf("%v %v", resp, err)
		}
	})
	t.Run("events", func(t *testing.T) {
		evs := n.Events()
		b, _ := json.Marshal(evs)
		if strings.Contains(string(b), "real-token-value-123") {
			t.Fatal("value in events")
		}
		var sawAllowSecret, sawBlockSecret bool
		for _, e := range evs {
			if e.Action == Allowed && e.Host == "api.test" && strings.Join(e.Secrets, ",") == "TOKEN" && e.Proto == "https" && e.Path == "/user" {
				sawAllowSecret = true
			}
			if e.Action == Blocked && e.Host == "other.test" && strings.Join(e.Secrets, ",") == "TOKEN" && e.Status == 403 {
				sawBlockSecret = true
			}
		}
		if !sawAllowSecret || !sawBlockSecret {
			t.Errorf("events lack the secret decisions: %s", b)
		}
	})
}

func TestInternalBlocked(t *testing.T) {
	up := newUpstream(t, false, nil)
	p := DefaultPolicy()
	p.Resolve = []ResolvePin{{Host: "sneaky.test", IP: netip.MustParseAddr("127.0.0.1")}}
	n := newTestNetwork(t, p)
	g := newTestGuest(t, n)
	c := g.Client()
	// Every spelling of 127.0.0.1 in the Host header, sent to the gateway.
	for _, host := range []string{"127.0.0.1", "2130706433", "0177.0.0.1", "0x7f.1", "127.1", "[::ffff:127.0.0.1]", "sneaky.test", "SNEAKY.test."} {
		t.Run(host, func(t *testing.T) {
			code, body := get(t, c, "http://10.0.2.2:"+up.port()+"/", map[string]string{"Host": host + ":" + up.port()})
			if code != 403 || !strings.Contains(body, "internal") {
				t.Fatalf("%d %q", code, body)
			}
		})
	}
	if len(up.requests()) != 0 {
		t.Fatal("the local server was reached")
	}
	// Lifting exactly that address lets the same request through.
	if err := n.UpdatePolicy(func(p *Policy) error {
		p.AllowInternal = []InternalGrant{{Prefix: netip.MustParsePrefix("127.0.0.1/32")}}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, c, "http://10.0.2.2:"+up.port()+"/", map[string]string{"Host": "2130706433:" + up.port()}); code != 200 {
		t.Fatalf("after allow-internal: %d %q", code, body)
	}
}

// TestRebinding checks the second, connect-time check: a name that passes
// the request-time check but resolves to an internal address when the
// upstream connection is made is refused.
func TestRebinding(t *testing.T) {
	up := newUpstream(t, false, nil)
	var calls sync.Map
	n := newTestNetwork(t, DefaultPolicy(), func(o *Options) {
		o.LookupHost = func(ctx context.Context, host string) ([]netip.Addr, error) {
			k, _ := calls.LoadOrStore(host, new(int))
			*k.(*int)++
			if *k.(*int) == 1 {
				return []netip.Addr{netip.MustParseAddr("93.184.216.34")}, nil
			}
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		}
	})
	g := newTestGuest(t, n)
	code, body := get(t, g.Client(), "http://rebind.test:"+up.port()+"/", nil)
	if code != 403 || !strings.Contains(body, "127.0.0.1 is internal") {
		t.Fatalf("%d %q", code, body)
	}
	if len(up.requests()) != 0 {
		t.Fatal("reached")
	}
}

func TestRawTCP(t *testing.T) {
	p := localPolicy()
	m, err := ParseTCPMap("db.internal:5432=127.0.0.1:" + tcpEchoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	p.TCPMaps = []TCPMap{m}
	n := newTestNetwork(t, p, func(o *Options) { o.PeekTimeout = 300 * time.Millisecond })
	g := newTestGuest(t, n)

	t.Run("tcp-map", func(t *testing.T) {
		c := g.MustDial(t, "db.internal:5432")
		// A server-first protocol would wait here: the map does not peek.
		fmt.Fprintf(c, "SSH-2.0-test\r\n")
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "SSH-2.0-test\r\n" {
			t.Fatalf("%q %v", line, err)
		}
	})
	for _, tc := range []struct{ name, addr, send string }{
		{"unmapped raw TCP is reset", "93.184.216.34:22", "\x00\x01binary junk"},
		{"silent client is reset after the peek timeout", "ssh.example.com:22", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := g.MustDial(t, tc.addr)
			if tc.send != "" {
				io.WriteString(c, tc.send)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 10)); !isReset(err) {
				t.Fatalf("read: %v, want a reset", err)
			}
		})
	}
	t.Run("UDP elsewhere is dropped", func(t *testing.T) {
		m := new(dns.Msg)
		m.SetQuestion("x.", dns.TypeA)
		q, _ := m.Pack()
		for _, dst := range []string{"1.1.1.1:53", "10.0.2.2:5353"} {
			c, err := g.DialUDP(netip.MustParseAddrPort(dst))
			if err != nil {
				t.Fatal(err)
			}
			c.Write(q)
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			var ne net.Error
			if _, err := c.Read(make([]byte, 512)); !errors.As(err, &ne) || !ne.Timeout() {
				t.Errorf("UDP to %s: %v, want silence", dst, err)
			}
			c.Close()
		}
	})
}

func isReset(err error) bool {
	return err != nil && (errors.Is(err, syscall.ECONNRESET) || strings.Contains(err.Error(), "reset"))
}

func TestLivePolicyChange(t *testing.T) {
	up := newUpstream(t, true, nil)
	n := newTestNetwork(t, localPolicy("api.test"))
	g := newTestGuest(t, n)
	c := g.Client()
	url := "https://new.test:" + up.port() + "/"
	if code, _ := get(t, c, url, nil); code != 403 {
		t.Fatalf("before: %d", code)
	}
	if err := n.UpdatePolicy(func(p *Policy) error { return p.AllowHost("new.test") }); err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, c, url, nil); code != 200 {
		t.Fatalf("after allow: %d %q", code, body)
	}
	// Denying again applies to the next request on the same keep-alive
	// connection.
	if err := n.UpdatePolicy(func(p *Policy) error { return p.DenyHost("new.test") }); err != nil {
		t.Fatal(err)
	}
	if code, _ := get(t, c, url, nil); code != 403 {
		t.Fatalf("after deny: %d", code)
	}
	// A secret added live keeps working after rotation.
	if err := n.UpdatePolicy(func(p *Policy) error {
		p.SetSecret(Secret{Name: "K", Hosts: []string{"api.test"}, Value: NewSecretValue("first-value-xyz")})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ph := n.Policy().Secrets[0].Placeholder
	if err := n.UpdatePolicy(func(p *Policy) error {
		p.SetSecret(Secret{Name: "K", Hosts: []string{"api.test"}, Value: NewSecretValue("second-value-xyz")})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n.Policy().Secrets[0].Placeholder != ph {
		t.Fatal("rotation changed the placeholder")
	}
	_, body := get(t, c, "https://api.test:"+up.port()+"/", map[string]string{"Authorization": ph})
	if reqs := up.requests(); reqs[len(reqs)-1].Header.Get("Authorization") != "second-value-xyz" {
		t.Fatalf("%q", body)
	}
	// A bad update changes nothing.
	if err := n.UpdatePolicy(func(p *Policy) error { p.DNS = "bogus"; return nil }); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("bad update: %v", err)
	}
	if n.Policy().DNS != DNSSynthetic {
		t.Fatal("bad update applied")
	}
}

// wsHandler accepts a WebSocket-style upgrade and echoes raw bytes.
func wsHandler(w http.ResponseWriter, r *http.Request) {
	if !isWebSocket(r.Header) {
		http.Error(w, "want upgrade", 400)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	brw.Flush()
	io.Copy(conn, brw)
}

func wsRoundTrip(t *testing.T, g *netpolicytest.Guest, port string) (int, string) {
	t.Helper()
	raw := g.MustDial(t, "ws.test:"+port)
	c := tls.Client(raw, &tls.Config{ServerName: "ws.test", RootCAs: g.Roots()})
	fmt.Fprintf(c, "GET /chat HTTP/1.1\r\nHost: ws.test:%s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", port)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 {
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	c.Write([]byte("ping over the tunnel"))
	buf := make([]byte, 20)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(br, buf); err != nil {
		t.Fatal(err)
	}
	return 101, string(buf)
}

func TestWebSocket(t *testing.T) {
	up := newUpstream(t, true, wsHandler)
	n := newTestNetwork(t, localPolicy("ws.test"))
	g := newTestGuest(t, n)
	if code, echo := wsRoundTrip(t, g, up.port()); code != 101 || echo != "ping over the tunnel" {
		t.Fatalf("%d %q", code, echo)
	}
	if err := n.UpdatePolicy(func(p *Policy) error { p.DisableWebSockets = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if code, body := wsRoundTrip(t, g, up.port()); code != 403 || !strings.Contains(body, "WebSockets are disabled") {
		t.Fatalf("%d %q", code, body)
	}
}

func TestReconnect(t *testing.T) {
	up := newUpstream(t, true, nil)
	n := newTestNetwork(t, localPolicy("api.test"))
	g := newTestGuest(t, n)
	if code, _ := get(t, g.Client(), "https://api.test:"+up.port()+"/", nil); code != 200 {
		t.Fatal(code)
	}
	// A new supervisor connects to the same QEMU socket: the guest keeps
	// its lease and ARP entry, and new connections work at once.
	g.Plug(n)
	if code, body := get(t, g.Client(), "https://api.test:"+up.port()+"/", nil); code != 200 {
		t.Fatalf("after reconnect: %d %q", code, body)
	}
	// And a whole new Network (a restarted supervisor) with the
	// persisted policy still attributes the guest's cached synthetic
	// address to its name.
	addr, _ := g.Lookup("api.test")
	pol := n.Policy()
	n.Close()
	n2 := newTestNetwork(t, pol)
	g.Plug(n2)
	raw := g.MustDial(t, net.JoinHostPort(addr.String(), up.port()))
	c := tls.Client(raw, &tls.Config{ServerName: "api.test", RootCAs: g.Roots()})
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: api.test:%s\r\nConnection: close\r\n\r\n", up.port())
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("new supervisor, cached address: %v %v", resp, err)
	}
}

func TestFlowLimit(t *testing.T) {
	n := newTestNetwork(t, DefaultPolicy(), func(o *Options) {
		o.MaxFlows = 3
		o.PeekTimeout = 5 * time.Second
	})
	g := newTestGuest(t, n)
	var held []net.Conn
	for i := 0; i < 3; i++ {
		held = append(held, g.MustDial(t, "93.184.216.34:80"))
	}
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	time.Sleep(100 * time.Millisecond)
	_, err := g.Dial(context.Background(), "93.184.216.34:80")
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("fourth flow: %v, want refused", err)
	}
	found := false
	for _, e := range n.Events() {
		if strings.Contains(e.Reason, "too many connections") {
			found = true
		}
	}
	if !found {
		t.Error("no event for the limit")
	}
	// Freeing one lets a new flow in.
	held[0].Close()
	held = held[1:]
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := g.Dial(context.Background(), "93.184.216.34:80")
		if err == nil {
			held = append(held, c)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("flow slot never freed: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestTrustedDNS(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var queries sync.Map
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		queries.Store(r.Question[0].Name, true)
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.IPv4(93, 184, 216, 34)})
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	defer srv.Shutdown()
	p := DefaultPolicy()
	p.DNS = DNSTrusted
	p.DNSServers = []string{pc.LocalAddr().String()}
	n := newTestNetwork(t, p)
	g := newTestGuest(t, n)
	a, err := g.Lookup("real.example.com")
	if err != nil || a.String() != "93.184.216.34" {
		t.Fatalf("%v %v", a, err)
	}
	r, err := g.Query("real.example.com", dns.TypeANY)
	if err != nil || r.Rcode != dns.RcodeRefused {
		t.Fatalf("ANY: %v %v", r, err)
	}
	if _, ok := queries.Load("real.example.com."); !ok {
		t.Fatal("server saw nothing")
	}
	// Switching to synthetic live stops forwarding.
	n.UpdatePolicy(func(p *Policy) error { p.DNS = DNSSynthetic; p.DNSServers = nil; return nil })
	a, err = g.Lookup("never-sent.example.com")
	if err != nil || !SyntheticPrefix.Contains(a) {
		t.Fatalf("%v %v", a, err)
	}
	if _, ok := queries.Load("never-sent.example.com."); ok {
		t.Fatal("synthetic mode sent a query out")
	}
}

func TestSubscribe(t *testing.T) {
	n := newTestNetwork(t, localPolicy("api.test"))
	ctx, cancel := context.WithCancel(context.Background())
	n.event(Event{Action: Blocked, Host: "before"})
	backlog, ch := n.Subscribe(ctx)
	if len(backlog) != 1 || backlog[0].Host != "before" {
		t.Fatalf("backlog %v", backlog)
	}
	n.event(Event{Action: Allowed, Host: "after"})
	select {
	case e := <-ch:
		if e.Host != "after" || e.Seq != 2 {
			t.Fatalf("%+v", e)
		}
	case <-time.After(time.Second):
		t.Fatal("no event")
	}
	cancel()
	for range ch { // closed after cancel
	}
	_, ch2 := n.Subscribe(context.Background())
	n.Close()
	for range ch2 { // closed by Close
	}
}

// synFrame builds a bare TCP SYN from the guest, as a flooding guest
// would send with raw sockets, never completing the handshake.
func synFrame(srcPort uint16, dst netip.AddrPort) []byte {
	f := make([]byte, header.EthernetMinimumSize+header.IPv4MinimumSize+header.TCPMinimumSize)
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(DefaultGuestMAC), DstAddr: tcpip.LinkAddress(GatewayMAC), Type: header.IPv4ProtocolNumber})
	ip := header.IPv4(f[header.EthernetMinimumSize:])
	src, d := tcpip.AddrFrom4(GuestIP.As4()), tcpip.AddrFrom4(dst.Addr().As4())
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(ip)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: src, DstAddr: d})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcph := header.TCP(ip[header.IPv4MinimumSize:])
	tcph.Encode(&header.TCPFields{SrcPort: srcPort, DstPort: dst.Port(), SeqNum: 1, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagSyn, WindowSize: 65535})
	tcph.SetChecksum(^tcph.CalculateChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, d, uint16(len(tcph)))))
	return f
}

// TestSYNFlood checks that a guest flooding SYNs (and one opening many
// connections) costs the host a bounded number of goroutines, and that
// another VM's network keeps working meanwhile.
func TestSYNFlood(t *testing.T) {
	up := newUpstream(t, true, nil)
	other := newTestNetwork(t, localPolicy("api.test"))
	og := newTestGuest(t, other)

	n := newTestNetwork(t, DefaultPolicy(), func(o *Options) {
		o.MaxHandshakes = 32
		o.MaxFlows = 64
		o.PeekTimeout = 2 * time.Second
	})
	g := newTestGuest(t, n)
	base := runtime.NumGoroutine()
	dst := netip.MustParseAddrPort("93.184.216.34:80")
	for i := 0; i < 5000; i++ {
		g.WriteFrame(synFrame(uint16(1024+i), dst))
	}
	// Completed connections that never send a byte: held until the
	// flow limit, refused beyond it.
	var conns []net.Conn
	for i := 0; i < 100; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		c, err := g.Dial(ctx, "93.184.216.34:443")
		cancel()
		if err == nil {
			conns = append(conns, c)
		}
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	time.Sleep(200 * time.Millisecond)
	// The guest stack's own goroutines count too; the host side adds at
	// most a few per handshake slot and per flow.
	t.Logf("held %d connections; %d flows; %d extra goroutines; %d SYNs dropped at the handshake limit",
		len(conns), n.flows.Load(), runtime.NumGoroutine()-base, n.stack.s.Stats().TCP.ForwardMaxInFlightDrop.Value())
	if extra := runtime.NumGoroutine() - base; extra > 4*(32+64)+100 {
		t.Errorf("%d goroutines after the flood", extra)
	}
	if got := n.flows.Load(); got > 64 {
		t.Errorf("%d flows, limit 64", got)
	}
	if code, body := get(t, og.Client(), "https://api.test:"+up.port()+"/", nil); code != 200 {
		t.Fatalf("other VM during the flood: %d %q", code, body)
	}
}

// TestUpstreamTLSVerified checks that upstream certificates are verified
// against the host's trust store (here without the test CA added).
func TestUpstreamTLSVerified(t *testing.T) {
	up := newUpstream(t, true, nil)
	n := newTestNetwork(t, localPolicy("api.test"), func(o *Options) { o.UpstreamRoots = nil })
	g := newTestGuest(t, n)
	code, body := get(t, g.Client(), "https://api.test:"+up.port()+"/", nil)
	if code != 502 || !strings.Contains(body, "certificate") {
		t.Fatalf("%d %q", code, body)
	}
	if len(up.requests()) != 0 {
		t.Fatal("request sent over an unverified connection")
	}
}
