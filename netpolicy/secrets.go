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

// applySecrets substitutes placeholders with real values in the request's
// header values (Basic credentials decoded, substituted and re-encoded)
// and URL, for secrets whose hosts include host; and it refuses a request
// that carries any placeholder, or any real value, to a host not allowed
// for that secret, or a placeholder whose value is not known. Bodies are
// neither substituted nor scanned: the guest never has a real value to put
// there, and the host never puts one there.
func (p *Policy) applySecrets(host string, r *http.Request) secretVerdict {
	var v secretVerdict
	if len(p.Secrets) == 0 {
		return v
	}
	// Host header: never substituted, only checked.
	p.scan(host, r.Host, &v, false, nil)
	for key, vals := range r.Header {
		for i, val := range vals {
			if scheme, cred, ok := basicCredentials(key, val); ok {
				if out := p.scan(host, cred, &v, true, nil); out != cred {
					vals[i] = scheme + base64.StdEncoding.EncodeToString([]byte(out))
					continue
				}
			}
			vals[i] = p.scan(host, val, &v, true, nil)
		}
	}
	// The URL: checked in decoded form too (so %-encoding hides nothing),
	// substituted in raw form with the value escaped to fit.
	if path, err := url.PathUnescape(r.URL.EscapedPath()); err == nil {
		p.scan(host, path, &v, false, nil)
	}
	if q, err := url.QueryUnescape(r.URL.RawQuery); err == nil {
		p.scan(host, q, &v, false, nil)
	}
	rawPath := r.URL.EscapedPath()
	if out := p.scan(host, rawPath, &v, true, url.PathEscape); out != rawPath {
		if path, err := url.PathUnescape(out); err == nil {
			r.URL.Path, r.URL.RawPath = path, out
		}
	}
	r.URL.RawQuery = p.scan(host, r.URL.RawQuery, &v, true, url.QueryEscape)
	return v
}

// scan checks s for every secret's placeholder and value and records the
// verdict. With substitute set it returns s with the placeholders of
// secrets allowed for host replaced by their values (passed through
// escape, when given, to fit a URL).
func (p *Policy) scan(host, s string, v *secretVerdict, substitute bool, escape func(string) string) string {
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
		if substitute {
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

// redact replaces every secret value in s by its name, for error messages
// that might quote a request.
func (p *Policy) redact(s string) string {
	for _, sec := range p.Secrets {
		if v := sec.Value.Reveal(); v != "" {
			s = strings.ReplaceAll(s, v, "["+sec.Name+"]")
		}
	}
	return s
}

// scrubResponse puts placeholders back where an upstream echoes a real
// value in a response header, so the guest cannot learn it that way.
// (Response bodies are streamed untouched.)
func (p *Policy) scrubResponse(h http.Header) {
	for _, vals := range h {
		for i, val := range vals {
			for _, sec := range p.Secrets {
				if v := sec.Value.Reveal(); v != "" && sec.Placeholder != "" {
					val = strings.ReplaceAll(val, v, sec.Placeholder)
				}
			}
			vals[i] = val
		}
	}
}
