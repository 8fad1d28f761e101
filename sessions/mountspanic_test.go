package sessions

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
	_ "unsafe" // go:linkname, to reach the mounts package's test hook

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/mounts"
	"github.com/gondolin/gondolin/mounts/fsproto"
)

// mountsTestHookRequest is the mounts package's testHookRequest: it runs
// first in every request's goroutine of a file server.
//
//go:linkname mountsTestHookRequest github.com/gondolin/gondolin/mounts.testHookRequest
var mountsTestHookRequest func(*fsproto.Request)

// A panic while the file server serves one of the guest's requests (its
// own goroutine, not the server's loop) stops that server and marks the
// session broken, with the stack in the log; the supervisor goes on.
// Without containment the test binary crashes.
func TestFileRequestPanicMarksSessionBroken(t *testing.T) {
	rt, _, s, logs := panicSupervisor(t)

	host := t.TempDir()
	spec, err := mounts.ParseHostFS(host + ":/w")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := mounts.NewServer([]mounts.Spec{spec}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	mountsTestHookRequest = func(req *fsproto.Request) {
		if req.Path == "boom" {
			panic("test: a request the file server chokes on")
		}
	}
	defer func() { mountsTestHookRequest = nil }()

	// The VM's fs port, as QEMU offers it, in a directory named for the
	// session as its run directory is (short, for the socket's path).
	tmp, err := os.MkdirTemp("", "fsp")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	dir := filepath.Join(tmp, panicID)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(dir, layout.FSSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := rt.serveMounts(context.Background(), srv, dir); err != nil {
		t.Fatal(err)
	}
	g, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	g.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fsproto.GuestHandshake(g); err != nil {
		t.Fatal(err)
	}
	b, err := fsproto.AppendRequest(nil, &fsproto.Request{Tag: 1, Op: fsproto.OpStat, Mount: spec.ID, Path: "boom"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Write(b); err != nil {
		t.Fatal(err)
	}

	checkBroken(t, s, logs, "internal error in a file request (stat)", "mountspanic_test.go")
	// The file server is stopped.
	a, c := net.Pipe()
	defer c.Close()
	if err := srv.Serve(a); err != mounts.ErrServerClosed {
		t.Errorf("Serve after the panic: %v", err)
	}
}
