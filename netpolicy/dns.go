package netpolicy

import (
	"context"
	"encoding/binary"
	"hash/fnv"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gondolin/gondolin/internal/contain"
	"github.com/miekg/dns"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// Synthetic DNS. A names gets an address in SyntheticPrefix derived from
// a hash of the name, so that after a supervisor restart (which loses the
// table) a guest still holding an old answer gets the same attribution:
// see synthTable.verify.
const (
	synthTTL    = 60
	synthMax    = 16384 // table entries kept; a guest inventing names evicts old ones
	synthProbes = 8     // addresses tried per name on hash collisions
)

type synthTable struct {
	mu     sync.Mutex
	byName map[string]netip.Addr
	byAddr map[netip.Addr]string
}

func newSynthTable() *synthTable {
	return &synthTable{byName: map[string]netip.Addr{}, byAddr: map[netip.Addr]string{}}
}

// synthCandidate is the i-th address a name may get. It skips the range's
// first and last addresses (network and broadcast of the /15).
func synthCandidate(name string, i int) netip.Addr {
	h := fnv.New64a()
	io.WriteString(h, name)
	size := uint64(1) << (32 - SyntheticPrefix.Bits())
	idx := 1 + (h.Sum64()+uint64(i)*0x9e3779b97f4a7c15)%(size-2)
	base := SyntheticPrefix.Addr().As4()
	v := binary.BigEndian.Uint32(base[:]) + uint32(idx)
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// assign returns name's synthetic address, allocating it if needed.
func (t *synthTable) assign(name string) netip.Addr {
	t.mu.Lock()
	defer t.mu.Unlock()
	if a, ok := t.byName[name]; ok {
		return a
	}
	if len(t.byName) >= synthMax {
		for n, a := range t.byName { // evict one arbitrary entry
			delete(t.byName, n)
			delete(t.byAddr, a)
			break
		}
	}
	a := synthCandidate(name, 0)
	for i := 0; i < synthProbes; i++ {
		c := synthCandidate(name, i)
		if _, taken := t.byAddr[c]; !taken {
			a = c
			break
		}
	}
	if old, ok := t.byAddr[a]; ok { // every probe taken: the oldest claim loses
		delete(t.byName, old)
	}
	t.byName[name] = a
	t.byAddr[a] = name
	return a
}

// name returns the name addr was handed out for.
func (t *synthTable) name(addr netip.Addr) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, ok := t.byAddr[addr]
	return n, ok
}

// verify reports whether a flow to addr may be attributed to name: addr
// was handed out for name, or (no record, as after a restart) it is one of
// name's candidates and nobody else holds it, in which case it is
// recorded again.
func (t *synthTable) verify(addr netip.Addr, name string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n, ok := t.byAddr[addr]; ok {
		return n == name
	}
	for i := 0; i < synthProbes; i++ {
		if synthCandidate(name, i) == addr {
			if _, has := t.byName[name]; !has {
				t.byName[name] = addr
				t.byAddr[addr] = name
			}
			return true
		}
	}
	return false
}

// trustedTypes are the query types trusted mode forwards: what ordinary
// programs look up. Zone transfers, ANY and obsolete or exotic types are
// refused, so the resolver cannot be used as a tunnel of odd queries.
var trustedTypes = map[uint16]bool{
	dns.TypeA: true, dns.TypeAAAA: true, dns.TypeCNAME: true, dns.TypeMX: true,
	dns.TypeTXT: true, dns.TypeSRV: true, dns.TypeNS: true, dns.TypeSOA: true,
	dns.TypePTR: true, dns.TypeCAA: true, dns.TypeHTTPS: true, dns.TypeSVCB: true,
	dns.TypeDS: true, dns.TypeDNSKEY: true,
}

// answerDNS answers one query from the guest under policy p. It returns
// nil to drop the query (unparseable, or a response). overTCP selects the
// transport for forwarded queries and lifts the UDP size limit.
func (n *Network) answerDNS(ctx context.Context, p *Policy, q []byte, overTCP bool) []byte {
	req := new(dns.Msg)
	if err := req.Unpack(q); err != nil || req.Response {
		return nil
	}
	if testHookDNSQuery != nil {
		testHookDNSQuery(req)
	}
	resp := n.resolveDNS(ctx, p, req, overTCP)
	if resp == nil {
		return nil
	}
	if !overTCP {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
			size = int(min(opt.UDPSize(), 4096))
		}
		resp.Truncate(size)
	}
	out, err := resp.Pack()
	if err != nil {
		return nil
	}
	return out
}

