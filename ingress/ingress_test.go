package ingress

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/netpolicy"
	"github.com/gondolin/gondolin/netpolicy/netpolicytest"
)

func TestParseListen(t *testing.T) {
	for in, want := range map[string]string{
		"8080":           "127.0.0.1:8080",
		":8080":          "127.0.0.1:8080",
		"0":              "127.0.0.1:0",
		":0":             "127.0.0.1:0",
		"localhost:3000": "127.0.0.1:3000",
		"127.0.0.2:80":   "127.0.0.2:80",
		"0.0.0.0:8080":   "0.0.0.0:8080",
		"[::1]:8080":     "[::1]:8080",
		"[::]:8080":      "[::]:8080",
		"192.168.1.5:80": "192.168.1.5:80",
	} {
		got, err := ParseListen(in)
		if err != nil || got != want {
			t.Errorf("ParseListen(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "70000", "-1", "example.com:80", "1.2.3.4", "::1", "[fe80::1%eth0]:80", "1.2.3.4:"} {
		if _, err := ParseListen(bad); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("ParseListen(%q) err = %v", bad, err)
		}
	}
}

func TestParseRoute(t *testing.T) {
	for in, want := range map[string]Route{
		"3000":                {Listen: "127.0.0.1:3000", GuestPort: 3000},
		"8080=3000":           {Listen: "127.0.0.1:8080", GuestPort: 3000},
		"0=3000":              {Listen: "127.0.0.1:0", GuestPort: 3000},
		"0.0.0.0:8080":        {Listen: "0.0.0.0:8080", GuestPort: 8080},
		"[::1]:8443=443":      {Listen: "[::1]:8443", GuestPort: 443},
		"localhost:5173=5173": {Listen: "127.0.0.1:5173", GuestPort: 5173},
	} {
		got, err := ParseRoute(in)
		if err != nil || got != want {
			t.Errorf("ParseRoute(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"0", "8080=", "8080=0", "8080=x", "=3000", "host:80=3000"} {
		if _, err := ParseRoute(bad); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("ParseRoute(%q) err = %v", bad, err)
		}
	}
}

// guestServer runs an HTTP server on the guest: /echo reports what the
// guest saw, /ws echoes WebSocket frames, /blob sends size bytes.
func guestServer(t testing.TB, g *netpolicytest.Guest, port uint16) {
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		json.NewEncoder(w).Encode(map[string]string{
			"host": r.Host, "remote": r.RemoteAddr, "path": r.URL.RequestURI(), "body": string(body),
			"xff": strings.Join(r.Header.Values("X-Forwarded-For"), ","), "xfh": r.Header.Get("X-Forwarded-Host"),
			"xfp": r.Header.Get("X-Forwarded-Proto"),
		})
	})
	mux.HandleFunc("/ws", wsEcho)
	mux.HandleFunc("/blob", blob)
	mux.HandleFunc("/small", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	srv := &http.Server{Handler: mux}
	go srv.Serve(g.Listen(port))
	t.Cleanup(func() { srv.Close() })
}

var blobData = func() []byte {
	b := make([]byte, 16<<20)
	rand.Read(b)
	return b
}()

func blob(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Length", fmt.Sprint(len(blobData)))
	w.Write(blobData)
}

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func wsAccept(key string) string {
	h := sha1.Sum([]byte(key + wsGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// wsEcho is a minimal RFC 6455 server: it echoes data frames until a
// close frame.
func wsEcho(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(w, "want a websocket", http.StatusBadRequest)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", wsAccept(r.Header.Get("Sec-WebSocket-Key")))
	brw.Flush()
	for {
		op, payload, err := wsRead(brw.Reader)
		if err != nil {
			return
		}
		wsWrite(conn, op, payload, false)
		if op == 8 {
			return
		}
	}
}

// wsWrite writes one final frame, masked as a client must.
func wsWrite(w io.Writer, op byte, payload []byte, mask bool) error {
	hdr := []byte{0x80 | op, 0}
	switch n := len(payload); {
	case n < 126:
		hdr[1] = byte(n)
	case n < 1<<16:
		hdr[1] = 126
		hdr = binary.BigEndian.AppendUint16(hdr, uint16(n))
	default:
		hdr[1] = 127
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	body := payload
	if mask {
		hdr[1] |= 0x80
		var key [4]byte
		rand.Read(key[:])
		hdr = append(hdr, key[:]...)
		body = make([]byte, len(payload))
		for i := range payload {
			body[i] = payload[i] ^ key[i%4]
		}
	}
	_, err := w.Write(append(hdr, body...))
	return err
}

func wsRead(r *bufio.Reader) (op byte, payload []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > 1<<20 {
		return 0, nil, errors.New("frame too big")
	}
	var key [4]byte
	masked := h[1]&0x80 != 0
	if masked {
		if _, err := io.ReadFull(r, key[:]); err != nil {
			return 0, nil, err
		}
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, err
	}
	if masked {
		for i := range payload {
			payload[i] ^= key[i%4]
		}
	}
	return h[0] & 0x0f, payload, nil
}

// wsDial opens a WebSocket to url's host (an ingress route) and returns
// the connection and its reader, or the HTTP status when the upgrade is
// refused.
func wsDial(t testing.TB, addr string) (net.Conn, *bufio.Reader, int) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var k [16]byte
	rand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", addr, key)
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		c.Close()
		return nil, nil, resp.StatusCode
	}
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != wsAccept(key) {
		t.Fatalf("Sec-WebSocket-Accept %q", got)
	}
	c.SetReadDeadline(time.Time{})
	return c, br, resp.StatusCode
}

func wsEchoRoundTrip(t testing.TB, c net.Conn, br *bufio.Reader, msg []byte) {
	t.Helper()
	if err := wsWrite(c, 1, msg, true); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	op, got, err := wsRead(br)
	if err != nil || op != 1 || !bytes.Equal(got, msg) {
		t.Fatalf("echo: op %d, %d bytes, %v", op, len(got), err)
	}
	c.SetReadDeadline(time.Time{})
}

func getJSON(t testing.TB, c *http.Client, req *http.Request) map[string]string {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s: %d %s", req.URL, resp.StatusCode, b)
	}
	var m map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

// mustAdd adds route to gw, failing t if it cannot.
func mustAdd(t testing.TB, gw *Gateway, route Route) Route {
	t.Helper()
	r, err := gw.Add(route)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// getBody GETs url with c and returns the status and the body.
func getBody(t testing.TB, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: reading the body: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

func TestIngress(t *testing.T) {
	n := newTestNetwork(t)
	g := newTestGuest(t, n)
	guestServer(t, g, 3000)
	gw := New(n.DialGuest, Options{DialTimeout: 2 * time.Second})
	t.Cleanup(func() { gw.Close() })
	client := &http.Client{Timeout: 20 * time.Second}

	r := mustAdd(t, gw, Route{Listen: ":0", GuestPort: 3000})
	if !strings.HasPrefix(r.Listen, "127.0.0.1:") || strings.HasSuffix(r.Listen, ":0") {
		t.Fatalf("bound %q, want a loopback port", r.Listen)
	}

	t.Run("HTTP reaches the guest server", func(t *testing.T) {
		req, _ := http.NewRequest("POST", r.URL()+"echo?q=1", strings.NewReader("request body"))
		req.Header.Set("X-Forwarded-For", "6.6.6.6") // a client's claim is not passed on
		m := getJSON(t, client, req)
		if m["host"] != r.Listen || m["path"] != "/echo?q=1" || m["body"] != "request body" {
			t.Errorf("guest saw %v", m)
		}
		if m["xff"] != "127.0.0.1" || m["xfh"] != r.Listen || m["xfp"] != "http" {
			t.Errorf("X-Forwarded-*: %v", m)
		}
		if !strings.HasPrefix(m["remote"], netpolicy.GatewayIP.String()+":") {
			t.Errorf("guest saw the client at %s, want the gateway", m["remote"])
		}
		resp, err := client.Get(r.URL() + "blob")
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(b, blobData) {
			t.Fatalf("blob: %d bytes, %v", len(b), err)
		}
	})
	t.Run("WebSocket echo", func(t *testing.T) {
		c, br, code := wsDial(t, r.Listen)
		if code != 101 {
			t.Fatalf("upgrade: %d", code)
		}
		defer c.Close()
		wsEchoRoundTrip(t, c, br, []byte("hello through ingress"))
		wsEchoRoundTrip(t, c, br, bytes.Repeat([]byte("x"), 70000))
	})
	t.Run("WebSockets disabled", func(t *testing.T) {
		r2 := mustAdd(t, gw, Route{Listen: "127.0.0.1:0", GuestPort: 3000, DisableWebSockets: true})
		defer gw.Remove(r2.Listen)
		if _, _, code := wsDial(t, r2.Listen); code != http.StatusForbidden {
			t.Errorf("upgrade on a route without websockets: %d", code)
		}
		req, _ := http.NewRequest("GET", r2.URL()+"echo", nil)
		if m := getJSON(t, client, req); m["path"] != "/echo" {
			t.Errorf("plain HTTP on it: %v", m)
		}
	})
	t.Run("errors", func(t *testing.T) {
		r3 := mustAdd(t, gw, Route{Listen: "0", GuestPort: 3999})
		defer gw.Remove(r3.Listen)
		if code, body := getBody(t, client, r3.URL()); code != 502 || !strings.Contains(body, "nothing listens on port 3999 in the VM") {
			t.Errorf("closed guest port: %d %q", code, body)
		}
		req, _ := http.NewRequest("GET", r.URL()+"echo", nil)
		req.Header.Set("X-Big", strings.Repeat("a", 128<<10))
		if resp, err := client.Do(req); err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("huge header: %v %v", resp, err)
		}
		if _, err := gw.Add(Route{Listen: r.Listen, GuestPort: 3000}); !errors.Is(err, ErrExists) {
			t.Errorf("same address twice: %v", err)
		}
		if _, err := gw.Add(Route{Listen: "127.0.0.1:0"}); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("guest port 0: %v", err)
		}
		if err := gw.Remove("127.0.0.1:1"); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("remove unknown: %v", err)
		}
	})
	t.Run("routes change live", func(t *testing.T) {
		c, br, code := wsDial(t, r.Listen)
		if code != 101 {
			t.Fatal(code)
		}
		defer c.Close()
		wsEchoRoundTrip(t, c, br, []byte("before"))
		if got := gw.List(); len(got) != 1 || got[0] != r {
			t.Fatalf("List = %v", got)
		}
		// What the supervisor persists and adds again after a restart.
		saved, _ := json.Marshal(gw.List())
		_, port, _ := net.SplitHostPort(r.Listen)
		if err := gw.Remove(port); err != nil {
			t.Fatal(err)
		}
		if len(gw.List()) != 0 {
			t.Fatalf("List after Remove = %v", gw.List())
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := wsRead(br); err == nil {
			t.Error("WebSocket survived its route's removal")
		}
		if _, err := client.Get(r.URL() + "echo"); err == nil {
			t.Error("removed route still answers")
		}
		var routes []Route
		if err := json.Unmarshal(saved, &routes); err != nil {
			t.Fatal(err)
		}
		again, err := gw.Add(routes[0])
		if err != nil || again != r {
			t.Fatalf("re-add %v: %v, %v", routes[0], again, err)
		}
		req, _ := http.NewRequest("GET", r.URL()+"echo", nil)
		if m := getJSON(t, client, req); m["path"] != "/echo" {
			t.Errorf("after re-add: %v", m)
		}
	})
	t.Run("closed", func(t *testing.T) {
		gw.Close()
		if _, err := client.Get(r.URL()); err == nil {
			t.Error("a closed gateway answers")
		}
		if _, err := gw.Add(Route{Listen: "0", GuestPort: 3000}); !errors.Is(err, ErrClosed) {
			t.Errorf("Add after Close: %v", err)
		}
	})
}

// A guest that never answers (no VM stream attached) costs the dial
// timeout, then a 502.
func TestIngressDialTimeout(t *testing.T) {
	n := newTestNetwork(t) // no guest attached
	gw := New(n.DialGuest, Options{DialTimeout: 300 * time.Millisecond})
	defer gw.Close()
	r := mustAdd(t, gw, Route{Listen: "0", GuestPort: 80})
	start := time.Now()
	code, body := getBody(t, http.DefaultClient, r.URL())
	if code != 502 || !strings.Contains(body, "did not answer within 300ms") || time.Since(start) > 5*time.Second {
		t.Errorf("%d %q after %v", code, body, time.Since(start))
	}
}

func TestRouteURL(t *testing.T) {
	for listen, want := range map[string]string{
		"127.0.0.1:8080": "http://127.0.0.1:8080/",
		"0.0.0.0:80":     "http://127.0.0.1:80/",
		"[::]:80":        "http://[::1]:80/",
		"[::1]:3000":     "http://[::1]:3000/",
	} {
		if got := (Route{Listen: listen}).URL(); got != want {
			t.Errorf("URL(%s) = %s, want %s", listen, got, want)
		}
	}
}
