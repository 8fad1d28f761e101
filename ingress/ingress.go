// Package ingress forwards HTTP, WebSocket upgrades included, from
// listeners on the host to ports inside a VM: what `--listen` and
// `gondolin ingress` set up. It reaches the guest through a dial function
// (netpolicy.Network.DialGuest: the VM's own network stack), so nothing
// on the host routes into the VM and no host port is open unless a route
// names it. Routes change while the VM runs and are plain JSON values the
// supervisor keeps and adds again after a restart.
package ingress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/internal/contain"
	"github.com/gondolin/gondolin/internal/errdefs"
)

// Error classes, checked with errors.Is.
var (
	// (Bad input and unknown routes are errdefs.ErrInvalid and
	// errdefs.ErrNotFound.)
	ErrExists = errdefs.Kind(errdefs.ErrConflict, "already exists")
	ErrClosed = errdefs.Kind(errdefs.ErrUnavailable, "ingress is closed")
)

// DialFunc opens a TCP connection to port inside the VM.
type DialFunc func(ctx context.Context, port uint16) (net.Conn, error)

// Route forwards one host listener to one guest port.
type Route struct {
	// Listen is the host address. Given to Add it is [HOST:]PORT (see
	// ParseListen: loopback unless a host is named; port 0 picks one);
	// returned by Add and List it is the address actually bound, which
	// is what to persist so the URL stays the same after a restart.
	Listen    string `json:"listen"`
	GuestPort uint16 `json:"guest_port"`
	// DisableWebSockets refuses HTTP upgrades (WebSocket and others)
	// with a 403; by default they are tunnelled.
	DisableWebSockets bool `json:"disable_websockets,omitempty"`
}

// URL is where a browser reaches the route (http://HOST:PORT/), with a
// wildcard address shown as loopback.
func (r Route) URL() string {
	host, port, err := net.SplitHostPort(r.Listen)
	if err != nil {
		return ""
	}
	if a, err := netip.ParseAddr(host); err == nil && a.IsUnspecified() {
		host = "127.0.0.1"
		if a.Is6() {
			host = "::1"
		}
	}
	return "http://" + net.JoinHostPort(host, port) + "/"
}

func (r Route) String() string {
	s := r.Listen + " -> guest:" + strconv.Itoa(int(r.GuestPort))
	if r.DisableWebSockets {
		s += " (no websockets)"
	}
	return s
}

// Options tune a Gateway; zero values are defaults fit for one VM.
type Options struct {
	// Logger receives operational messages.
	Logger *slog.Logger
	// MaxHeaderBytes bounds a request's header (default 64 KiB).
	MaxHeaderBytes int
	// DialTimeout bounds connecting to the guest port (default 10 s):
	// a VM that is paused or has no network attached answers nothing.
	DialTimeout time.Duration
}

// Gateway serves a VM's ingress routes.
type Gateway struct {
	dial DialFunc
	opts Options
	log  *slog.Logger

	mu     sync.Mutex
	routes map[string]*route // by bound address
	closed bool
}

// New returns a gateway without routes that reaches the guest with dial.
func New(dial DialFunc, opts Options) *Gateway {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxHeaderBytes <= 0 {
		opts.MaxHeaderBytes = 64 << 10
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 10 * time.Second
	}
	return &Gateway{dial: dial, opts: opts, log: opts.Logger, routes: map[string]*route{}}
}

// ParseListen turns [HOST:]PORT into HOST:PORT. Without a host, or with
// an empty one (":8080", which net.Listen would bind on every interface),
// it is 127.0.0.1: nothing listens beyond loopback unless the user names
// an address. HOST is an IP address or localhost.
func ParseListen(s string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("%w: listen address %q: %s", errdefs.ErrInvalid, s, why)
	}
	host, port := "", s
	if h, p, err := net.SplitHostPort(s); err == nil {
		host, port = h, p
	} else if strings.Contains(s, ":") {
		return bad("want [HOST:]PORT")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return bad("bad port")
	}
	switch host {
	case "", "localhost":
		host = "127.0.0.1"
	default:
		a, err := netip.ParseAddr(host)
		if err != nil || a.Zone() != "" {
			return bad("want an IP address or localhost")
		}
		host = a.String()
	}
	return net.JoinHostPort(host, strconv.Itoa(int(n))), nil
}

