package netpolicy

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gondolin/gondolin/internal/contain"
	"github.com/miekg/dns"
)

// A name denied with `policy deny` must not be reachable through its IP
// address either. An IP literal (a Host header, TLS server name or SSH
// destination) is refused when the host knows it as an address of a name
// whose most specific rule is a Deny pattern, under the policy in force at
// that moment. The host knows an address as a name's when, within
// addrNameTTL:
//
//   - it resolved the name itself for a request (HTTP, HTTPS, SSH), or
//   - it forwarded a DNS answer to the guest (trusted and open DNS) that
//     gave the address for the name asked or for a name in the answer's
//     CNAME chain, or
//   - the name is a Deny pattern without wildcards and resolving it on the
//     host now (--resolve pins first, at most every denyLookupTTL) gives
//     the address.
//
// Addresses a guest learns some other way for a wildcard-denied name
// (DNS over HTTPS to an allowed host, a list it brought) are not known
// here. Note that an IP literal reaches only servers that answer to their
// address: HTTPS upstreams are verified for the literal, and the Host
// header the upstream sees is the literal.
const (
	addrNameTTL   = 30 * time.Minute
	denyLookupTTL = time.Minute
	// maxNamedAddrs and maxNamesPerAddr bound the table: a guest with
	// open DNS can make the host forward as many answers as it likes.
	maxNamedAddrs   = 4096
	maxNamesPerAddr = 16
	// denyLookupTimeout bounds the resolution of exact Deny names
	// that one IP-literal request may wait for.
	denyLookupTimeout = 3 * time.Second
)

// addrNames is a Network's table of which names addresses were given for.
type addrNames struct {
	mu    sync.Mutex
	names map[netip.Addr]map[string]time.Time // name -> expiry
	deny  map[string]*denyLookup              // exact Deny names
}

func newAddrNames() *addrNames {
	return &addrNames{names: map[netip.Addr]map[string]time.Time{}, deny: map[string]*denyLookup{}}
}

// learn records that name (canonical) resolved to addrs.
func (t *addrNames) learn(name string, addrs ...netip.Addr) {
	if name == "" || len(addrs) == 0 {
		return
	}
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, a := range addrs {
		a = a.Unmap()
		m := t.names[a]
		if m == nil {
			if len(t.names) >= maxNamedAddrs {
				t.evict(now)
			}
			m = map[string]time.Time{}
			t.names[a] = m
		}
		if _, ok := m[name]; !ok && len(m) >= maxNamesPerAddr {
			dropOldest(m)
		}
		m[name] = now.Add(addrNameTTL)
	}
}

// evict drops expired entries, and when none has expired the address
// whose names expire first.
func (t *addrNames) evict(now time.Time) {
	var oldest netip.Addr
	var oldestAt time.Time
	for a, m := range t.names {
		latest := time.Time{}
		for name, exp := range m {
			if now.After(exp) {
				delete(m, name)
			} else if exp.After(latest) {
				latest = exp
			}
		}
		if len(m) == 0 {
			delete(t.names, a)
			continue
		}
		if !oldest.IsValid() || latest.Before(oldestAt) {
			oldest, oldestAt = a, latest
		}
	}
	if len(t.names) >= maxNamedAddrs && oldest.IsValid() {
		delete(t.names, oldest)
	}
}

func dropOldest(m map[string]time.Time) {
	first, firstAt := "", time.Time{}
	for name, exp := range m {
		if first == "" || exp.Before(firstAt) {
			first, firstAt = name, exp
		}
	}
	delete(m, first)
}

// learnDNS records the addresses in a DNS answer forwarded to the guest,
// under the name asked and every owner name in the answer (the CNAME
// chain).
func (t *addrNames) learnDNS(resp *dns.Msg) {
	if resp == nil || len(resp.Answer) == 0 {
		return
	}
	var addrs []netip.Addr
	names := map[string]bool{}
	for _, q := range resp.Question {
		names[q.Name] = true
	}
	for _, rr := range resp.Answer {
		names[rr.Header().Name] = true
		switch rr := rr.(type) {
		case *dns.A:
			if a, ok := netip.AddrFromSlice(rr.A); ok {
				addrs = append(addrs, a)
			}
		case *dns.AAAA:
			if a, ok := netip.AddrFromSlice(rr.AAAA); ok {
				addrs = append(addrs, a)
			}
		}
	}
	if len(addrs) == 0 {
		return
	}
	for n := range names {
		if name, ip, err := NormalizeHost(strings.TrimSuffix(n, ".")); err == nil && !ip.IsValid() {
			t.learn(name, addrs...)
		}
	}
}

