package netpolicy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/testutil"
	"github.com/gondolin/gondolin/netpolicy/netpolicytest"
	"github.com/miekg/dns"
)

// TestInternalGrantPorts (issue 12, item 12): --allow-internal with a
// port opens that port of the range and no other, for HTTP and HTTPS.
func TestInternalGrantPorts(t *testing.T) {
	open := newUpstream(t, false, nil)
	closed := newUpstream(t, false, nil)
	secure := newUpstream(t, true, nil)
	port := func(u *upstreamServer) uint16 { n, _ := strconv.Atoi(u.port()); return uint16(n) }
	p := DefaultPolicy()
	p.Resolve = []ResolvePin{{Host: "api.test", IP: netip.MustParseAddr("127.0.0.1")}}
	p.AllowInternal = []InternalGrant{
		{Prefix: netip.MustParsePrefix("127.0.0.1/32"), FromPort: port(open), ToPort: port(open)},
		{Prefix: netip.MustParsePrefix("127.0.0.1/32"), FromPort: port(secure), ToPort: port(secure)},
	}
	n := newTestNetwork(t, p)
	g := newTestGuest(t, n)
	c := g.Client()
	for _, tt := range []struct {
		url, host string
		want      int
	}{
		{"http://api.test:" + open.port() + "/", "", 200},
		{"http://10.0.2.2:" + open.port() + "/", "127.0.0.1:" + open.port(), 200},
		{"https://api.test:" + secure.port() + "/", "", 200},
		{"http://api.test:" + closed.port() + "/", "", 403},
		{"http://10.0.2.2:" + closed.port() + "/", "127.0.0.1:" + closed.port(), 403},
		{"http://10.0.2.2:" + closed.port() + "/", "[::ffff:127.0.0.1]:" + closed.port(), 403},
	} {
		t.Run(tt.url+" "+tt.host, func(t *testing.T) {
			var hdr map[string]string
			if tt.host != "" {
				hdr = map[string]string{"Host": tt.host}
			}
			code, body := get(t, c, tt.url, hdr)
			if code != tt.want {
				t.Fatalf("%d %q, want %d", code, body, tt.want)
			}
			if code == 403 && !strings.Contains(body, "does not cover port "+closed.port()) {
				t.Fatalf("reason %q does not name the port", body)
			}
		})
	}
	if len(closed.requests()) != 0 {
		t.Fatal("a port outside the grant was reached")
	}
}

// TestTCPMapAuthorizesItsUpstream (issue 12, item 12): a TCP map to an
// internal upstream needs no --allow-internal, and opens the upstream's
// port to the map only: not to HTTP, not other ports, not other maps to
// a name the resolver (not the user) puts there.
func TestTCPMapAuthorizesItsUpstream(t *testing.T) {
	echo := tcpEchoServer(t)
	web := newUpstream(t, false, nil)
	p := DefaultPolicy()
	p.Resolve = []ResolvePin{{Host: "db.host.test", IP: netip.MustParseAddr("127.0.0.1")}}
	for _, s := range []string{
		"db.internal:5432=127.0.0.1:" + echo,
		"pinned.internal:5432=db.host.test:" + echo,
		"other.internal:80=127.0.0.1:" + web.port(),
		"resolved.internal:5432=resolved.test:" + echo,
	} {
		m, err := ParseTCPMap(s)
		if err != nil {
			t.Fatal(err)
		}
		p.TCPMaps = append(p.TCPMaps, m)
	}
	n := newTestNetwork(t, p, func(o *Options) {
		o.PeekTimeout = 300 * time.Millisecond
		o.LookupHost = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		}
	})
	g := newTestGuest(t, n)
	roundTrip := func(addr string) (string, error) {
		c, err := g.Dial(context.Background(), addr)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "ping\n")
		return bufio.NewReader(c).ReadString('\n')
	}
	for _, addr := range []string{"db.internal:5432", "pinned.internal:5432"} {
		if line, err := roundTrip(addr); line != "ping\n" {
			t.Errorf("%s: %q %v", addr, line, err)
		}
	}
	// A name the host's resolver puts at an internal address is not the
	// user's choice: still internal.
	if line, err := roundTrip("resolved.internal:5432"); line != "" {
		t.Errorf("resolved.internal: %q %v, want nothing", line, err)
	}
	// The map to the web server's port does not open it to HTTP, nor
	// the echo port.
	code, body := get(t, g.Client(), "http://10.0.2.2:"+echo+"/", map[string]string{"Host": "127.0.0.1:" + echo})
	if code != 403 {
		t.Fatalf("HTTP to a mapped upstream's port: %d %q", code, body)
	}
	if code, body := get(t, g.Client(), "http://10.0.2.2:"+web.port()+"/", map[string]string{"Host": "127.0.0.1:" + web.port()}); code != 403 {
		t.Fatalf("HTTP to another map's upstream: %d %q", code, body)
	}
	if len(web.requests()) != 0 {
		t.Fatal("HTTP reached a mapped upstream")
	}
	var sawInternal bool
	for _, e := range n.Events() {
		if e.Host == "resolved.internal" && e.Action == Blocked && strings.Contains(e.Reason, "internal") {
			sawInternal = true
		}
	}
	if !sawInternal {
		t.Errorf("no event for the refused map: %v", n.Events())
	}
}