// ParseRoute parses --listen [HOST:]PORT[=GUEST_PORT]: the host address
// as ParseListen reads it, and the guest port, which is PORT when not
// given (so PORT 0 needs one).
func ParseRoute(s string) (Route, error) {
	listen, guest, hasGuest := strings.Cut(s, "=")
	addr, err := ParseListen(listen)
	if err != nil {
		return Route{}, err
	}
	_, port, _ := net.SplitHostPort(addr)
	if !hasGuest {
		guest = port
	}
	n, err := strconv.ParseUint(guest, 10, 16)
	if err != nil || n == 0 {
		return Route{}, fmt.Errorf("%w: --listen %s: want [HOST:]PORT[=GUEST_PORT] with a guest port from 1 to 65535", errdefs.ErrInvalid, s)
	}
	return Route{Listen: addr, GuestPort: uint16(n)}, nil
}

// Add starts serving a route and returns it with its bound address.
func (g *Gateway) Add(r Route) (Route, error) {
	if r.GuestPort == 0 {
		return Route{}, fmt.Errorf("%w: guest port 0", errdefs.ErrInvalid)
	}
	addr, err := ParseListen(r.Listen)
	if err != nil {
		return Route{}, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return Route{}, ErrClosed
	}
	if _, ok := g.routes[addr]; ok {
		return Route{}, fmt.Errorf("%w: a route already listens on %s", ErrExists, addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return Route{}, fmt.Errorf("%w: %s is in use on the host; pick another port, or port 0 for any", ErrExists, addr)
		}
		return Route{}, fmt.Errorf("listen on %s: %w", addr, err)
	}
	r.Listen = ln.Addr().String()
	rt := g.newRoute(r)
	g.routes[r.Listen] = rt
	go func() {
		defer contain.Recover("an ingress route", g.logPanic)
		if err := rt.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.log.Warn("ingress route stopped", "route", r.String(), "err", err)
		}
	}()
	return r, nil
}

// Remove stops the route listening on listen (as Add returned it, or as
// the user wrote it: "8080" finds 127.0.0.1:8080, or the one route on
// port 8080). Its open connections, WebSockets included, are closed.
func (g *Gateway) Remove(listen string) error {
	addr, err := ParseListen(listen)
	if err != nil {
		return err
	}
	g.mu.Lock()
	rt, ok := g.routes[addr]
	if !ok && !strings.Contains(listen, ":") {
		var found []*route
		for _, r := range g.routes {
			if _, p, _ := net.SplitHostPort(r.Listen); p == listen {
				found = append(found, r)
			}
		}
		if len(found) == 1 {
			rt, ok = found[0], true
		}
	}
	if ok {
		delete(g.routes, rt.Listen)
	}
	g.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: no route listens on %s", errdefs.ErrNotFound, listen)
	}
	rt.close()
	return nil
}

// List returns the routes, ordered by address.
func (g *Gateway) List() []Route {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]Route, 0, len(g.routes))
	for _, r := range g.routes {
		out = append(out, r.Route)
	}
	slices.SortFunc(out, func(a, b Route) int { return strings.Compare(a.Listen, b.Listen) })
	return out
}

// Close stops every route. Add fails afterwards.
func (g *Gateway) Close() error {
	g.mu.Lock()
	routes := g.routes
	g.routes = map[string]*route{}
	g.closed = true
	g.mu.Unlock()
	for _, r := range routes {
		r.close()
	}
	return nil
}

// route is one listener and its proxy.
type route struct {
	Route
	g     *Gateway
	srv   *http.Server
	tr    *http.Transport
	proxy *httputil.ReverseProxy

	mu       sync.Mutex
	backends map[net.Conn]struct{}
	closed   bool
}

func (g *Gateway) newRoute(r Route) *route {
	rt := &route{Route: r, g: g, backends: map[net.Conn]struct{}{}}
	// One transport per route: its pool holds connections to one guest
	// port, and closing the route closes exactly those.
	rt.tr = &http.Transport{
		Proxy:       nil,
		DialContext: rt.dialGuest,
		// Plain HTTP/1.1 to the guest: what guest dev servers speak,
		// and what Upgrade needs.
		ForceAttemptHTTP2:      false,
		MaxIdleConns:           32,
		MaxIdleConnsPerHost:    32,
		IdleConnTimeout:        60 * time.Second,
		MaxResponseHeaderBytes: 1 << 20,
		// Bodies pass as they are; the browser and the guest server
		// negotiate encoding between themselves.
		DisableCompression: true,
	}
	rt.proxy = &httputil.ReverseProxy{
		Rewrite:      rt.rewrite,
		Transport:    rt.tr,
		ErrorHandler: rt.upstreamError,
		ErrorLog:     slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
	}
	rt.srv = &http.Server{
		Handler:           rt,
		MaxHeaderBytes:    g.opts.MaxHeaderBytes,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
	}
	return rt
}

// guestHost stands for the guest in outgoing URLs; dialGuest ignores it.
const guestHost = "vm.gondolin.invalid"

