package netpolicy

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
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

// responseScrubber returns what turns real values back into placeholders
// in the response to a request to host (headers, body and trailer), or
// nil when no secret may be sent to host. It covers every secret that may
// go to host, whether or not this request used it: a server that stores
// requests (a request bin, a log viewer) can return a value in the
// answer to a later request that carries no placeholder. v adds the
// encoded strings this request's substitution wrote.
func (p *Policy) responseScrubber(host string, v *secretVerdict) *replacer {
	var pairs []scrubPair
	for _, sec := range p.Secrets {
		if sec.Value.IsSet() && sec.Placeholder != "" && sec.secretHost(host) {
			pairs = append(pairs, echoPairs(sec.Value.Reveal(), sec.Placeholder)...)
		}
	}
	for _, e := range v.encoded {
		pairs = append(pairs, echoPairs(e.old, e.new)...)
	}
	return newReplacer(pairs)
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
