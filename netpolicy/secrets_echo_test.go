package netpolicy

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gondolin/gondolin/netpolicy/netpolicytest"
)

// The values have the characters that make their echo forms differ
// from them (percent-encoding, JSON escaping), so that each form is
// exercised.
const (
	echoValue = "real/token+value=42&<x>"
	urlValue  = "url/key+value=99&<y>" // of the secret with the url option
)

// echoHandler repeats the request back, the way echo services and
// error pages do, in the form the X-Mode header asks for: the request
// line as received, the decoded path and query, every header, the Basic
// credentials decoded, and the body; also the Authorization header and
// the URL in response headers. last keeps the previous echo, for a
// request bin's "show me what you got" page.
type echoHandler struct {
	mu   sync.Mutex
	last []byte
	seen []*http.Request
	body [][]byte // seen's bodies, read
}

func (e *echoHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s\npath=%s query=%s\n", r.Method, r.RequestURI, r.URL.Path, r.URL.Query())
	r.Header.Write(&b)
	if u, p, ok := r.BasicAuth(); ok {
		fmt.Fprintf(&b, "basic user=%s pass=%s\n", u, p)
	}
	b.Write(body)
	e.mu.Lock()
	e.seen = append(e.seen, r)
	e.body = append(e.body, body)
	prev := e.last
	e.last = b.Bytes()
	e.mu.Unlock()

	w.Header().Set("X-Echo-Auth", r.Header.Get("Authorization"))
	w.Header().Set("X-Echo-Url", r.URL.String())
	out := b.Bytes()
	switch r.Header.Get("X-Mode") {
	case "drip": // a byte per write, each flushed: values arrive split
		rc := http.NewResponseController(w)
		for _, c := range out {
			w.Write([]byte{c})
			rc.Flush()
		}
		return
	case "json-slash": // JSON as PHP writes it: "/" escaped
		j, _ := json.Marshal(map[string]any{"headers": r.Header, "url": r.URL.String()})
		out = bytes.ReplaceAll(j, []byte("/"), []byte(`\/`))
	case "gzip": // compressed whatever the request accepts
		w.Header().Set("Content-Encoding", "gzip")
		out = gzipped(out)
	case "br": // labelled with an encoding the host cannot decode
		w.Header().Set("Content-Encoding", "br")
	case "trailer":
		w.Header().Set("Trailer", "X-Echo-Trailer")
		w.Write(out)
		w.Header().Set("X-Echo-Trailer", r.Header.Get("Authorization"))
		return
	case "last": // a request bin: what an earlier request carried
		out = prev
	}
	w.Write(out)
}

// gzipped is b compressed, as an upstream sends a gzip body.
func gzipped(b []byte) []byte {
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(b)
	zw.Close()
	return z.Bytes()
}

func (e *echoHandler) requests() ([]*http.Request, [][]byte) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*http.Request(nil), e.seen...), append([][]byte(nil), e.body...)
}

// guestResponse is everything the guest got back.
type guestResponse struct {
	status int
	all    string // status line, headers, body (decoded if gzip) and trailer
}

// rawClient is a guest HTTP client that does not decompress by itself,
// so the test sees what the host sent.
func rawClient(g *netpolicytest.Guest) *http.Client {
	tr := g.Transport()
	tr.DisableCompression = true
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// guestDo sends a request from the guest with a rawClient.
func guestDo(t *testing.T, g *netpolicytest.Guest, method, url string, hdr http.Header, body io.Reader) guestResponse {
	t.Helper()
	c := rawClient(g)
	defer c.CloseIdleConnections()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	if resp.Header.Get("Content-Encoding") == "gzip" {
		// A guest client would decompress it: so must the check.
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		b, _ = io.ReadAll(zr)
	}
	var all bytes.Buffer
	fmt.Fprintf(&all, "%s\n", resp.Status)
	resp.Header.Write(&all)
	all.Write(b)
	resp.Trailer.Write(&all)
	return guestResponse{resp.StatusCode, all.String()}
}

// leakedForms are the spellings of a value the guest must never see:
// the value and the Basic credentials the host wrote with it, as they
// are, percent-encoded and JSON-escaped (also with "/" escaped).
func leakedForms(value string) map[string]string {
	out := map[string]string{}
	for name, s := range map[string]string{"value": value, "basic": base64.StdEncoding.EncodeToString([]byte("x-access-token:" + value))} {
		j, _ := json.Marshal(s)
		out[name] = s
		out[name+" query-escaped"] = url.QueryEscape(s)
		out[name+" path-escaped"] = url.PathEscape(s)
		out[name+" JSON"] = string(j[1 : len(j)-1])
		out[name+" JSON, slashes escaped"] = strings.ReplaceAll(string(j[1:len(j)-1]), "/", `\/`)
	}
	return out
}

// expand fills a header template: {PH} is the placeholder, and a value
// "basic USER:PASS" becomes Basic credentials.
func expand(v, ph string) string {
	v = strings.ReplaceAll(v, "{PH}", ph)
	if cred, ok := strings.CutPrefix(v, "basic "); ok {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(cred))
	}
	return v
}

