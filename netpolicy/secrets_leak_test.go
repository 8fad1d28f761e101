package netpolicy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gondolin/gondolin/netpolicy/netpolicytest"
)

// These tests are written from the guest's side: each is a way a hostile
// guest (root in the VM) tries to read a secret's value back through a
// server that stores or repeats what the host sent it. None may work.

// requestBin stores what a request carried (/in: the request's headers,
// the Basic credentials decoded) and gives it back later, however asked:
// /show serves it with http.ServeContent (Range, If-Range, multipart
// byteranges), gzip-compressed with ?gzip=1; /early sends it in a 103
// Early Hints response before the final one; /ws upgrades to a
// WebSocket-like stream and writes it there; /tail is a long response
// that writes the next thing stored when it is stored.
type requestBin struct {
	mu      sync.Mutex
	stored  []byte
	changed chan struct{} // closed and replaced when something is stored
	seen    []http.Header // every request's headers, as the upstream got them
}

func newRequestBin() *requestBin { return &requestBin{changed: make(chan struct{})} }

func (b *requestBin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	b.seen = append(b.seen, r.Header.Clone())
	stored, changed := b.stored, b.changed
	b.mu.Unlock()
	switch r.URL.Path {
	case "/in":
		var s bytes.Buffer
		r.Header.Write(&s)
		if u, p, ok := r.BasicAuth(); ok {
			fmt.Fprintf(&s, "basic user=%s pass=%s\n", u, p)
		}
		b.mu.Lock()
		b.stored = s.Bytes()
		close(b.changed)
		b.changed = make(chan struct{})
		b.mu.Unlock()
		io.WriteString(w, "stored\n")
	case "/show":
		if r.URL.Query().Get("gzip") == "1" {
			w.Header().Set("Content-Encoding", "gzip")
			stored = gzipped(stored)
		}
		http.ServeContent(w, r, "bin.txt", time.Unix(1e9, 0), bytes.NewReader(stored))
	case "/early":
		w.Header().Set("Link", "</style.css>; rel=preload; x=\""+string(stored)+"\"")
		w.Header().Set("X-Auth", r.Header.Get("Authorization"))
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		w.Header().Del("X-Auth")
		io.WriteString(w, "ok\n")
	case "/ws":
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		fmt.Fprintf(brw, "frame: auth=%s stored=%s\n", r.Header.Get("Authorization"), stored)
		brw.Flush()
		time.Sleep(200 * time.Millisecond)
	case "/tail":
		io.WriteString(w, "waiting\n")
		http.NewResponseController(w).Flush()
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		case <-time.After(15 * time.Second):
			return
		}
		b.mu.Lock()
		w.Write(b.stored)
		b.mu.Unlock()
	default:
		http.NotFound(w, r)
	}
}

func (b *requestBin) requests() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.seen)
}

func (b *requestBin) lastHeader() http.Header {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.seen[len(b.seen)-1]
}

// leakEnv is a VM with a request bin reachable as api.test (where the
// secret may go) and as other.test (another name for the same server).
type leakEnv struct {
	t    *testing.T
	n    *Network
	g    *netpolicytest.Guest
	bin  *requestBin
	port string
}

func newLeakEnv(t *testing.T, secret string) *leakEnv {
	bin := newRequestBin()
	up := newUpstream(t, true, bin.ServeHTTP)
	n := newTestNetwork(t, localPolicy("api.test", "other.test"))
	g := newTestGuest(t, n)
	e := &leakEnv{t: t, n: n, g: g, bin: bin, port: up.port()}
	if secret != "" {
		e.setSecret(secret)
	}
	return e
}

func (e *leakEnv) setSecret(spec string) string {
	e.t.Helper()
	sec, err := ParseHostSecret(spec, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.n.UpdatePolicy(func(p *Policy) error { p.SetSecret(sec); return nil }); err != nil {
		e.t.Fatal(err)
	}
	return placeholderOf(e.t, e.n, sec.Name)
}

func (e *leakEnv) url(host, path string) string {
	return "https://" + host + ":" + e.port + path
}

// body is the status and body of a guest request, as the guest gets
// them (decoded if gzip).
func (e *leakEnv) body(host, path string, h http.Header) (int, string) {
	e.t.Helper()
	c := &http.Client{Transport: e.g.Transport(), Timeout: 20 * time.Second}
	defer c.CloseIdleConnections()
	req, _ := http.NewRequest("GET", e.url(host, path), nil)
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// store has the bin keep a request that carries the placeholder as a
// bearer token and in Basic credentials.
func (e *leakEnv) store(ph string) {
	e.t.Helper()
	got := guestDo(e.t, e.g, "GET", e.url("api.test", "/in"), http.Header{
		"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:"+ph))},
		"X-Token":       {"Bearer " + ph},
	}, nil)
	if got.status != 200 {
		e.t.Fatalf("storing: %d\n%s", got.status, got.all)
	}
}

