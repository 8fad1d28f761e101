package testutil

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestPoll(t *testing.T) {
	var n atomic.Int32
	if !Poll(time.Second, func() bool { return n.Add(1) == 3 }) {
		t.Fatal("Poll gave up on a condition that holds on the third call")
	}
	start := time.Now()
	if Poll(100*time.Millisecond, func() bool { return false }) {
		t.Fatal("Poll reported a condition that never holds")
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 2*time.Second {
		t.Fatalf("Poll gave up after %v, want about 100ms", d)
	}
}

// fatalTB records a failure instead of failing the test.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
}

func (f *fatalTB) Errorf(format string, args ...any) { f.Fatalf(format, args...) }

func (f *fatalTB) Error(args ...any) { f.msg = fmt.Sprint(args...) }

func TestWaitForFails(t *testing.T) {
	f := &fatalTB{TB: t}
	WaitFor(f, 20*time.Millisecond, "the moon", func() bool { return false })
	if !strings.Contains(f.msg, "the moon") {
		t.Fatalf("failure %q does not name the condition", f.msg)
	}
	f.msg = ""
	WaitFor(f, time.Second, "now", func() bool { return true })
	if f.msg != "" {
		t.Fatalf("a condition that holds failed: %q", f.msg)
	}
}

func TestTCPEcho(t *testing.T) {
	port := TCPEcho(t)
	for range 2 { // each connection is answered
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "hi\n")
		got, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil || got != "echo: hi\n" {
			t.Fatalf("got %q, %v", got, err)
		}
	}
}

// TestServeStops checks that Serve's accepting goroutine is gone once the
// test that started it has ended.
func TestServeStops(t *testing.T) {
	var ln net.Listener
	before := runtime.NumGoroutine()
	t.Run("serve", func(t *testing.T) {
		ln = Listen(t, "tcp", "127.0.0.1:0")
		Serve(t, ln, func(c net.Conn) { c.Close() })
	})
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Fatal("the listener still accepts after the test ended")
	}
	// The subtest's own goroutine may take a moment to go.
	if !Poll(time.Second, func() bool { return runtime.NumGoroutine() <= before }) {
		t.Fatalf("%d goroutines after, %d before", runtime.NumGoroutine(), before)
	}
}

func TestEmptyDir(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Join(dir, "missing")} {
		f := &fatalTB{TB: t}
		EmptyDir(f, d)
		if f.msg != "" {
			t.Errorf("%s: %s", d, f.msg)
		}
	}
	os.WriteFile(filepath.Join(dir, "left"), nil, 0o600)
	f := &fatalTB{TB: t}
	EmptyDir(f, dir)
	if !strings.Contains(f.msg, "left") {
		t.Errorf("a file left: %q", f.msg)
	}
}