// known returns the unexpired names ip was given for.
func (t *addrNames) known(ip netip.Addr) []string {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for name, exp := range t.names[ip] {
		if now.Before(exp) {
			out = append(out, name)
		}
	}
	return out
}

// deniedAddr reports whether ip is known as an address of a name that p
// denies, and if so why (see the rule above).
func (n *Network) deniedAddr(ctx context.Context, p *Policy, ip netip.Addr) (reason string, denied bool) {
	ip = ip.Unmap()
	denies := func(name string) (string, bool) {
		if rule, ok := p.hostRule(name); !ok && strings.HasPrefix(rule, "deny ") {
			return fmt.Sprintf("%s is an address of %s, which is denied (%s)", ip, name, rule), true
		}
		return "", false
	}
	for _, name := range n.names.known(ip) {
		if r, ok := denies(name); ok {
			return r, true
		}
	}
	for name, addrs := range n.names.exactDenies(ctx, n, p) {
		if slices.Contains(addrs, ip) {
			if r, ok := denies(name); ok {
				return r, true
			}
		}
	}
	return "", false
}

// exactDenies returns p's Deny patterns that are plain names (no
// wildcard, no IP literal) with their addresses as the host resolves
// them (--resolve pins first), looked up again when older than
// denyLookupTTL. It waits for lookups in progress up to
// denyLookupTimeout; a name whose lookup has not finished or failed
// counts as having no address (a failed one is tried again after
// denyRetry).
func (t *addrNames) exactDenies(ctx context.Context, n *Network, p *Policy) map[string][]netip.Addr {
	now := time.Now()
	pending := map[string]*denyLookup{}
	t.mu.Lock()
	for _, pat := range p.Deny {
		if _, err := netip.ParseAddr(pat); err == nil || strings.Contains(pat, "*") {
			continue
		}
		l := t.deny[pat]
		if l == nil || l.finished() && now.After(l.expires) {
			l = &denyLookup{done: make(chan struct{})}
			t.deny[pat] = l
			t.lookupDeny(n, p, pat, l)
		}
		pending[pat] = l
	}
	for name := range t.deny {
		if !slices.Contains(p.Deny, name) {
			delete(t.deny, name)
		}
	}
	t.mu.Unlock()
	timer := time.NewTimer(denyLookupTimeout)
	defer timer.Stop()
	out := map[string][]netip.Addr{}
	for name, l := range pending {
		select {
		case <-l.done:
			out[name] = l.addrs
		case <-timer.C:
			return out
		case <-ctx.Done():
			return out
		}
	}
	return out
}

// denyLookup is one host-side resolution of a denied name; addrs is
// set before done is closed.
type denyLookup struct {
	addrs   []netip.Addr
	expires time.Time
	done    chan struct{}
}

func (l *denyLookup) finished() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// denyRetry is how soon a failed lookup of a denied name is tried again.
const denyRetry = 5 * time.Second

// lookupDeny resolves name in the background, bounded by the network's
// life and denyLookupTimeout, and fills in l.
func (t *addrNames) lookupDeny(n *Network, p *Policy, name string, l *denyLookup) {
	// A panic leaves the name without addresses until denyRetry.
	contain.Go("a denied name's lookup", func(pe *contain.PanicError) {
		n.logPanic(pe, "panic looking up a denied name")
	}, func() {
		defer close(l.done)
		l.expires = time.Now().Add(denyRetry)
		if pin, ok := p.pinned(name); ok {
			l.addrs, l.expires = []netip.Addr{pin.Unmap()}, time.Now().Add(denyLookupTTL)
			return
		}
		ctx, cancel := context.WithTimeout(n.ctx, denyLookupTimeout)
		defer cancel()
		found, err := n.opts.LookupHost(ctx, name)
		if err != nil {
			return
		}
		for _, a := range found {
			l.addrs = append(l.addrs, a.Unmap())
		}
		l.expires = time.Now().Add(denyLookupTTL)
	})
}