// tcpEchoServer serves raw TCP on a loopback port, which it returns,
// sending back what it gets.
func tcpEchoServer(t *testing.T) (port string) {
	ln := testutil.Listen(t, "tcp", "127.0.0.1:0")
	testutil.Serve(t, ln, func(c net.Conn) { io.Copy(c, c); c.Close() })
	_, port, _ = net.SplitHostPort(ln.Addr().String())
	return port
}

// TestDeniedNameByAddress (issue 12, item 14): a name denied by policy
// is denied through its IP literal too, when the host knows the address
// as that name's: from a Deny pattern's own resolution, from a DNS
// answer it forwarded, or from its resolution for an earlier request.
func TestDeniedNameByAddress(t *testing.T) {
	// Each address is a loopback alias (Linux routes 127/8 to lo) with a
	// server of its own; 127/8 is lifted for the tests.
	servers := map[string]string{}
	for _, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"} {
		servers[ip] = helloServer(t, ip)
	}
	lift := func(p *Policy) {
		p.AllowInternal = []InternalGrant{{Prefix: netip.MustParsePrefix("127.0.0.0/8")}}
	}
	mustGet := func(t *testing.T, g *netpolicytest.Guest, host, ip string, want int, wantReason string) {
		t.Helper()
		port := servers[ip]
		code, body := get(t, g.Client(), "http://10.0.2.2:"+port+"/", map[string]string{"Host": host + ":" + port})
		if code != want || !strings.Contains(body, wantReason) {
			t.Fatalf("Host %s: %d %q; want %d with %q", host, code, body, want, wantReason)
		}
	}

	t.Run("an exact Deny name resolves on the host", func(t *testing.T) {
		p := DefaultPolicy()
		lift(&p)
		p.Resolve = []ResolvePin{{Host: "pinned.test", IP: netip.MustParseAddr("127.0.0.2")}}
		p.Deny = []string{"pinned.test", "resolved.test"}
		n := newTestNetwork(t, p, resolveOnly("resolved.test", "::ffff:127.0.0.3"))
		g := newTestGuest(t, n)
		mustGet(t, g, "127.0.0.2", "127.0.0.2", 403, "127.0.0.2 is an address of pinned.test, which is denied (deny pinned.test)")
		mustGet(t, g, "[::ffff:127.0.0.2]", "127.0.0.2", 403, "address of pinned.test")
		mustGet(t, g, "2130706435", "127.0.0.3", 403, "127.0.0.3 is an address of resolved.test")
		mustGet(t, g, "127.0.0.4", "127.0.0.4", 200, "hello")
		// Allowed again: the address is usable again.
		if err := n.UpdatePolicy(func(p *Policy) error { return p.AllowHost("pinned.test") }); err != nil {
			t.Fatal(err)
		}
		mustGet(t, g, "127.0.0.2", "127.0.0.2", 200, "hello")
	})

	t.Run("a DNS answer forwarded to the guest", func(t *testing.T) {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(r)
			q := r.Question[0].Name
			if r.Question[0].Qtype == dns.TypeA {
				m.Answer = append(m.Answer,
					&dns.CNAME{Hdr: dns.RR_Header{Name: q, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 5}, Target: "edge.cdn.test."},
					&dns.A{Hdr: dns.RR_Header{Name: "edge.cdn.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.IPv4(127, 0, 0, 5)})
			}
			w.WriteMsg(m)
		})}
		go srv.ActivateAndServe()
		t.Cleanup(func() { srv.Shutdown() })
		p := DefaultPolicy()
		lift(&p)
		p.DNS = DNSTrusted
		p.DNSServers = []string{pc.LocalAddr().String()}
		n := newTestNetwork(t, p)
		g := newTestGuest(t, n)
		// Not known yet: the guest has not asked.
		mustGet(t, g, "127.0.0.5", "127.0.0.5", 200, "hello")
		if a, err := g.Lookup("www.evil.test"); err != nil || a.String() != "127.0.0.5" {
			t.Fatalf("lookup: %v %v", a, err)
		}
		// Denied after the guest learnt the address (a name denied
		// already is not even resolved for the guest).
		if err := n.UpdatePolicy(func(p *Policy) error { return p.DenyHost("*.evil.test") }); err != nil {
			t.Fatal(err)
		}
		mustGet(t, g, "127.0.0.5", "127.0.0.5", 403, "127.0.0.5 is an address of www.evil.test, which is denied (deny *.evil.test)")
		// The CNAME target counts too, once denied.
		if err := n.UpdatePolicy(func(p *Policy) error { p.Deny = []string{"*.cdn.test"}; return nil }); err != nil {
			t.Fatal(err)
		}
		mustGet(t, g, "127.0.0.5", "127.0.0.5", 403, "address of edge.cdn.test")
	})

	t.Run("a name the host resolved, denied later", func(t *testing.T) {
		p := DefaultPolicy()
		lift(&p)
		n := newTestNetwork(t, p, resolveOnly("once.test", "127.0.0.6"))
		g := newTestGuest(t, n)
		if code, body := get(t, g.Client(), "http://once.test:"+servers["127.0.0.6"]+"/", nil); code != 200 {
			t.Fatalf("by name: %d %q", code, body)
		}
		mustGet(t, g, "127.0.0.6", "127.0.0.6", 200, "hello")
		// A wildcard deny is not resolved by the host; the earlier
		// resolution is what tells.
		if err := n.UpdatePolicy(func(p *Policy) error { return p.DenyHost("*.test") }); err != nil {
			t.Fatal(err)
		}
		mustGet(t, g, "127.0.0.6", "127.0.0.6", 403, "127.0.0.6 is an address of once.test, which is denied (deny *.test)")
	})

	t.Run("a TCP map is the user's and not affected", func(t *testing.T) {
		echo := tcpEchoServer(t)
		p := DefaultPolicy()
		// The map's upstream is an address of a denied name.
		p.Resolve = []ResolvePin{{Host: "db.test", IP: netip.MustParseAddr("127.0.0.1")}}
		p.Deny = []string{"db.test"}
		m, err := ParseTCPMap("db.internal:5432=127.0.0.1:" + echo)
		if err != nil {
			t.Fatal(err)
		}
		p.TCPMaps = []TCPMap{m}
		n := newTestNetwork(t, p)
		g := newTestGuest(t, n)
		c := g.MustDial(t, "db.internal:5432")
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "ping\n")
		if line, err := bufio.NewReader(c).ReadString('\n'); line != "ping\n" {
			t.Fatalf("%q %v", line, err)
		}
	})
}