func (n *Network) resolveDNS(ctx context.Context, p *Policy, req *dns.Msg, overTCP bool) *dns.Msg {
	mode := p.dnsMode()
	refuse := func(rcode int, why string) *dns.Msg {
		ev := Event{Action: Blocked, Proto: "dns", Reason: why, Rule: "dns " + string(mode)}
		if len(req.Question) > 0 {
			ev.Host = req.Question[0].Name
		}
		n.event(ev)
		m := new(dns.Msg)
		m.SetRcode(req, rcode)
		return m
	}
	// Only standard queries, in every mode (open too: it opens the query
	// types and classes, not the message kinds): one question, no records
	// but EDNS's OPT. Anything else is for the resolver to act on rather
	// than answer (an UPDATE changing a zone it serves or forwards to, a
	// NOTIFY, records it might cache or check), which no lookup needs and
	// the allowlist on the name alone does not bound; and with several
	// questions, which a resolver reads is its own choice.
	switch q := req.Question; {
	case req.Opcode != dns.OpcodeQuery:
		return refuse(dns.RcodeNotImplemented, "opcode "+opcodeName(req.Opcode)+": only standard queries are answered")
	case len(q) != 1:
		return refuse(dns.RcodeFormatError, "want exactly one question")
	case len(req.Answer) > 0 || len(req.Ns) > 0:
		return refuse(dns.RcodeFormatError, "query carries answer or authority records")
	case !onlyEDNS(req.Extra):
		return refuse(dns.RcodeFormatError, "query carries additional records other than one OPT (EDNS)")
	case mode != DNSOpen && q[0].Qclass != dns.ClassINET:
		return refuse(dns.RcodeRefused, "class is not IN")
	}
	if mode != DNSSynthetic {
		// The name goes out: only names the policy allows (dnspolicy.go).
		if rule, ok := p.dnsRule(req.Question[0].Name); !ok {
			return n.refuseName(req, req.Question[0], mode, rule)
		}
	}
	switch mode {
	case DNSSynthetic:
		return n.synthesize(req)
	case DNSTrusted:
		if !trustedTypes[req.Question[0].Qtype] {
			return refuse(dns.RcodeRefused, "query type "+dns.TypeToString[req.Question[0].Qtype]+" is not forwarded in trusted mode")
		}
	}
	resp := n.forwardDNS(ctx, p, req, overTCP)
	// So that the addresses of a name denied later are known (deniedAddr).
	n.names.learnDNS(resp)
	return resp
}

// onlyEDNS reports whether a query's additional section holds nothing
// but, at most, one OPT record (RFC 6891 allows no more).
func onlyEDNS(extra []dns.RR) bool {
	if len(extra) == 0 {
		return true
	}
	_, ok := extra[0].(*dns.OPT)
	return len(extra) == 1 && ok
}

// opcodeName names a DNS opcode for events: UPDATE, NOTIFY, or its number.
func opcodeName(op int) string {
	if s, ok := dns.OpcodeToString[op]; ok {
		return s
	}
	return strconv.Itoa(op)
}

