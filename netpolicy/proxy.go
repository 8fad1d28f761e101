package netpolicy

import (
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gondolin/gondolin/internal/contain"
)

// proxy is the HTTP side of mediation: one http.Server per VM reads the
// guest's requests (TLS terminated with the local CA), the policy decides,
// and a ReverseProxy replays allowed requests with the host's own client.
type proxy struct {
	n         *Network
	srv       *http.Server
	ln        *chanListener
	tlsConfig *tls.Config
	transport *http.Transport
	rp        *httputil.ReverseProxy
	// scrub is what responses are scrubbed of, for the Network's life.
	scrub scrubHistory
}

type ctxKey int

const (
	flowKey ctxKey = iota
	upstreamKey
)

// upstream is where an allowed request goes, decided by the handler and
// applied by the ReverseProxy's Rewrite.
type upstream struct {
	scheme, host string // host is HOST:PORT with the canonical host
	policy       *Policy
	event        Event
	// scrub, when set, gives what turns real values back into
	// placeholders in the response (see scrubHistory.scrubber): set for
	// every request once the Network has had a secret value, even while
	// it gives nil (nothing to replace yet).
	scrub func() *replacer
}

// replacer returns what the response's headers are scrubbed with now, or
// nil: for a request sent unscrubbed (no secret value yet), whatever h
// holds now, so a 1xx response that comes after a value was set is
// scrubbed.
func (up *upstream) replacer(h *scrubHistory) *replacer {
	if up.scrub != nil {
		return up.scrub()
	}
	return h.load()
}

func newProxy(n *Network) (*proxy, error) {
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	for _, c := range n.opts.UpstreamRoots {
		roots.AddCert(c)
	}
	px := &proxy{n: n, ln: newChanListener()}
	px.transport = &http.Transport{
		// Never the environment's proxy: egress is this process's own.
		Proxy:       nil,
		DialContext: n.containDial(px.dial),
		// Upstream TLS is verified against the host's real trust store
		// for the name the guest asked for (the Transport sets
		// ServerName from the request's host).
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
		// HTTP/1.1 upstream, like the guest side: WebSocket upgrades
		// need it, and one protocol keeps replay simple.
		ForceAttemptHTTP2:      false,
		MaxIdleConns:           64,
		MaxIdleConnsPerHost:    8,
		IdleConnTimeout:        60 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 1 << 20,
		// Pass the guest's Accept-Encoding through and the upstream's
		// encoding back, untouched (except once responses are
		// scrubbed of secrets: see rewrite and modifyResponse).
		DisableCompression: true,
	}
	px.rp = &httputil.ReverseProxy{
		Rewrite:        px.rewrite,
		Transport:      scrub1xx{px},
		ErrorHandler:   px.upstreamError,
		ModifyResponse: px.modifyResponse,
		BufferPool:     newBufferPool(),
		ErrorLog:       slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
	}
	px.tlsConfig = &tls.Config{
		GetConfigForClient: px.configForClient,
		// ALPN: HTTP/1.1 only, so every client speaks what this server
		// parses (an h2-only client fails the handshake visibly).
		NextProtos: []string{"http/1.1"},
		MinVersion: tls.VersionTLS12,
	}
	px.srv = &http.Server{
		Handler:           n.containHTTP(http.HandlerFunc(px.serveHTTP)),
		MaxHeaderBytes:    n.opts.MaxHeaderBytes,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// No h2 on the guest side (TLS here is terminated by hand).
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if tc, ok := c.(*tls.Conn); ok {
				c = tc.NetConn()
			}
			if fc, ok := c.(*flowConn); ok {
				ctx = context.WithValue(ctx, flowKey, fc.fl)
			}
			return ctx
		},
		ErrorLog: slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer contain.Recover("the HTTP server", n.loopPanic)
		px.srv.Serve(px.ln)
	}()
	return px, nil
}

func (px *proxy) close() {
	px.srv.Close()
	px.transport.CloseIdleConnections()
}

// serve hands a plain-HTTP flow to the server.
func (px *proxy) serve(c net.Conn) {
	if !px.ln.push(c) {
		c.Close()
	}
}

