package netpolicy

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// minValueScan is the shortest secret value looked for in requests to
// other hosts: a shorter value would match ordinary text and block
// innocent requests.
const minValueScan = 8

// secretVerdict is the outcome of applying a policy's secrets to a
// request.
type secretVerdict struct {
	used    []string // secrets substituted
	blocked []string // secrets that make the request unsendable
	reason  string   // why, for the first blocked secret
	// encoded are strings the host wrote that hold a value in a form
	// other than its own (Basic credentials' base64), with the guest's
	// spelling of each, for the response scrubber.
	encoded []scrubPair
}

func (v *secretVerdict) block(name, reason string) {
	if !slices.Contains(v.blocked, name) {
		v.blocked = append(v.blocked, name)
	}
	if v.reason == "" {
		v.reason = reason
	}
}

func (v *secretVerdict) use(name string) {
	if !slices.Contains(v.used, name) {
		v.used = append(v.used, name)
	}
}

// secretHost reports whether s may be sent to host.
func (s *Secret) secretHost(host string) bool {
	for _, pat := range s.Hosts {
		if MatchHost(pat, host) {
			return true
		}
	}
	return false
}

// secretsFor names the secrets that may be sent to host.
func (p *Policy) secretsFor(host string) []string {
	var out []string
	for _, sec := range p.Secrets {
		if sec.secretHost(host) {
			out = append(out, sec.Name)
		}
	}
	return out
}

// part is where in a request scan looks, which decides what it may do
// with a placeholder for the request's host.
type part int

const (
	partHost   part = iota // the Host header: checked only
	partHeader             // a header value: substituted
	partURL                // the path or query: substituted for InURL secrets only
)

// applySecrets substitutes placeholders with real values in the request's
// header values (Basic credentials decoded, substituted and re-encoded),
// and in the URL for secrets that opted in (InURL), for secrets whose
// hosts include host; and it refuses a request that carries any
// placeholder, or any real value, to a host not allowed for that secret,
// a placeholder in the URL of a secret that did not opt in, or a
// placeholder whose value is not known. Bodies are never substituted
// (the host never puts a value there); they are scanned as they stream
// (scanBody).
func (p *Policy) applySecrets(host string, r *http.Request) secretVerdict {
	var v secretVerdict
	if len(p.Secrets) == 0 {
		return v
	}
	p.scan(host, r.Host, &v, partHost, nil)
	for key, vals := range r.Header {
		for i, val := range vals {
			if scheme, cred, ok := basicCredentials(key, val); ok {
				if out := p.scan(host, cred, &v, partHeader, nil); out != cred {
					enc := base64.StdEncoding.EncodeToString([]byte(out))
					v.encoded = append(v.encoded, scrubPair{old: enc, new: strings.TrimSpace(val[len(scheme):])})
					vals[i] = scheme + enc
					continue
				}
			}
			vals[i] = p.scan(host, val, &v, partHeader, nil)
		}
	}
	// The URL: checked in decoded form too (so %-encoding hides nothing),
	// substituted in raw form with the value escaped to fit.
	if path, err := url.PathUnescape(r.URL.EscapedPath()); err == nil {
		p.scan(host, path, &v, partURL, nil)
	}
	if q, err := url.QueryUnescape(r.URL.RawQuery); err == nil {
		p.scan(host, q, &v, partURL, nil)
	}
	rawPath := r.URL.EscapedPath()
	if out := p.scan(host, rawPath, &v, partURL, url.PathEscape); out != rawPath {
		if path, err := url.PathUnescape(out); err == nil {
			r.URL.Path, r.URL.RawPath = path, out
		}
	}
	r.URL.RawQuery = p.scan(host, r.URL.RawQuery, &v, partURL, url.QueryEscape)
	return v
}

