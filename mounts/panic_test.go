package mounts

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/contain"
	"github.com/gondolin/gondolin/mounts/fsproto"
)

// chokeOnRequest stands for a bug in serving a request that a hostile
// guest's request hits.
func chokeOnRequest(req *fsproto.Request) {
	if req.Path == "boom" {
		panic("test: a request the file server chokes on")
	}
}

// TestRequestPanic: a panic while serving one guest request must not
// take down the supervisor (every VM's file server, network and terminals
// run in its one process): the request's goroutine recovers, the
// connection and the Server close, since the server's state (its handles,
// a half-done operation) is in doubt, and Serve returns the panic, with
// the stack where it happened, for its owner to report (sessions marks
// the session broken). Without the recover the test binary dies.
func TestRequestPanic(t *testing.T) {
	_, spec := oneFileDir(t)
	s := startServer(t, spec)
	testHookRequest = chokeOnRequest
	defer func() { testHookRequest = nil }()

	g, fr, served := connectGuest(t, s)
	send := func(req *fsproto.Request) {
		t.Helper()
		b, err := fsproto.AppendRequest(nil, req)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := g.Write(b); err != nil {
			t.Fatal(err)
		}
	}

	// A guest holding a handle, as guests do.
	send(&fsproto.Request{Tag: 1, Op: fsproto.OpOpen, Mount: spec.ID, Path: "f"})
	frame, err := fr.Next(nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := fsproto.DecodeReply(frame); err != nil || rep.Errno != 0 || rep.Handle == 0 {
		t.Fatalf("open: %+v, %v", rep, err)
	}

	send(&fsproto.Request{Tag: 2, Op: fsproto.OpStat, Mount: spec.ID, Path: "boom"})
	select {
	case err = <-served:
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return after a request panicked")
	}
	var pe *contain.PanicError
	if !errors.As(err, &pe) || !errors.Is(err, contain.ErrPanic) {
		t.Fatalf("Serve returned %v (%T), want the panic", err, err)
	}
	if !strings.Contains(pe.Error(), "test: a request the file server chokes on") || !strings.Contains(pe.Where, "stat") {
		t.Errorf("panic error %q (where %q)", pe.Error(), pe.Where)
	}
	if !strings.Contains(string(pe.Stack), "chokeOnRequest") {
		t.Errorf("the stack does not show where it panicked:\n%s", pe.Stack)
	}

	// The guest's connection is closed, with no reply to the request.
	if frame, err := fr.Next(nil); err == nil {
		rep, _ := fsproto.DecodeReply(frame)
		t.Errorf("a reply after the panic: %+v", rep)
	}
	// The Server is closed: its handles are released and it serves no
	// further connection.
	s.handles.mu.Lock()
	open := len(s.handles.m)
	s.handles.mu.Unlock()
	if open != 0 {
		t.Errorf("%d handles still open", open)
	}
	g2, h2 := socketPair(t)
	defer g2.Close()
	if err := s.Serve(h2); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after the panic: %v", err)
	}
}