// serveTLS terminates TLS on a flow with a leaf certificate for its server
// name and hands the result to the server (which runs the handshake).
func (px *proxy) serveTLS(fc *flowConn) {
	if fc.fl.synthetic && fc.fl.sni != "" {
		// Refuse early when SNI contradicts DNS: no leaf is minted.
		name, ip, err := NormalizeHost(fc.fl.sni)
		if err != nil || ip.IsValid() || !px.n.synth.verify(fc.fl.dst.Addr(), name) {
			px.n.event(Event{Action: Blocked, Proto: "https", Host: fc.fl.sni, Port: fc.fl.dst.Port(),
				Reason: fmt.Sprintf("TLS server name does not match the name DNS gave %s", fc.fl.dst.Addr())})
			fc.Close()
			return
		}
	}
	px.serve(tls.Server(fc, px.tlsConfig))
}

// configForClient picks the leaf certificate: for the SNI name, or for the
// address the guest dialled when it sent none (https://IP).
func (px *proxy) configForClient(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	fc, ok := hello.Conn.(*flowConn)
	if !ok {
		return nil, errors.New("not a guest flow")
	}
	name := fc.fl.dst.Addr().String()
	if hello.ServerName != "" {
		n, ip, err := NormalizeHost(hello.ServerName)
		if err != nil {
			return nil, fmt.Errorf("bad server name %q", hello.ServerName)
		}
		name = canonicalHost(n, ip)
		// Our parse and crypto/tls's must agree, or the early check
		// in serveTLS looked at a different name.
		if fc.fl.sni != "" && fc.fl.sni != hello.ServerName {
			return nil, errors.New("ambiguous server name")
		}
	}
	leaf, err := px.n.ca.Leaf(name)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{*leaf},
		NextProtos:   []string{"http/1.1"},
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// blockedError is a refusal by policy at connect time (the second check).
type blockedError struct{ reason string }

func (e *blockedError) Error() string { return "blocked: " + e.reason }

// dialFailed says in ev why a connection upstream failed: Blocked with
// the reason for a refusal by policy, else Failed with the error
// (redacted: it may quote a secret).
func (ev *Event) dialFailed(p *Policy, err error) {
	var be *blockedError
	if errors.As(err, &be) {
		ev.Action, ev.Reason = Blocked, be.reason
	} else {
		ev.Action, ev.Reason = Failed, p.redact(err.Error())
	}
}

// dial connects to HOST:PORT for an allowed request (HTTP, HTTPS, SSH).
// It resolves the host itself (pins, IP literals, the host's resolver),
// checks every address against the internal ranges under the policy in
// force now, on this port, and connects only to an allowed address: a
// name that resolved to a public address when the request was checked
// but resolves to an internal one now (DNS rebinding) is refused here.
func (px *proxy) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return px.dialUpstream(ctx, addr, false)
}

// dialMapped connects to a TCP map's upstream, which the map itself
// authorizes (see Network.resolve).
func (px *proxy) dialMapped(ctx context.Context, m TCPMap) (net.Conn, error) {
	return px.dialUpstream(ctx, m.Upstream, true)
}

func (px *proxy) dialUpstream(ctx context.Context, addr string, mapped bool) (net.Conn, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("bad port %q", portStr)
	}
	name, ip, err := NormalizeHost(host)
	if err != nil {
		return nil, &blockedError{err.Error()}
	}
	p := px.n.policy.Load()
	allowed, reason, err := px.n.resolve(ctx, p, name, ip, uint16(port), mapped)
	if err != nil {
		return nil, err
	}
	if len(allowed) == 0 {
		return nil, &blockedError{reason}
	}
	d := net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	var last error
	for _, a := range allowed {
		c, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(a, uint16(port)).String())
		if err == nil {
			return c, nil
		}
		last = err
	}
	return nil, last
}