// helloServer serves "hello" over HTTP on ip (a loopback address) and
// returns its port.
func helloServer(t *testing.T, ip string) (port string) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "hello") })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	_, port, _ = net.SplitHostPort(ln.Addr().String())
	return port
}

func TestAddrNamesBounded(t *testing.T) {
	tab := newAddrNames()
	for i := range maxNamedAddrs + 100 {
		a := netip.AddrFrom4([4]byte{11, byte(i >> 16), byte(i >> 8), byte(i)})
		tab.learn(fmt.Sprintf("n%d.test", i), a)
	}
	if len(tab.names) > maxNamedAddrs {
		t.Fatalf("%d addresses kept, limit %d", len(tab.names), maxNamedAddrs)
	}
	a := netip.MustParseAddr("11.0.0.1")
	for i := range maxNamesPerAddr + 10 {
		tab.learn(fmt.Sprintf("m%d.test", i), a)
	}
	if got := len(tab.known(a)); got != maxNamesPerAddr {
		t.Fatalf("%d names for one address, limit %d", got, maxNamesPerAddr)
	}
	// The newest names are the ones kept.
	if !strings.Contains(strings.Join(tab.known(a), " "), fmt.Sprintf("m%d.test", maxNamesPerAddr+9)) {
		t.Fatalf("newest name dropped: %v", tab.known(a))
	}
}

// TestDeniedAddrConcurrent: requests that arrive while a denied name is
// being looked up wait for the lookup rather than pass.
func TestDeniedAddrConcurrent(t *testing.T) {
	p := DefaultPolicy()
	p.Deny = []string{"slow.test"}
	var lookups atomic.Int32
	n := newTestNetwork(t, p, func(o *Options) {
		o.LookupHost = func(ctx context.Context, host string) ([]netip.Addr, error) {
			lookups.Add(1)
			time.Sleep(200 * time.Millisecond)
			return []netip.Addr{netip.MustParseAddr("93.184.216.34")}, nil
		}
	})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r, denied := n.deniedAddr(context.Background(), n.policy.Load(), netip.MustParseAddr("93.184.216.34")); !denied {
				t.Errorf("passed during the lookup: %q", r)
			}
		}()
	}
	wg.Wait()
	if got := lookups.Load(); got != 1 {
		t.Errorf("%d lookups of one denied name", got)
	}
	if _, denied := n.deniedAddr(context.Background(), n.policy.Load(), netip.MustParseAddr("93.184.216.35")); denied {
		t.Error("another address denied")
	}
}
