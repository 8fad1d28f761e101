package contexts

import (
	"bufio"
	"context"
	"fmt"
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

const testInstance = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

func pong(instance string) string {
	body := fmt.Sprintf(`{"netns":"net:[1]","instance":%q}`, instance)
	return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// shortDir is a temporary directory whose paths fit a unix socket's.
func shortDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "gdfw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestDialChecked plays the far end of a forward (what ssh's master
// passes a connection to) in each way it can go, and checks that only
// the supervisor met before, answering its ping, is handed on.
func TestDialChecked(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir := shortDir(t)
	tests := []struct {
		name  string
		serve func(c net.Conn) // after the ping request is read
		ok    bool
	}{
		{"the supervisor met", func(c net.Conn) { io.WriteString(c, pong(testInstance)) }, true},
		{"another supervisor", func(c net.Conn) { io.WriteString(c, pong("ZYXWVUTSRQPONMLKJIHGFEDCBA")) }, false},
		{"an older supervisor (no instance)", func(c net.Conn) { io.WriteString(c, pong("")) }, false},
		{"no far socket (ssh closes)", func(c net.Conn) {}, false},
		{"garbage", func(c net.Conn) { io.WriteString(c, "SSH-2.0-nope\r\n\r\n") }, false},
		{"not 200", func(c net.Conn) { io.WriteString(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n") }, false},
		{"bytes past the answer", func(c net.Conn) { io.WriteString(c, pong(testInstance)+"HTTP/1.1 200 OK\r\n") }, false},
		{"closing", func(c net.Conn) {
			io.WriteString(c, strings.Replace(pong(testInstance), "OK\r\n", "OK\r\nConnection: close\r\n", 1))
		}, false},
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
			path := filepath.Join(dir, fmt.Sprintf("s%d", i))
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
					io.WriteString(c, pong(testInstance))
				}
			}()
			conn, err := dialChecked(context.Background(), path, testInstance)
			if (err == nil) != tt.ok {
				t.Fatalf("dialChecked: %v, want ok=%v", err, tt.ok)
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
		if _, err := dialChecked(ctx, path, testInstance); err == nil || time.Since(start) > 5*time.Second {
			t.Errorf("dialChecked: %v after %s", err, time.Since(start))
		}
	})
}

// TestDialForward: a dial goes through the link only to a forward with
// a sound record, and only when it reaches the instance recorded.
func TestDialForward(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir := shortDir(t)
	link := filepath.Join(dir, "api-k.sock")
	sock := filepath.Join(dir, "api-k.1")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					if _, err := http.ReadRequest(r); err != nil {
						return
					}
					io.WriteString(c, pong(testInstance))
				}
			}()
		}
	}()
	dial := func() error {
		conn, err := dialForward(context.Background(), link)
		if conn != nil {
			conn.Close()
		}
		return err
	}
	if dial() == nil {
		t.Error("dialed with no link")
	}
	os.Symlink("api-k.1", link)
	if dial() == nil {
		t.Error("dialed with no record")
	}
	for _, bad := range []string{"", "relative.sock " + testInstance, "/s.sock", "/s.sock lower-case", "/a:b " + testInstance} {
		os.WriteFile(sock+".far", []byte(bad), 0o600)
		if dial() == nil {
			t.Errorf("dialed with the record %q", bad)
		}
	}
	writeRecord(sock, farSupervisor{"/far/supervisor.sock", "ZYXWVUTSRQPONMLKJIHGFEDCBA"})
	if dial() == nil {
		t.Error("dialed a forward that reaches another instance than its record's")
	}
	writeRecord(sock, farSupervisor{"/far/supervisor.sock", testInstance})
	if err := dial(); err != nil {
		t.Errorf("a sound forward: %v", err)
	}
	if far, err := readRecord(sock); err != nil || far.instance != testInstance {
		t.Errorf("readRecord: %+v %v", far, err)
	}
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

// TestLockFile: a second taker waits for the first, and gives up when
// its context ends.
func TestLockFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l")
	unlock, err := lockFile(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := lockFile(ctx, path); err == nil {
		t.Fatal("took a held lock")
	}
	unlock()
	again, err := lockFile(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	again()
}