// noLeak fails the test if s holds any value in any form the guest must
// never see.
func noLeak(t *testing.T, what, s string, values ...string) {
	t.Helper()
	var got []string
	for _, v := range values {
		for form, leak := range leakedForms(v) {
			if strings.Contains(s, leak) {
				got = append(got, form)
			}
		}
	}
	if len(got) > 0 {
		slices.Sort(got)
		t.Errorf("%s: the guest got the %s:\n%.2000s", what, strings.Join(got, "; "), s)
	}
}

// TestLeakEarlyHints: a 103 Early Hints (any 1xx) response's headers
// reach the guest before the final response, which is where scrubbing
// used to start.
func TestLeakEarlyHints(t *testing.T) {
	e := newLeakEnv(t, "TOKEN@api.test="+echoValue)
	ph := placeholderOf(t, e.n, "TOKEN")
	e.store(ph)
	c := &http.Client{Transport: e.g.Transport(), Timeout: 20 * time.Second}
	defer c.CloseIdleConnections()
	for _, host := range []string{"api.test", "other.test"} {
		var hints strings.Builder
		req, _ := http.NewRequest("GET", e.url(host, "/early"), nil)
		if host == "api.test" {
			req.Header.Set("Authorization", "Bearer "+ph)
		}
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				fmt.Fprintf(&hints, "%d %v\n", code, h)
				return nil
			},
		}))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if !strings.Contains(hints.String(), "103") {
			t.Fatalf("%s: no 103 reached the guest: %q", host, hints.String())
		}
		noLeak(t, host+": 103 headers", hints.String(), echoValue)
	}
}

// TestLeakWebSocketToSecretHost: after a 101 the connection is a byte
// stream the host does not scrub, so a server that writes the
// Authorization header it got (or a stored one) into its first frame
// hands the value over.
func TestLeakWebSocketToSecretHost(t *testing.T) {
	e := newLeakEnv(t, "TOKEN@api.test="+echoValue)
	ph := placeholderOf(t, e.n, "TOKEN")
	e.store(ph)
	// Another name for the same server (other.test) is refused too: the
	// server could write the stored value into the stream.
	for _, tc := range []struct{ host, auth string }{{"api.test", "Bearer " + ph}, {"api.test", ""}, {"other.test", ""}} {
		host, auth := tc.host, tc.auth
		before := e.bin.requests()
		raw := e.g.MustDial(t, host+":"+e.port)
		c := tls.Client(raw, &tls.Config{ServerName: host, RootCAs: e.g.Roots()})
		req := "GET /ws HTTP/1.1\r\nHost: " + host + ":" + e.port + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
		if auth != "" {
			req += "Authorization: " + auth + "\r\n"
		}
		io.WriteString(c, req+"\r\n")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var all bytes.Buffer
		br := bufio.NewReader(io.TeeReader(c, &all))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("reading the response: %v\n%s", err, all.Bytes())
		}
		io.ReadAll(resp.Body)
		if resp.StatusCode == http.StatusSwitchingProtocols {
			io.ReadAll(br) // the stream, until the server closes it
		}
		c.Close()
		noLeak(t, fmt.Sprintf("WebSocket (with a placeholder: %v)", auth != ""), all.String(), echoValue)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(all.String(), "WebSocket") {
			t.Errorf("upgrade to a secret's host: %d, want a 403 that says why:\n%s", resp.StatusCode, all.Bytes())
		}
		if e.bin.requests() != before {
			t.Errorf("refused, but the upstream saw the upgrade")
		}
	}
	found := false
	for _, ev := range e.n.Events() {
		if ev.Action == Blocked && ev.Proto == "wss" && strings.Contains(ev.Reason, "WebSocket") {
			found = true
		}
	}
	if !found {
		t.Errorf("no blocked wss event")
	}
}

// TestLeakRange: a server that stored the value serves the stored copy
// in pieces (Range), none of which holds a whole value for the scrubber
// to recognise; the guest puts them together.
func TestLeakRange(t *testing.T) {
	e := newLeakEnv(t, "TOKEN@api.test="+echoValue)
	ph := placeholderOf(t, e.n, "TOKEN")
	e.store(ph)
	for _, host := range []string{"api.test", "other.test"} {
		for _, hdr := range []string{"Range", "Request-Range"} {
			var whole strings.Builder
			for off := 0; off < 4096; off += 7 {
				h := http.Header{hdr: {fmt.Sprintf("bytes=%d-%d", off, off+6)}}
				if off%2 == 1 {
					h.Set("If-Range", time.Unix(1e9, 0).UTC().Format(http.TimeFormat))
				}
				status, body := e.body(host, "/show", h)
				whole.WriteString(body)
				if status != http.StatusPartialContent {
					break // the whole thing came at once
				}
			}
			noLeak(t, host+" "+hdr+" pieces put together", whole.String(), echoValue)
			for _, k := range []string{"Range", "If-Range", "Request-Range"} {
				if v := e.bin.lastHeader().Get(k); v != "" {
					t.Errorf("%s: the upstream got %s: %s", host, k, v)
				}
			}
		}
		// Several ranges at once: a multipart/byteranges answer.
		got := guestDo(t, e.g, "GET", e.url(host, "/show"), http.Header{"Range": {"bytes=0-9,10-19,20-29,30-39,40-49,50-59,60-69,70-79"}}, nil)
		noLeak(t, host+" multipart ranges", got.all, echoValue)
	}
}