// serveHTTP decides one guest request and replays it if allowed.
func (px *proxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	n := px.n
	fl, _ := r.Context().Value(flowKey).(*flow)
	if fl == nil {
		http.Error(w, "gondolin: no flow", http.StatusInternalServerError)
		return
	}
	p := n.policy.Load()
	ev := Event{Proto: "http", Method: r.Method, Path: r.URL.Path, Port: fl.dst.Port(), Host: r.Host}
	if fl.tls {
		ev.Proto = "https"
	}
	refuse := func(status int, reason string) {
		ev.Action, ev.Status, ev.Reason = Blocked, status, reason
		n.event(ev)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Gondolin-Blocked", "1")
		w.WriteHeader(status)
		fmt.Fprintf(w, "gondolin: blocked %s %s: %s\n", r.Method, ev.Host, reason)
	}
	if r.Method == http.MethodConnect {
		w.Header().Set("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
		refuse(http.StatusMethodNotAllowed, "CONNECT tunnels are not allowed; requests are mediated one by one")
		return
	}
	name, ip, err := NormalizeHost(r.Host)
	if err != nil {
		refuse(http.StatusBadRequest, "bad Host header")
		return
	}
	host := canonicalHost(name, ip)
	ev.Host = host
	if fl.synthetic && (ip.IsValid() || !n.synth.verify(fl.dst.Addr(), host)) {
		refuse(http.StatusForbidden, fmt.Sprintf("Host %s is not the name DNS gave %s", host, fl.dst.Addr()))
		return
	}
	if r.TLS != nil && r.TLS.ServerName != "" {
		sn, sip, err := NormalizeHost(r.TLS.ServerName)
		if err != nil || canonicalHost(sn, sip) != host {
			refuse(http.StatusForbidden, fmt.Sprintf("Host %s does not match the TLS server name %s", host, r.TLS.ServerName))
			return
		}
	}
	rule, ok := p.hostRule(host)
	ev.Rule = rule
	if !ok {
		refuse(http.StatusForbidden, "host not allowed ("+rule+"); allow it with --allow-host or gondolin policy allow")
		return
	}
	if isWebSocket(r.Header) {
		if p.DisableWebSockets {
			refuse(http.StatusForbidden, "WebSockets are disabled (--disable-websockets)")
			return
		}
		ev.Proto = map[string]string{"http": "ws", "https": "wss"}[ev.Proto]
		// After the upgrade the connection is a stream of frames
		// that is not scrubbed: a server that writes a request's
		// headers (or a stored one) into it would hand over a value.
		if names := p.secretsFor(host); len(names) > 0 {
			ev.Secrets = names
			refuse(http.StatusForbidden, fmt.Sprintf("WebSockets are refused to a host secret %s may be sent to: the stream cannot be scrubbed of its value", strings.Join(names, ",")))
			return
		}
		// Nor to any other host once a value exists: a server that
		// stored one (under another of its names) could write it into
		// the stream.
		if px.scrub.isActive() || len(p.Secrets) > 0 {
			refuse(http.StatusForbidden, "WebSockets are refused in a VM with secrets: the stream cannot be scrubbed of a value a server stored")
			return
		}
	} else if r.Header.Get("Upgrade") != "" {
		// Only WebSocket upgrades are tunnelled; any other (h2c, ...)
		// is dropped and the request proceeds as plain HTTP/1.1.
		r.Header.Del("Upgrade")
		r.Header.Del("Connection")
	}
	sv := p.applySecrets(host, r)
	if len(sv.blocked) > 0 {
		ev.Secrets = sv.blocked
		refuse(http.StatusForbidden, sv.reason)
		return
	}
	ev.Secrets = sv.used
	// First check of the host's own resolution (dial checks again).
	allowed, reason, err := n.resolve(r.Context(), p, name, ip, fl.dst.Port(), false)
	if err != nil {
		ev.Action, ev.Status, ev.Reason = Failed, http.StatusBadGateway, p.redact(err.Error())
		n.event(ev)
		http.Error(w, "gondolin: "+ev.Reason, http.StatusBadGateway)
		return
	}
	if len(allowed) == 0 {
		refuse(http.StatusForbidden, reason)
		return
	}
	if len(sv.used) > 0 && !fl.tls && !grantedAll(allowed, fl.dst.Port(), p.AllowInternal) {
		refuse(http.StatusForbidden, "secrets are only substituted over HTTPS (or to an --allow-internal address)")
		return
	}
	// Every value in p (a request may carry it from now on) and every
	// Basic credential written is scrubbed from every later response.
	px.scrub.observe(p)
	if err := px.scrub.remember(sv.encoded); err != nil {
		ev.Secrets = sv.used
		refuse(http.StatusForbidden, err.Error())
		return
	}
	ev.Action = Allowed
	n.event(ev)
	scheme := "http"
	if fl.tls {
		scheme = "https"
	}
	up := &upstream{
		scheme: scheme,
		host:   net.JoinHostPort(host, strconv.Itoa(int(fl.dst.Port()))),
		policy: p,
		event:  ev,
		scrub:  px.scrub.scrubber(p, host),
	}
	if sc := p.scanBody(host); sc != nil && r.Body != nil && r.Body != http.NoBody {
		r.Body = newScanReader(r.Body, sc, func(name, reason string) error {
			// Recorded here: the upstream may answer before the cut
			// upload fails the round trip.
			e := ev
			e.Time, e.Action, e.Status, e.Reason, e.Secrets = time.Time{}, Blocked, http.StatusForbidden, reason, []string{name}
			n.event(e)
			return &bodyBlockedError{reason}
		})
	}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = containedBody{r.Body, n} // read on the transport's goroutine
	}
	px.rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), upstreamKey, up)))
}

