package sessions

// A session being made is listed, with what the supervisor is doing, from
// the moment its ID is known until it is made or its create fails; and
// nothing stays "creating" after a supervisor dies midway. No VM boots.

import (
	"context"
	"errors"
	"log"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/syncbuf"
	"github.com/gondolin/gondolin/internal/testutil"
)

// newBareSupervisor is a supervisor of a fresh home with no image,
// closed with the test.
func newBareSupervisor(t *testing.T) *Supervisor {
	t.Helper()
	home, err := os.MkdirTemp("", "gdcr") // short: sockets' paths are bounded
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	rt, err := NewRuntime(layout.Home(home))
	if err != nil {
		t.Fatal(err)
	}
	sv := NewSupervisor(rt, log.New(&syncbuf.Buffer{}, "", 0))
	t.Cleanup(sv.Close)
	return sv
}

// nextEvent returns the next event of type session.* other than usage.
func nextEvent(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	for {
		select {
		case e := <-ch:
			if strings.HasPrefix(e.Type, "session.") && e.Type != EventUsage {
				return e
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no event")
		}
	}
}

// TestCreatingListed walks a session being made through its steps: it
// is listed (live ones only too) and announced with each step, found by
// name, refused by stop, rm and snapshot with a clear line, and gone
// from the list once its create fails.
func TestCreatingListed(t *testing.T) {
	sv := newBareSupervisor(t)
	ch := sv.events.subscribe()
	defer sv.events.unsubscribe(ch)
	const id = "00000000c0de"
	ctx := sv.beginCreate(context.Background(), Session{ID: id, Name: "web", Image: "default:latest"})

	steps := []string{PhaseStarting, PhaseTemplate, PhaseBooting, PhaseTerminal}
	for i, phase := range steps {
		if i > 0 {
			if phase == PhaseTerminal {
				sv.setCreatingPhase(id, phase) // register's step, outside the boot
			} else {
				setPhase(ctx, phase) // what bootConfig calls
			}
		}
		e := nextEvent(t, ch)
		if e.Type != EventCreating || e.Session != id || e.State != Creating || e.Phase != phase {
			t.Fatalf("step %q: event %+v", phase, e)
		}
		for _, all := range []bool{false, true} {
			list := sv.List(all)
			if len(list) != 1 || list[0].ID != id || list[0].State != Creating || list[0].Phase != phase || list[0].Name != "web" || list[0].PTYs == nil {
				t.Fatalf("step %q: List(%v) = %+v", phase, all, list)
			}
		}
	}
	// The same step twice is announced once.
	setPhase(ctx, PhaseTerminal)

	if s, err := sv.Get("web"); err != nil || s.ID != id || s.State != Creating {
		t.Fatalf("Get by name: %+v, %v", s, err)
	}
	refused := map[string]func() error{
		"stop":     func() error { _, err := sv.Stop(context.Background(), "web"); return err },
		"rm":       func() error { return sv.Remove(context.Background(), id, false) },
		"rm -f":    func() error { return sv.Remove(context.Background(), id, true) },
		"snapshot": func() error { _, err := sv.Snapshot(context.Background(), id, SnapshotRequest{}); return err },
	}
	for what, f := range refused {
		err := f()
		if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "is being created ("+PhaseTerminal+")") {
			t.Errorf("%s of a session being made: %v; want a conflict saying so", what, err)
		}
	}
	if st := sv.Status(); st.Sessions != 1 || st.Live != 0 {
		t.Errorf("status counts %d sessions, %d live; want 1, 0", st.Sessions, st.Live)
	}

	sv.endCreate(id)
	if e := nextEvent(t, ch); e.Type != EventRemoved || e.Session != id {
		t.Fatalf("after the create failed: event %+v; want it removed", e)
	}
	if list := sv.List(true); len(list) != 0 {
		t.Fatalf("after the create failed: List = %+v", list)
	}
	if _, err := sv.Get(id); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Get after the create failed: %v", err)
	}
	sv.endCreate(id) // twice: nothing more is announced
	setPhase(ctx, PhaseBooting)
	select {
	case e := <-ch:
		if e.Type != EventUsage {
			t.Fatalf("an event after the end: %+v", e)
		}
	case <-time.After(100 * time.Millisecond):
	}
}

// TestCreateFailureUnlists: a resume that fails (no such snapshot) went
// through the real Create path: listed as creating while it checked the
// snapshot, then removed; nothing is left listed or on disk.
func TestCreateFailureUnlists(t *testing.T) {
	sv := newBareSupervisor(t)
	ch := sv.events.subscribe()
	defer sv.events.unsubscribe(ch)
	_, err := sv.Create(context.Background(), CreateRequest{Resume: "no-such-snapshot"})
	if err == nil {
		t.Fatal("a resume of no snapshot succeeded")
	}
	e := nextEvent(t, ch)
	if e.Type != EventCreating || e.Phase != PhaseCheckSnapshot {
		t.Fatalf("first event %+v; want creating, %q", e, PhaseCheckSnapshot)
	}
	if r := nextEvent(t, ch); r.Type != EventRemoved || r.Session != e.Session {
		t.Fatalf("then %+v; want %s removed", r, e.Session)
	}
	if list := sv.List(true); len(list) != 0 {
		t.Fatalf("List = %+v", list)
	}
	if ids, _ := sv.reg.ids(); len(ids) != 0 {
		t.Fatalf("directories left: %v", ids)
	}
}

// TestAdoptCreateCutShort: a supervisor that finds a session whose
// making an earlier one left unfinished (state.json still says creating)
// lists it as stale with the reason, never as creating, and kills the
// QEMU it may have left.
func TestAdoptCreateCutShort(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
	for _, qemu := range []struct {
		name  string
		setup qemuSetup
	}{{"qemu running", runningQEMU}, {"no qemu", noPidFile}} {
		t.Run(qemu.name, func(t *testing.T) {
			sv := newBareSupervisor(t)
			dir := sv.reg.dir(adoptID)
			rec := Record{ID: adoptID, Created: time.Now().UTC(), HostBootID: sv.bootID}
			rec.VM.Dir = dir
			if err := sv.reg.create(rec); err != nil { // state.json: creating
				t.Fatal(err)
			}
			pid := qemu.setup(t, dir)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			sv.Adopt(ctx)
			s, err := sv.Get(adoptID)
			if err != nil || s.State != Stale || !strings.Contains(s.Reason, "create was cut short") || s.PID != 0 {
				t.Fatalf("adopted: %s %q pid %d, %v; want stale, cut short", s.State, s.Reason, s.PID, err)
			}
			if pid != 0 {
				testutil.WaitFor(t, 10*time.Second, "the QEMU of the unfinished create killed", func() bool {
					st := testutil.ProcState(pid)
					return st == "" || st == "Z"
				})
			}
			if err := sv.Remove(context.Background(), adoptID, false); err != nil {
				t.Fatalf("rm: %v", err)
			}
		})
	}
}