func (rt *route) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// net/http recovers a panic here too, but logs it only at debug
	// level; http.ErrAbortHandler (a response cut short) is no bug.
	defer contain.Recover("an ingress request", func(pe *contain.PanicError) {
		if pe.Value != http.ErrAbortHandler {
			rt.g.logPanic(pe)
		}
		panic(http.ErrAbortHandler) // net/http closes this connection
	})
	if rt.DisableWebSockets && r.Header.Get("Upgrade") != "" && headerHasToken(r.Header, "Connection", "upgrade") {
		http.Error(w, "gondolin ingress: WebSockets are disabled for this route", http.StatusForbidden)
		return
	}
	rt.proxy.ServeHTTP(w, r)
}

func (rt *route) rewrite(pr *httputil.ProxyRequest) {
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = net.JoinHostPort(guestHost, strconv.Itoa(int(rt.GuestPort)))
	// The guest server sees the Host the browser used (virtual hosts,
	// absolute redirects), plus X-Forwarded-For/-Host/-Proto; any
	// X-Forwarded-* the client sent is dropped by Rewrite first.
	pr.Out.Host = pr.In.Host
	pr.SetXForwarded()
}

// dialGuest runs on a goroutine of http.Transport's, which net/http does
// not recover: a panic becomes this request's error.
func (rt *route) dialGuest(ctx context.Context, _, _ string) (_ net.Conn, err error) {
	defer contain.Recover("an ingress dial", func(pe *contain.PanicError) {
		rt.g.logPanic(pe)
		err = pe
	})
	ctx, cancel := context.WithTimeout(ctx, rt.g.opts.DialTimeout)
	defer cancel()
	c, err := rt.g.dial(ctx, rt.GuestPort)
	if err != nil {
		return nil, err
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.closed {
		c.Close()
		return nil, ErrClosed
	}
	tc := &trackedConn{Conn: c, rt: rt}
	rt.backends[tc] = struct{}{}
	return tc, nil
}

// logPanic logs a contained panic with its stack. A panic serving one
// request fails that request (and closes its connection, unless the
// panic was in the dial); the gateway, its other routes and connections
// go on.
func (g *Gateway) logPanic(pe *contain.PanicError) {
	g.log.Error("ingress: panic serving a client; its request failed", "err", pe.Error(), "stack", string(pe.Stack))
}

// upstreamError answers 502 with one short line a developer can act on.
func (rt *route) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, context.Canceled) {
		return // the client went away
	}
	port := rt.GuestPort
	why := err.Error()
	switch {
	case errors.Is(err, syscall.ECONNREFUSED) || strings.Contains(why, "refused"):
		// (gVisor says "connection was refused", with no errno.)
		why = fmt.Sprintf("nothing listens on port %d in the VM (a server bound to 127.0.0.1 there cannot be reached; bind 0.0.0.0)", port)
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded):
		why = fmt.Sprintf("port %d in the VM did not answer within %v", port, rt.g.opts.DialTimeout)
	default:
		if len(why) > 200 {
			why = why[:200]
		}
	}
	rt.g.log.Debug("ingress upstream error", "route", rt.String(), "err", err)
	http.Error(w, "gondolin ingress: "+why, http.StatusBadGateway)
}

// close stops the listener and ends every connection: idle and active
// ones to the guest (which also ends upgraded WebSocket tunnels, which
// the http.Server no longer tracks) and those from clients.
func (rt *route) close() {
	rt.srv.Close()
	rt.mu.Lock()
	rt.closed = true
	backends := rt.backends
	rt.backends = nil
	rt.mu.Unlock()
	for c := range backends {
		c.Close()
	}
	rt.tr.CloseIdleConnections()
}

// trackedConn is a connection to the guest that the route can close.
type trackedConn struct {
	net.Conn
	rt   *route
	once sync.Once
}

// Read and Write run on http.Transport's goroutines, which net/http does
// not recover, on bytes from the guest's side: a panic fails this
// connection only.
func (c *trackedConn) Read(b []byte) (k int, err error) {
	defer contain.Recover("an ingress connection", c.failed(&err))
	return c.Conn.Read(b)
}

func (c *trackedConn) Write(b []byte) (k int, err error) {
	defer contain.Recover("an ingress connection", c.failed(&err))
	return c.Conn.Write(b)
}

func (c *trackedConn) failed(err *error) func(*contain.PanicError) {
	return func(pe *contain.PanicError) {
		c.rt.g.logPanic(pe)
		c.Close()
		*err = pe
	}
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.rt.mu.Lock()
		delete(c.rt.backends, c)
		c.rt.mu.Unlock()
	})
	return c.Conn.Close()
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