// bodyBlockedError ends the upload of a request body that carries a
// secret to a host it may not go to. Its event is recorded when found.
type bodyBlockedError struct{ reason string }

func (e *bodyBlockedError) Error() string { return "blocked: " + e.reason }

func (px *proxy) rewrite(pr *httputil.ProxyRequest) {
	up := pr.In.Context().Value(upstreamKey).(*upstream)
	pr.Out.URL.Scheme = up.scheme
	pr.Out.URL.Host = up.host
	pr.Out.Host = pr.In.Host
	if up.scrub != nil {
		// The scrubber must see the body's bytes as they are.
		pr.Out.Header.Set("Accept-Encoding", "identity")
		// And whole: a value split across partial responses is in
		// none of them for the scrubber to find, and the guest puts
		// the pieces together. (Request-Range is the old spelling
		// some servers still honour; multipart/byteranges answers
		// follow from these.)
		pr.Out.Header.Del("Range")
		pr.Out.Header.Del("If-Range")
		pr.Out.Header.Del("Request-Range")
	}
}

// scrub1xx is the upstream transport with the headers of 1xx responses
// (103 Early Hints, ...) scrubbed. The ReverseProxy forwards those to
// the guest itself, from a ClientTrace hook, before ModifyResponse sees
// anything; the hook added here is the newest in the request's context,
// which httptrace runs first, and it scrubs the header map in place
// before the ReverseProxy's copies it.
type scrub1xx struct{ px *proxy }

func (t scrub1xx) RoundTrip(r *http.Request) (*http.Response, error) {
	if up, ok := r.Context().Value(upstreamKey).(*upstream); ok {
		r = r.WithContext(httptrace.WithClientTrace(r.Context(), &httptrace.ClientTrace{
			Got1xxResponse: func(_ int, h textproto.MIMEHeader) error {
				up.replacer(&t.px.scrub).header(http.Header(h))
				return nil
			},
		}))
	}
	return t.px.transport.RoundTrip(r)
}

