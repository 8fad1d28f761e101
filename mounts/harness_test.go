package mounts

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gondolin/gondolin/mounts/fsproto"
)

// socketPair returns two connected unix stream sockets, as the VM's fs
// port and its QEMU chardev socket are.
func socketPair(t testing.TB) (net.Conn, net.Conn) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return conn(fds[0]), conn(fds[1])
}

// link joins a guest Client to a host Server: every time the client
// (re)opens its port, a new connection is made and served. cut drops the
// current connection, as a supervisor restart does.
type link struct {
	t      testing.TB
	mu     sync.Mutex
	server *Server
	host   net.Conn
	served sync.WaitGroup
}

func (l *link) open() (io.ReadWriteCloser, error) {
	g, h := socketPair(l.t)
	l.mu.Lock()
	s := l.server
	l.host = h
	l.mu.Unlock()
	l.served.Add(1)
	go func() {
		defer l.served.Done()
		s.Serve(h)
	}()
	return g, nil
}

func (l *link) cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.host != nil {
		l.host.Close()
	}
}

// replace swaps in a new Server (a restarted supervisor) and cuts.
func (l *link) replace(s *Server) {
	l.mu.Lock()
	old := l.server
	l.server = s
	l.mu.Unlock()
	l.cut()
	old.Close()
}

func testLogger(t testing.TB) *log.Logger {
	return log.New(testWriter{t}, "", 0)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", p)
	return len(p), nil
}

// serve starts a Server for specs and a client connected to it.
func serve(t testing.TB, specs ...Spec) (*link, *fsproto.Client) {
	t.Helper()
	s, err := NewServer(specs, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	l := &link{t: t, server: s}
	c := fsproto.NewClient(l.open, testLogger(t))
	t.Cleanup(func() {
		c.Close()
		l.mu.Lock()
		s := l.server
		l.mu.Unlock()
		s.Close()
		l.served.Wait()
	})
	return l, c
}

// startServer starts a Server for specs; it is closed when the test ends.
func startServer(t testing.TB, specs ...Spec) *Server {
	t.Helper()
	s, err := NewServer(specs, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// oneFileDir makes a temporary directory that holds one file, f, of one
// byte, and a read-write mount spec for it at /w.
func oneFileDir(t testing.TB) (string, Spec) {
	t.Helper()
	dir, spec := hostDir(t, "/w", false)
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, spec
}

// connectGuest gives s a new connection to serve and does the guest's
// side of the handshake on it: it returns the guest's end (closed when
// the test ends), a reader of the frames the host sends on it, and what
// Serve returns.
func connectGuest(t testing.TB, s *Server) (net.Conn, *fsproto.FrameReader, <-chan error) {
	t.Helper()
	g, h := socketPair(t)
	t.Cleanup(func() { g.Close() })
	served := make(chan error, 1)
	go func() { served <- s.Serve(h) }()
	g.SetDeadline(time.Now().Add(20 * time.Second))
	br, err := fsproto.GuestHandshake(g)
	if err != nil {
		t.Fatal(err)
	}
	return g, fsproto.NewFrameReader(br, fsproto.MaxFrame), served
}

// bothWalks runs test twice: once with openat2 confining paths to the
// root, and once with the walk the server falls back to on a kernel
// without it.
func bothWalks(t *testing.T, test func(t *testing.T)) {
	for _, fallback := range []bool{false, true} {
		t.Run(fmt.Sprintf("walk=%v", fallback), func(t *testing.T) {
			if fallback {
				noOpenat2.Store(true)
				t.Cleanup(func() { noOpenat2.Store(false) })
			}
			test(t)
		})
	}
}

// hostDir makes a temporary directory and a mount spec for it.
func hostDir(t testing.TB, guest string, ro bool) (string, Spec) {
	t.Helper()
	dir := t.TempDir()
	arg := dir + ":" + guest
	if ro {
		arg += ":ro"
	}
	spec, err := ParseHostFS(arg)
	if err != nil {
		t.Fatal(err)
	}
	return spec.HostPath, spec
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// treeHash hashes names, types, modes, sizes, mtimes, link targets and
// contents of everything under dir.
func treeHash(t testing.TB, dir string) string {
	t.Helper()
	h := sha256.New()
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		paths = append(paths, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(paths)
	for _, p := range paths {
		st, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, p)
		sys := st.Sys().(*syscall.Stat_t)
		fmt.Fprintf(h, "%s %o %d %d.%d %d\n", rel, st.Mode(), st.Size(), sys.Mtim.Sec, sys.Mtim.Nsec, sys.Nlink)
		switch {
		case st.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			fmt.Fprintf(h, "-> %s\n", target)
		case st.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			h.Write(b)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

func wantErrno(t testing.TB, what string, got, want syscall.Errno) {
	t.Helper()
	if got != want {
		t.Errorf("%s: errno %v (%d), want %v (%d)", what, got, int(got), want, int(want))
	}
}

func mustOK(t testing.TB, what string, errno syscall.Errno) {
	t.Helper()
	if errno != 0 {
		t.Fatalf("%s: %v", what, errno)
	}
}