// scan checks s, found in part pt of a request to host, for every
// secret's placeholder and value and records the verdict. It returns s
// with the placeholders of secrets allowed for host replaced by their
// values where pt allows it (passed through escape, when given, to fit a
// URL; in the URL, only a call with escape substitutes).
func (p *Policy) scan(host, s string, v *secretVerdict, pt part, escape func(string) string) string {
	for i := range p.Secrets {
		sec := &p.Secrets[i]
		value := sec.Value.Reveal()
		hasPH := sec.Placeholder != "" && strings.Contains(s, sec.Placeholder)
		hasVal := len(value) >= minValueScan && strings.Contains(s, value)
		if !hasPH && !hasVal {
			continue
		}
		if !sec.secretHost(host) {
			v.block(sec.Name, fmt.Sprintf("secret %s may only be sent to %s", sec.Name, strings.Join(sec.Hosts, ",")))
			continue
		}
		if !hasPH {
			continue // the real value, to its own host: nothing to do
		}
		if !sec.Value.IsSet() {
			v.block(sec.Name, fmt.Sprintf("secret %s has no value (values are not kept across supervisor restarts); set it again with: gondolin policy secret set", sec.Name))
			continue
		}
		if pt == partURL && !sec.InURL {
			v.block(sec.Name, fmt.Sprintf("secret %s is not substituted into URLs, which servers echo in too many places; send it in a header, or allow it with --host-secret %s:url@%s", sec.Name, sec.Name, strings.Join(sec.Hosts, ",")))
			continue
		}
		if pt == partHeader || (pt == partURL && escape != nil) {
			if escape != nil {
				value = escape(value)
			}
			s = strings.ReplaceAll(s, sec.Placeholder, value)
			v.use(sec.Name)
		}
	}
	return s
}

// basicCredentials splits an Authorization (or Proxy-Authorization)
// header with the Basic scheme into its scheme prefix and decoded
// user:password.
func basicCredentials(key, val string) (scheme, cred string, ok bool) {
	if key != "Authorization" && key != "Proxy-Authorization" {
		return "", "", false
	}
	const prefix = "basic "
	if len(val) < len(prefix) || !strings.EqualFold(val[:len(prefix)], prefix) {
		return "", "", false
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(val[len(prefix):]))
	if err != nil {
		return "", "", false
	}
	return val[:len(prefix)], string(b), true
}

// redact replaces every secret value in s, in each echo form, by the
// secret's name, for error messages that might quote a request.
func (p *Policy) redact(s string) string {
	var pairs []scrubPair
	for _, sec := range p.Secrets {
		if v := sec.Value.Reveal(); v != "" {
			pairs = append(pairs, echoPairs(v, "["+sec.Name+"]")...)
		}
	}
	return newReplacer(pairs).Replace(s)
}

// maxRetired is how many values a Network goes on scrubbing from
// responses after they left its policy (a secret removed, or given a
// new value): the most recently seen.
const maxRetired = 64

// maxEncoded is how many Basic credentials a Network scrubs from
// responses for its life. The guest chooses the user name, so if a new
// one pushed an old one out, the guest could flush a stored echo of the
// old one out of the scrubber: a request that would write one more is
// refused instead.
const maxEncoded = 64

// scrubHistory is what a Network scrubs from every response from every
// host: the values (of minValueScan bytes or more; a shorter one would
// match ordinary data) of the secrets in every policy it served a request
// under, the current ones and the last maxRetired that left the policy,
// each turned back into its placeholder; and the Basic credentials it
// wrote, turned back into the guest's. A server may store what the host
// sent and give it back later, under another of its names (or an IP
// literal), or after the value was rotated or the secret removed. Until a
// request is served under a policy with a secret value (of any length) it
// is inactive, and responses are not touched.
type scrubHistory struct {
	mu      sync.Mutex
	seen    *Policy     // the policy last folded in
	active  bool        // a policy with a secret value was seen
	current []scrubPair // value -> placeholder, for seen's secrets
	retired []scrubPair // values no longer in seen, oldest first
	encoded []scrubPair // Basic credentials written -> the guest's
	state   atomic.Pointer[scrubState]
}

// scrubState is one version of an active scrubHistory's strings, every
// echo form of each, and their replacer (nil while there are none: only
// short values were seen).
type scrubState struct {
	pairs []scrubPair
	rep   *replacer
}

// isActive reports whether responses are scrubbed.
func (h *scrubHistory) isActive() bool { return h.state.Load() != nil }

// load returns the replacer of everything scrubbed now, or nil.
func (h *scrubHistory) load() *replacer {
	if st := h.state.Load(); st != nil {
		return st.rep
	}
	return nil
}