// synthesize answers without sending anything out. A gets the name's
// synthetic address; AAAA and other types get an empty answer (NOERROR,
// no records), since the guest network is IPv4-only and that makes
// clients fall back to A at once; PTR of a synthetic address gives its
// name back. Names are answered whatever the allowlist says, unlike in
// trusted and open DNS (dnspolicy.go): nothing leaves the host here, so a
// name carries no data anywhere; a blocked host then fails with the
// proxy's 403 saying how to allow it rather than a bare "could not
// resolve"; and a host allowed later works at once, with no negative
// answer cached in the guest. Flows are where the policy bites.
func (n *Network) synthesize(req *dns.Msg) *dns.Msg {
	q := req.Question[0]
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	m.RecursionAvailable = true
	if req.IsEdns0() != nil {
		m.SetEdns0(1232, false)
	}
	qname := strings.TrimSuffix(q.Name, ".")
	if q.Qtype == dns.TypePTR {
		if addr, ok := ptrAddr(qname); ok {
			if name, ok := n.synth.name(addr); ok {
				m.Answer = append(m.Answer, &dns.PTR{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: synthTTL},
					Ptr: dns.Fqdn(name),
				})
				return m
			}
		}
		m.Rcode = dns.RcodeNameError
		return m
	}
	name, ip, err := NormalizeHost(qname)
	if err != nil || ip.IsValid() || strings.ContainsAny(qname, "\\") {
		m.Rcode = dns.RcodeNameError
		return m
	}
	if q.Qtype == dns.TypeA {
		addr := n.synth.assign(name)
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: synthTTL},
			A:   net.IP(addr.AsSlice()),
		})
	}
	return m
}

// ptrAddr parses d.c.b.a.in-addr.arpa.
func ptrAddr(qname string) (netip.Addr, bool) {
	rest, ok := strings.CutSuffix(strings.ToLower(qname), ".in-addr.arpa")
	if !ok {
		return netip.Addr{}, false
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 4 {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(parts[3] + "." + parts[2] + "." + parts[1] + "." + parts[0])
	return a, err == nil && SyntheticPrefix.Contains(a)
}

// forwardDNS sends req to the policy's servers, or the host's resolvers,
// and returns the first answer (SERVFAIL when none answers).
func (n *Network) forwardDNS(ctx context.Context, p *Policy, req *dns.Msg, overTCP bool) *dns.Msg {
	servers := p.DNSServers
	if len(servers) == 0 {
		if cfg, err := dns.ClientConfigFromFile("/etc/resolv.conf"); err == nil {
			servers = cfg.Servers
		}
	}
	c := &dns.Client{Net: "udp", Timeout: 4 * time.Second}
	if overTCP {
		c.Net = "tcp"
	}
	ctx, cancel := context.WithTimeout(ctx, 8*time.Second)
	defer cancel()
	for _, s := range servers {
		addr := s
		if _, err := netip.ParseAddr(s); err == nil {
			addr = net.JoinHostPort(s, "53")
		}
		resp, _, err := c.ExchangeContext(ctx, req, addr)
		if err == nil && resp != nil {
			resp.Id = req.Id
			return resp
		}
		if ctx.Err() != nil {
			break
		}
	}
	m := new(dns.Msg)
	m.SetRcode(req, dns.RcodeServerFailure)
	return m
}

// serveDNSUDP answers DNS on the gateway's UDP port 53. At most 32 queries
// are in progress; beyond that queries are dropped and the guest retries.
func (n *Network) serveDNSUDP(c *gonet.UDPConn) {
	sem := make(chan struct{}, 32)
	buf := make([]byte, 4096)
	for {
		size, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		select {
		case sem <- struct{}{}:
		default:
			continue
		}
		q := append([]byte(nil), buf[:size]...)
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			defer func() { <-sem }()
			// A panic drops this query only (see panics.go).
			defer contain.Recover("a DNS query", func(pe *contain.PanicError) {
				n.flowPanic(pe, Event{Proto: "dns"}, nil)
			})
			if out := n.answerDNS(n.ctx, n.policy.Load(), q, false); out != nil {
				c.WriteTo(out, from)
			}
		}()
	}
}

// serveDNSTCP answers DNS over one TCP connection (the guest retries over
// TCP when a UDP answer was truncated).
func (n *Network) serveDNSTCP(c net.Conn) {
	defer c.Close()
	var l [2]byte
	for {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return
		}
		q := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, q); err != nil {
			return
		}
		out := n.answerDNS(n.ctx, n.policy.Load(), q, true)
		if out == nil {
			return
		}
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(out))), out...)); err != nil {
			return
		}
	}
}
