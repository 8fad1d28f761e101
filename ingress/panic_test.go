package ingress

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/syncbuf"
)

// chokingConn is a connection to the guest on which reading or writing
// panics, as a bug hit by the guest's bytes would.
type chokingConn struct {
	net.Conn
	read, write bool
}

func (c *chokingConn) Read(b []byte) (int, error) {
	if c.read {
		panic("test: an answer the reader chokes on")
	}
	return c.Conn.Read(b)
}

func (c *chokingConn) Write(b []byte) (int, error) {
	if c.write {
		panic("test: a request the writer chokes on")
	}
	return len(b), nil // swallowed: the other end of the pipe never reads
}

// TestPanicContained makes serving one request panic on each goroutine
// net/http does not recover (http.Transport's dial, reader and writer):
// that request must fail with a 502, the panic be logged with its stack,
// and the gateway serve on. Without containment each case crashes the
// test binary.
func TestPanicContained(t *testing.T) {
	guest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer guest.Close()
	logs := &syncbuf.Buffer{}
	gw := New(func(ctx context.Context, port uint16) (net.Conn, error) {
		switch port {
		case 1:
			panic("test: a dial the stack chokes on")
		case 2, 3:
			c, other := net.Pipe()
			t.Cleanup(func() { other.Close() })
			return &chokingConn{Conn: c, read: port == 2, write: port == 3}, nil
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", guest.Listener.Addr().String())
	}, Options{Logger: slog.New(slog.NewTextHandler(logs, nil)), DialTimeout: 5 * time.Second})
	defer gw.Close()
	client := &http.Client{Timeout: 10 * time.Second}
	for _, tc := range []struct {
		name string
		port uint16
	}{{"dial", 1}, {"reading the guest's answer", 2}, {"writing the request", 3}} {
		t.Run(tc.name, func(t *testing.T) {
			r := mustAdd(t, gw, Route{Listen: "0", GuestPort: tc.port})
			resp, err := client.Get(r.URL())
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway {
				t.Errorf("status %d, want 502", resp.StatusCode)
			}
		})
	}
	if s := logs.String(); strings.Count(s, "level=ERROR") < 3 || !strings.Contains(s, "panic_test.go") {
		t.Errorf("panics not logged with their stacks:\n%s", s)
	}
	r := mustAdd(t, gw, Route{Listen: "0", GuestPort: 80})
	if code, body := getBody(t, client, r.URL()); code != 200 || body != "ok" {
		t.Fatalf("after the panics: %d %q", code, body)
	}
}