// modifyResponse scrubs real values out of the response once the
// Network has had a secret value (see scrubHistory): headers now, body
// and trailer as they stream. The body loses its Content-Length (a
// placeholder is not as long as its value). A gzip body sent despite
// Accept-Encoding: identity (stored pre-compressed objects are served
// that way) is decoded and passed on decoded; any other encoding cannot
// be checked and is refused with a 502 rather than passed on unchecked.
// A response to a request sent before the first value was set is cut
// off when a value turns up while it is on its way (it was not asked for
// whole and uncompressed).
func (px *proxy) modifyResponse(resp *http.Response) error {
	up, ok := resp.Request.Context().Value(upstreamKey).(*upstream)
	if !ok {
		return nil
	}
	// No body: HEAD (whose Content-Length describes the GET), 1xx
	// (101 hands over the connection, whose WebSocket frames are
	// not scrubbed), 204, 304, an empty one (even if labelled gzip).
	hasBody := resp.Request.Method != http.MethodHead && resp.StatusCode >= 200 &&
		resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotModified &&
		resp.ContentLength != 0
	if up.scrub == nil {
		if px.scrub.isActive() {
			return errSecretInFlight
		}
		if hasBody {
			resp.Body = &unscrubbedBody{resp.Body, &px.scrub}
		}
		return nil
	}
	up.scrub().header(resp.Header)
	if !hasBody {
		return nil
	}
	body := resp.Body
	switch enc := strings.ToLower(strings.Join(resp.Header.Values("Content-Encoding"), ",")); strings.TrimSpace(enc) {
	case "", "identity":
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			return fmt.Errorf("upstream sent a gzip body that does not decode (%v); it must be decoded to be checked for secrets", err)
		}
		body = struct {
			io.Reader
			io.Closer
		}{zr, resp.Body}
		resp.Header.Del("Content-Encoding")
	default:
		return fmt.Errorf("upstream sent a %s-encoded body although asked for identity; it cannot be checked for secrets, so it is not passed on", enc)
	}
	resp.Header.Del("Content-Length")
	resp.ContentLength = -1
	resp.Body = newScrubReader(body, up.scrub, resp)
	return nil
}

var errSecretInFlight = errors.New("a secret value was set while this request was on its way, so its response cannot be checked for it; send the request again")

// unscrubbedBody is a response body passed on unscrubbed because the
// Network had no secret value when the request went out. It ends with an
// error as soon as one is set: a server streaming a long response (a log
// tail) could write into it what a later request carried.
type unscrubbedBody struct {
	io.ReadCloser
	h *scrubHistory
}

func (b *unscrubbedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if b.h.isActive() {
		return 0, errSecretInFlight
	}
	return n, err
}

// upstreamError answers the guest when the upstream could not be reached:
// 403 when the connect-time check refused it, else 502.
func (px *proxy) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	up, _ := r.Context().Value(upstreamKey).(*upstream)
	if up == nil {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	ev := up.event
	ev.Time = time.Time{}
	var be *blockedError
	var bbe *bodyBlockedError
	status := http.StatusBadGateway
	recorded := false
	if errors.As(err, &bbe) {
		ev.Action, ev.Reason, status = Blocked, bbe.reason, http.StatusForbidden
		recorded = true // when the body was cut
	} else if errors.As(err, &be) {
		ev.Action, ev.Reason, status = Blocked, be.reason, http.StatusForbidden
	} else if errors.Is(err, context.Canceled) {
		return // the guest went away
	} else {
		// An error may quote what the upstream sent.
		ev.Action, ev.Reason = Failed, up.replacer(&px.scrub).Replace(up.policy.redact(err.Error()))
	}
	ev.Status = status
	if !recorded {
		px.n.event(ev)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if status == http.StatusForbidden {
		w.Header().Set("X-Gondolin-Blocked", "1")
	}
	w.WriteHeader(status)
	fmt.Fprintf(w, "gondolin: %s %s: %s\n", r.Method, ev.Host, ev.Reason)
}

func isWebSocket(h http.Header) bool {
	if !strings.EqualFold(h.Get("Upgrade"), "websocket") {
		return false
	}
	for _, v := range h.Values("Connection") {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), "upgrade") {
				return true
			}
		}
	}
	return false
}

// grantedAll reports whether every address is reached on port through an
// --allow-internal grant (a local service the user named).
func grantedAll(addrs []netip.Addr, port uint16, grants []InternalGrant) bool {
	for _, a := range addrs {
		in := false
		for _, g := range grants {
			if g.Prefix.Contains(a) && g.coversPort(port) {
				in = true
			}
		}
		if !in {
			return false
		}
	}
	return len(addrs) > 0
}

// chanListener is a net.Listener fed by the flow handlers.
type chanListener struct {
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr {
	return &net.TCPAddr{IP: GatewayIP.AsSlice()}
}

// bufferPool recycles ReverseProxy copy buffers (32 KiB each).
type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

func (b *bufferPool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bufferPool) Put(v []byte) { b.p.Put(&v) }
