package sessions

import (
	"context"
	"errors"
	"io"
	"log"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
)

// state.json is written outside the session's lock, in the order the
// states were taken: a slow write holds up no listing, an older state
// never overwrites a newer one, and nothing is written after removal.
func TestStateWrites(t *testing.T) {
	sv, s := newStoredSession(t)
	id := s.rec.ID
	sv.mu.Lock()
	sv.sessions[id] = s
	sv.mu.Unlock()

	s.mu.Lock()
	s.state.StoppedAt = time.Now().UTC()
	older := s.copyStateLocked()
	s.state.Stopped = true
	newer := s.copyStateLocked()
	s.mu.Unlock()

	s.writeMu.Lock() // a write that takes its time (an fsync)
	written := make(chan struct{})
	go func() {
		newer.write()
		close(written)
	}()
	listed := make(chan []Session, 1)
	go func() { listed <- sv.List(true) }()
	select {
	case l := <-listed:
		if len(l) != 1 || l[0].State != Stopped {
			t.Errorf("List: %+v", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("List waited for a state write")
	}
	s.writeMu.Unlock()
	<-written
	older.write()
	if _, st, err := sv.reg.load(id); err != nil || !st.Stopped {
		t.Fatalf("state.json after an older write: %+v %v", st, err)
	}

	if err := sv.Remove(context.Background(), id, false); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	late := s.copyStateLocked()
	s.mu.Unlock()
	late.write()
	if _, err := os.Stat(sv.reg.dir(id)); !os.IsNotExist(err) {
		t.Fatalf("a write after removal: %v", err)
	}
}

// TestStateWriteAfterFailure: when the newest state fails to save, an
// older copy written later saves the newest instead of itself.
func TestStateWriteAfterFailure(t *testing.T) {
	sv, s := newStoredSession(t)
	id := s.rec.ID
	s.mu.Lock()
	older := s.copyStateLocked()
	s.state.Stopped = true
	newer := s.copyStateLocked()
	s.mu.Unlock()

	// state.json as a directory: the atomic rename onto it fails.
	stateFile := filepath.Join(sv.reg.dir(id), layout.StateFile)
	if err := os.Remove(stateFile); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(stateFile, 0o700); err != nil {
		t.Fatal(err)
	}
	newer.write()
	if err := os.Remove(stateFile); err != nil {
		t.Fatal(err)
	}
	older.write()
	if _, st, err := sv.reg.load(id); err != nil || !st.Stopped {
		t.Fatalf("state.json after a failed newer write and an older one: %+v %v", st, err)
	}
}

// newStoredSession is a supervisor (closed with the test) and a session of
// its home with a record on disk and no VM.
func newStoredSession(t *testing.T) (*Supervisor, *session) {
	t.Helper()
	rt, err := NewRuntime(layout.Home(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	sv := NewSupervisor(rt, log.New(io.Discard, "", 0))
	t.Cleanup(sv.Close)
	const id = "0123456789ab"
	if err := sv.reg.create(Record{ID: id}); err != nil {
		t.Fatal(err)
	}
	return sv, sv.newSession(Record{ID: id}, StateRecord{})
}

// TestNoAccessWithoutVM: an SSH endpoint opened for a session whose VM is
// gone (a stop won the race) is closed, not kept: a stop releases only
// what it finds, and nothing would close it later.
func TestNoAccessWithoutVM(t *testing.T) {
	_, s := newStoredSession(t)
	s.mu.Lock()
	s.state.Stopped = true
	s.mu.Unlock()
	err := s.startAccess(nil, &SSHAccess{Listen: "127.0.0.1"})
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("startAccess on a stopped session: %v; want unavailable", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sshd != nil || s.state.SSH != nil {
		t.Fatalf("an SSH endpoint kept for a stopped session: %v %+v", s.sshd, s.state.SSH)
	}
}