func placeholderOf(t *testing.T, n *Network, name string) string {
	t.Helper()
	for _, s := range n.Policy().Secrets {
		if s.Name == name {
			return s.Placeholder
		}
	}
	t.Fatalf("no secret %s", name)
	return ""
}

// TestSecretsNotEchoed sends requests that carry a placeholder to an
// upstream that echoes them every way it can and checks that the guest
// never gets the real value back, in any form the host wrote it.
func TestSecretsNotEchoed(t *testing.T) {
	echo := &echoHandler{}
	api := newUpstream(t, true, echo.ServeHTTP)
	plain := newUpstream(t, false, echo.ServeHTTP)
	p := localPolicy("api.test", "plain.test")
	n := newTestNetwork(t, p)
	g := newTestGuest(t, n)
	g.Record()

	type request struct {
		method, path string
		header       map[string]string // {PH} is replaced by the placeholder
	}
	tests := []struct {
		name   string
		secret string // --host-secret spec the requests use, with its =VALUE
		plain  bool   // plain HTTP to an allow-internal address
		reqs   []request
		// wantStatus is the status of the last request. A 403 must
		// also mean the upstream never saw it.
		wantStatus int
		// wantUpstream must hold in what the upstream saw for the
		// last request ({V} is the value).
		wantUpstream func(r *http.Request) string
	}{
		{
			name:       "bearer header echoed in the body a byte per write",
			secret:     "TOKEN@api.test,plain.test=" + echoValue,
			reqs:       []request{{"GET", "/user", map[string]string{"Authorization": "Bearer {PH}", "X-Mode": "drip"}}},
			wantStatus: 200,
			wantUpstream: func(r *http.Request) string {
				return want(r.Header.Get("Authorization"), "Bearer "+echoValue)
			},
		},
		{
			name:       "basic auth echoed encoded and decoded",
			secret:     "TOKEN@api.test,plain.test=" + echoValue,
			reqs:       []request{{"GET", "/", map[string]string{"Authorization": "basic x-access-token:{PH}"}}},
			wantStatus: 200,
			wantUpstream: func(r *http.Request) string {
				_, pass, _ := r.BasicAuth()
				return want(pass, echoValue)
			},
		},
		{
			name:       "custom header echoed as PHP's JSON",
			secret:     "TOKEN@api.test,plain.test=" + echoValue,
			reqs:       []request{{"GET", "/", map[string]string{"X-Api-Key": "{PH}", "Authorization": "basic x-access-token:{PH}", "X-Mode": "json-slash"}}},
			wantStatus: 200,
			wantUpstream: func(r *http.Request) string {
				return want(r.Header.Get("X-Api-Key"), echoValue)
			},
		},
		{
			name:       "placeholder in the query without the url option is refused",
			secret:     "TOKEN@api.test,plain.test=" + echoValue,
			reqs:       []request{{"GET", "/search?key={PH}", nil}},
			wantStatus: 403,
		},
		{
			name:       "placeholder in the path without the url option is refused",
			secret:     "TOKEN@api.test,plain.test=" + echoValue,
			reqs:       []request{{"GET", "/keys/{PH}", nil}},
			wantStatus: 403,
		},
		{
			name:       "url option: path and query substituted, their echoes scrubbed",
			secret:     "URLKEY:url@api.test=" + urlValue,
			reqs:       []request{{"GET", "/keys/{PH}?key={PH}", nil}},
			wantStatus: 200,
			wantUpstream: func(r *http.Request) string {
				return want(r.URL.Path+" "+r.URL.Query().Get("key"), "/keys/"+urlValue+" "+urlValue)
			},
		},
		{
			name:       "gzip body although identity was asked for",
			secret:     "TOKEN@api.test,plain.test=" + echoValue,
			reqs:       []request{{"GET", "/", map[string]string{"Authorization": "Bearer {PH}", "Accept-Encoding": "gzip, br", "X-Mode": "gzip"}}},
			wantStatus: 200,
			wantUpstream: func(r *http.Request) string {
				return want(r.Header.Get("Accept-Encoding"), "identity")
			},
		},
		{
			name:       "body in an encoding the host cannot decode is refused",
			secret:     "TOKEN@api.test,plain.test=" + echoValue,
			reqs:       []request{{"GET", "/", map[string]string{"Authorization": "Bearer {PH}", "X-Mode": "br"}}},
			wantStatus: 502,
		},
		{
			name:       "trailer echo",
			secret:     "TOKEN@api.test,plain.test=" + echoValue,
			reqs:       []request{{"GET", "/", map[string]string{"Authorization": "Bearer {PH}", "X-Mode": "trailer"}}},
			wantStatus: 200,
		},
		{
			name:   "request bin: a later request without the placeholder reads the echo back",
			secret: "TOKEN@api.test,plain.test=" + echoValue,
			reqs: []request{
				{"GET", "/bin/in", map[string]string{"Authorization": "Bearer {PH}"}},
				{"GET", "/bin/show", map[string]string{"X-Mode": "last"}},
			},
			wantStatus: 200,
		},
		{
			name:       "plain HTTP: no frame the guest receives holds the value",
			secret:     "TOKEN@api.test,plain.test=" + echoValue,
			plain:      true,
			reqs:       []request{{"GET", "/?x=1", map[string]string{"Authorization": "basic x-access-token:{PH}", "X-Mode": "drip"}}},
			wantStatus: 200,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sec, err := ParseHostSecret(tt.secret, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := n.UpdatePolicy(func(p *Policy) error { p.SetSecret(sec); return nil }); err != nil {
				t.Fatal(err)
			}
			ph := placeholderOf(t, n, sec.Name)
			base := "https://api.test:" + api.port()
			if tt.plain {
				base = "http://plain.test:" + plain.port()
			}
			var got guestResponse
			for _, rq := range tt.reqs {
				before, _ := echo.requests()
				hdr := http.Header{}
				for k, v := range rq.header {
					hdr.Set(k, expand(v, ph))
				}
				got = guestDo(t, g, rq.method, base+strings.ReplaceAll(rq.path, "{PH}", ph), hdr, nil)
				for _, v := range []string{echoValue, urlValue} {
					for form, leak := range leakedForms(v) {
						if strings.Contains(got.all, leak) {
							t.Errorf("%s %s: the guest got the %s:\n%s", rq.method, rq.path, form, got.all)
						}
					}
				}
				if got.status == 403 {
					if after, _ := echo.requests(); len(after) != len(before) {
						t.Errorf("refused, but the upstream saw the request")
					}
				}
			}
			if got.status != tt.wantStatus {
				t.Fatalf("status %d, want %d:\n%s", got.status, tt.wantStatus, got.all)
			}
			if tt.wantUpstream != nil {
				seen, _ := echo.requests()
				if msg := tt.wantUpstream(seen[len(seen)-1]); msg != "" {
					t.Errorf("upstream: %s", msg)
				}
			}
			if tt.plain {
				if frames := g.Received(); bytes.Contains(frames, []byte(echoValue)) || bytes.Contains(frames, []byte(urlValue)) {
					t.Errorf("a frame the guest received holds the value")
				}
			}
		})
	}
}

