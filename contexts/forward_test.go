package contexts

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestDialForward plays the far end of a forward (what ssh's master
// passes a connection to) in each way it can go, and checks that only a
// supervisor that answers its ping is handed on.
func TestDialForward(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir, err := os.MkdirTemp("", "gdfw") // short: a socket path
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	const pong = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
	tests := []struct {
		name  string
		serve func(c net.Conn) // after the ping request is read
		ok    bool
	}{
		{"a supervisor", func(c net.Conn) { io.WriteString(c, pong) }, true},
		{"no far socket (ssh closes)", func(c net.Conn) {}, false},
		{"garbage", func(c net.Conn) { io.WriteString(c, "SSH-2.0-nope\r\n\r\n") }, false},
		{"not 200", func(c net.Conn) { io.WriteString(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n") }, false},
		{"bytes past the answer", func(c net.Conn) { io.WriteString(c, pong+"HTTP/1.1 200 OK\r\n") }, false},
		{"an endless header", func(c net.Conn) {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nX: ")
			for range 100 {
				if _, err := c.Write(make([]byte, 4096)); err != nil {
					return
				}
			}
		}, false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, "s"+string(rune('a'+i)))
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			served := make(chan struct{})
			go func() {
				defer close(served)
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				r := bufio.NewReader(c)
				req, err := http.ReadRequest(r)
				if err != nil || req.URL.Path != "/v1/ping" {
					t.Errorf("the probe: %v %v", req, err)
					return
				}
				tt.serve(c)
				if tt.ok { // the connection is handed on: a second request on it
					if req, err := http.ReadRequest(r); err != nil || req.URL.Path != "/v1/sessions" {
						t.Errorf("the request after the probe: %v %v", req, err)
					}
					io.WriteString(c, pong)
				}
			}()
			conn, err := dialForward(context.Background(), path)
			if (err == nil) != tt.ok {
				t.Fatalf("dialForward: %v, want ok=%v", err, tt.ok)
			}
			if conn != nil {
				io.WriteString(conn, "GET /v1/sessions HTTP/1.1\r\nHost: gondolin\r\n\r\n")
				resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
				if err != nil || resp.StatusCode != 200 {
					t.Errorf("a request after the probe: %v %v", resp, err)
				}
				conn.Close()
			}
			<-served
		})
	}

	t.Run("a far end that never answers is bounded by the context", func(t *testing.T) {
		path := filepath.Join(dir, "hang")
		l, _ := net.Listen("unix", path)
		defer l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		if _, err := dialForward(ctx, path); err == nil || time.Since(start) > 5*time.Second {
			t.Errorf("dialForward: %v after %s", err, time.Since(start))
		}
	})

	t.Run("an old forward is not used", func(t *testing.T) {
		path := filepath.Join(dir, "old")
		l, _ := net.Listen("unix", path)
		defer l.Close()
		old := time.Now().Add(-2 * forwardMaxAge)
		os.Chtimes(path, old, old)
		if _, err := dialForward(context.Background(), path); err == nil {
			t.Error("dialed a forward past its age")
		}
	})

	t.Run("a dead master's socket is removed", func(t *testing.T) {
		path := filepath.Join(dir, "stale")
		l, _ := net.Listen("unix", path)
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
		if _, err := dialForward(context.Background(), path); err == nil {
			t.Fatal("dialed a dead socket")
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the dead socket stays: %v", err)
		}
	})
}

// TestForwardPath: one forward per far account, gondolin and ssh
// command, in the private control directory.
func TestForwardPath(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	t.Setenv(EnvSSHCommand, "")
	a := Context{Name: "a", Host: "ssh://me@far"}
	paths := map[string]bool{}
	for _, c := range []Context{a, {Name: "b", Host: "ssh://me@far"}, {Host: "ssh://you@far"}, {Host: "ssh://me@far", Gondolin: "/opt/g"}} {
		paths[c.forwardPath()] = true
	}
	if len(paths) != 3 { // a and b are the same far supervisor
		t.Errorf("forward paths: %v", paths)
	}
	p := a.forwardPath()
	t.Setenv(EnvSSHCommand, "ssh -F other")
	if a.forwardPath() == p || !strings.HasPrefix(p, os.TempDir()) {
		t.Errorf("forward path %s (another ssh command gives the same, or not in TMPDIR)", p)
	}
}