// observe folds in the values of p, under which a request is about to
// be served: values that were current and are not in p are retired.
func (h *scrubHistory) observe(p *Policy) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if p == h.seen {
		return
	}
	h.seen = p
	var cur []scrubPair
	for _, sec := range p.Secrets {
		v := sec.Value.Reveal()
		h.active = h.active || v != ""
		if sec.Placeholder != "" && len(v) >= minValueScan && !hasOld(cur, v) {
			cur = append(cur, scrubPair{v, sec.Placeholder})
		}
	}
	for _, c := range h.current {
		if !hasOld(cur, c.old) {
			h.retired = append(dropOld(h.retired, c.old), c)
		}
	}
	for _, c := range cur {
		h.retired = dropOld(h.retired, c.old)
	}
	if over := len(h.retired) - maxRetired; over > 0 {
		h.retired = slices.Delete(h.retired, 0, over)
	}
	h.current = cur
	h.rebuild()
}

// remember adds the Basic credentials a request's substitution wrote;
// it fails, adding none, when that would make more than maxEncoded.
func (h *scrubHistory) remember(enc []scrubPair) error {
	if len(enc) == 0 {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var add []scrubPair
	for _, e := range enc {
		if !hasOld(h.encoded, e.old) && !hasOld(add, e.old) {
			add = append(add, e)
		}
	}
	if len(add) == 0 {
		return nil
	}
	if len(h.encoded)+len(add) > maxEncoded {
		return fmt.Errorf("this VM has had %d different Basic credentials substituted, the most it scrubs responses of; reuse one of them (the same user name)", len(h.encoded))
	}
	h.encoded = append(h.encoded, add...)
	h.active = true // so it was already: a value was substituted
	h.rebuild()
	return nil
}

// rebuild publishes a new state if the strings changed.
func (h *scrubHistory) rebuild() {
	var pairs []scrubPair
	for _, list := range [][]scrubPair{h.current, h.encoded, h.retired} {
		for _, p := range list {
			pairs = append(pairs, echoPairs(p.old, p.new)...)
		}
	}
	if st := h.state.Load(); !h.active || (st != nil && slices.Equal(st.pairs, pairs)) {
		return
	}
	h.state.Store(&scrubState{pairs: pairs, rep: newReplacer(pairs)})
}

// scrubber returns what gives the replacer for the response to a request
// to host under p (which may be nil: nothing to replace yet), or nil
// while h is inactive and p has no short value for host: the response is
// not scrubbed. The replacer is asked for again as the response streams,
// so a value set while it streams is scrubbed from what comes after.
// Besides the history it covers the values shorter than minValueScan of
// p's secrets for host, which are scrubbed from their own hosts'
// responses only.
func (h *scrubHistory) scrubber(p *Policy, host string) func() *replacer {
	var local []scrubPair
	for _, sec := range p.Secrets {
		if v := sec.Value.Reveal(); v != "" && len(v) < minValueScan && sec.Placeholder != "" && sec.secretHost(host) {
			local = append(local, echoPairs(v, sec.Placeholder)...)
		}
	}
	if len(local) == 0 {
		if !h.isActive() {
			return nil
		}
		return h.load
	}
	var (
		mu   sync.Mutex
		base *scrubState
		rep  *replacer
	)
	return func() *replacer {
		st := h.state.Load()
		mu.Lock()
		defer mu.Unlock()
		if rep == nil || st != base {
			pairs := local
			if st != nil {
				pairs = append(slices.Clone(local), st.pairs...)
			}
			base, rep = st, newReplacer(pairs)
		}
		return rep
	}
}

func hasOld(pairs []scrubPair, old string) bool {
	return slices.ContainsFunc(pairs, func(p scrubPair) bool { return p.old == old })
}

func dropOld(pairs []scrubPair, old string) []scrubPair {
	return slices.DeleteFunc(pairs, func(p scrubPair) bool { return p.old == old })
}

// scanBody returns what a request body to host must not contain (see
// exfilScan), or nil when there is nothing to look for.
func (p *Policy) scanBody(host string) *exfilScan {
	var sc exfilScan
	for _, sec := range p.Secrets {
		if sec.secretHost(host) {
			continue
		}
		add := func(pat string) {
			sc.pats = append(sc.pats, []byte(pat))
			sc.names = append(sc.names, sec.Name)
			sc.reasons = append(sc.reasons, fmt.Sprintf("secret %s may only be sent to %s (found in the request body)", sec.Name, strings.Join(sec.Hosts, ",")))
			sc.maxLen = max(sc.maxLen, len(pat))
		}
		if sec.Placeholder != "" {
			add(sec.Placeholder)
		}
		if v := sec.Value.Reveal(); len(v) >= minValueScan {
			add(v)
		}
	}
	if len(sc.pats) == 0 {
		return nil
	}
	return &sc
}