// want returns "" when got is what the upstream should have seen, else
// the difference (named, not shown: it may be the value).
func want(got, wanted string) string {
	if got == wanted {
		return ""
	}
	return fmt.Sprintf("saw %q, want %q", got, wanted)
}

// TestBodyExfilBlocked checks that a placeholder, or a real value, in a
// request body bound for a host the secret may not go to stops the
// upload before it leaves the host, wherever in the body it is and
// however the guest's writes split it; and that bodies to the secret's
// own host, and bodies without secrets, pass untouched.
func TestBodyExfilBlocked(t *testing.T) {
	echo := &echoHandler{}
	up := newUpstream(t, true, echo.ServeHTTP)
	p := localPolicy("api.test", "other.test")
	p.Secrets = []Secret{{Name: "TOKEN", Hosts: []string{"api.test"}, Value: NewSecretValue(echoValue)}}
	n := newTestNetwork(t, p)
	g := newTestGuest(t, n)
	ph := placeholderOf(t, n, "TOKEN")
	big := strings.Repeat("x", 1<<20) // past any prefix a bounded scan would read first

	tests := []struct {
		name  string
		host  string
		parts []string // the body, written in these pieces, each flushed; {PH} is the placeholder
		// chunked sends the body without a length, as a stream.
		chunked bool
		// blocked: the guest gets a 403 and the upstream never gets
		// the secret (it may see the body up to it).
		blocked bool
	}{
		{name: "placeholder in a JSON body", host: "other.test", parts: []string{`{"token":"{PH}"}`}, blocked: true},
		{name: "real value in a form body", host: "other.test", parts: []string{"leak=" + echoValue}, blocked: true},
		{name: "placeholder a megabyte into a stream", host: "other.test", parts: []string{big, "{PH}", "tail"}, chunked: true, blocked: true},
		{name: "placeholder split across two writes", host: "other.test", parts: []string{"a=" + ph[:20], ph[20:] + "&b=1"}, chunked: true, blocked: true},
		{name: "value split across two writes", host: "other.test", parts: []string{"a=" + echoValue[:5], echoValue[5:]}, chunked: true, blocked: true},
		{name: "placeholder to its own host goes as is", host: "api.test", parts: []string{`{"token":"{PH}"}`}},
		{name: "no secret", host: "other.test", parts: []string{big, "GONDOLIN_SECRET_ but no placeholder"}, chunked: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			full := strings.ReplaceAll(strings.Join(tt.parts, ""), "{PH}", ph)
			var body io.Reader = strings.NewReader(full)
			if tt.chunked {
				pr, pw := io.Pipe()
				go func() {
					for _, part := range tt.parts {
						if _, err := pw.Write([]byte(strings.ReplaceAll(part, "{PH}", ph))); err != nil {
							return
						}
						time.Sleep(20 * time.Millisecond) // let each piece go out on its own
					}
					pw.Close()
				}()
				body = pr
				defer pr.Close()
			}
			_, beforeBodies := echo.requests()
			got := guestDo(t, g, "POST", "https://"+tt.host+":"+up.port()+"/upload", http.Header{"Content-Type": {"application/json"}}, body)
			_, bodies := echo.requests()
			var upstreamGot []byte
			if len(bodies) > len(beforeBodies) {
				upstreamGot = bodies[len(bodies)-1]
			}
			if !tt.blocked {
				if got.status != 200 || string(upstreamGot) != full {
					t.Fatalf("status %d, upstream got %d of %d bytes:\n%.300s", got.status, len(upstreamGot), len(full), got.all)
				}
				return
			}
			if got.status != 403 || !strings.Contains(got.all, "secret TOKEN may only be sent to api.test") {
				t.Errorf("status %d, want 403:\n%.300s", got.status, got.all)
			}
			if bytes.Contains(upstreamGot, []byte(ph)) || bytes.Contains(upstreamGot, []byte(echoValue)) {
				t.Errorf("the upstream got the secret")
			}
			found := false
			for _, e := range n.Events() {
				if e.Action == Blocked && e.Host == tt.host && strings.Join(e.Secrets, ",") == "TOKEN" && strings.Contains(e.Reason, "request body") {
					found = true
				}
			}
			if !found {
				t.Errorf("no blocked event naming TOKEN")
			}
		})
	}
}