// TestLeakOtherNamesAndPastValues: a stored echo read back where
// responses were not scrubbed: through another name for the same
// server, and after the secret was removed or its value rotated.
func TestLeakOtherNamesAndPastValues(t *testing.T) {
	const newValue = "next/token+value=43&<z>"
	e := newLeakEnv(t, "TOKEN@api.test="+echoValue)
	ph := placeholderOf(t, e.n, "TOKEN")
	read := func(what string, values ...string) {
		t.Helper()
		for _, host := range []string{"api.test", "other.test"} {
			for _, q := range []string{"", "?gzip=1"} {
				got := guestDo(t, e.g, "GET", e.url(host, "/show"+q), http.Header{"Accept-Encoding": {"gzip"}}, nil)
				if got.status != 200 {
					t.Fatalf("%s from %s: %d\n%s", what, host, got.status, got.all)
				}
				noLeak(t, what+", read from "+host+q, got.all, values...)
			}
		}
	}
	e.store(ph)
	read("stored", echoValue)

	// Rotated: the old value is still stored upstream.
	e.setSecret("TOKEN@api.test=" + newValue)
	read("after rotation", echoValue)
	e.store(ph)
	read("new value stored", echoValue, newValue)

	// Removed: nothing is substituted any more, what is stored stays.
	if err := e.n.UpdatePolicy(func(p *Policy) error { p.RemoveSecret("TOKEN"); return nil }); err != nil {
		t.Fatal(err)
	}
	read("after secret rm", echoValue, newValue)
}

// TestLeakBasicFlood: the Basic credentials the host wrote are
// remembered for scrubbing; the guest picks the user name, so it can
// have the host write as many different ones as it likes, trying to
// push an early one out.
func TestLeakBasicFlood(t *testing.T) {
	e := newLeakEnv(t, "TOKEN@api.test="+echoValue)
	ph := placeholderOf(t, e.n, "TOKEN")
	e.store(ph)
	for i := range 100 {
		cred := base64.StdEncoding.EncodeToString([]byte("user" + strconv.Itoa(i) + ":" + ph))
		guestDo(t, e.g, "GET", e.url("api.test", "/other"), http.Header{"Authorization": {"Basic " + cred}}, nil)
	}
	got := guestDo(t, e.g, "GET", e.url("other.test", "/show"), nil, nil)
	noLeak(t, "after 100 other credentials", got.all, echoValue)
}

// TestLeakDuringStream: a long response (a log tail, server-sent
// events) that started before a secret existed, or before its current
// value was set, carries an echo of a request made after.
func TestLeakDuringStream(t *testing.T) {
	const value2 = "second/token+value=44&<w>"
	e := newLeakEnv(t, "")
	c := rawClient(e.g)
	defer c.CloseIdleConnections()
	for _, step := range []struct{ name, spec, value string }{
		{"first secret set while streaming", "TOKEN@api.test=" + echoValue, echoValue},
		{"value rotated while streaming", "TOKEN@api.test=" + value2, value2},
	} {
		// A scrubbed stream reaches the guest some bytes late, so its
		// first line may not come before the end: read it whole on the
		// side, and start the next request once the server has this one.
		before := e.bin.requests()
		got := make(chan string, 1)
		go func() {
			resp, err := c.Get(e.url("other.test", "/tail"))
			if err != nil {
				got <- err.Error()
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body) // cut off, or scrubbed
			got <- string(b)
		}()
		for e.bin.requests() == before {
			time.Sleep(5 * time.Millisecond)
		}
		ph := e.setSecret(step.spec)
		e.store(ph)
		noLeak(t, step.name, <-got, step.value)
	}
}

// TestNoScrubWithoutSecrets: a VM that never had a secret gets its
// responses as the upstream sent them (encoding, length, ranges).
func TestNoScrubWithoutSecrets(t *testing.T) {
	e := newLeakEnv(t, "")
	e.store("nothing secret here")
	c := rawClient(e.g)
	defer c.CloseIdleConnections()
	req, _ := http.NewRequest("GET", e.url("other.test", "/show?gzip=1"), nil)
	req.Header.Set("Accept-Encoding", "gzip")
	req.Header.Set("Range", "bytes=0-3")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Encoding") != "gzip" || resp.ContentLength != 4 || len(b) != 4 {
		t.Errorf("got %d, encoding %q, length %d (%d bytes); want 206, gzip, 4", resp.StatusCode, resp.Header.Get("Content-Encoding"), resp.ContentLength, len(b))
	}
	if got := e.bin.lastHeader().Get("Accept-Encoding"); got != "gzip" {
		t.Errorf("upstream got Accept-Encoding %q", got)
	}
}
