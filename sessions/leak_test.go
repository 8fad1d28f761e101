package sessions

import (
	"context"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gondolin/gondolin/internal/layout"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// A supervisor leaves nothing running behind the sessions it knew: every
// terminal's emulator (and the goroutine draining its answers) goes with
// its session, the usage reports stop with Close, and so does the
// watcher of a VM that outlives the supervisor (it would reconnect). No
// VM is booted: the sessions are adopted from disk as a restarted
// supervisor finds them, one of them with a stand-in for its QEMU.
func TestSupervisorLeavesNoGoroutines(t *testing.T) {
	before := goleak.IgnoreCurrent()
	defer goleak.VerifyNone(t, before)
	dir, err := os.MkdirTemp("", "gdleak")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	home := layout.Home(dir)
	rt, err := NewRuntime(home)
	if err != nil {
		t.Fatal(err)
	}
	sv := NewSupervisor(rt, log.New(io.Discard, "", 0))
	closed := false
	defer func() {
		if !closed {
			sv.Close()
		}
	}()
	now := time.Now().UTC()
	ptys := []PTYRecord{{ID: 1, Argv: []string{"sh"}, Created: now, Main: true}, {ID: 2, Argv: []string{"top"}, Created: now}}
	const stopped, gone, running = "0123456789ab", "ba9876543210", "00000000000a"
	for _, id := range []string{stopped, gone, running} {
		rec := Record{ID: id, Created: now}
		rec.VM.Dir = sv.reg.dir(id)
		if err := sv.reg.create(rec); err != nil {
			t.Fatal(err)
		}
		if err := sv.reg.saveState(id, StateRecord{Stopped: id == stopped, PTYs: ptys}); err != nil {
			t.Fatal(err)
		}
	}
	// The running session's "QEMU": a process that names itself so and
	// its VM's directory, as the real one does. Its agent never answers,
	// so the session is stale and watched for its VM's exit.
	qemu := exec.Command("sh", "-c", "sleep 600; : qemu-system "+sv.reg.dir(running)+"/")
	if err := qemu.Start(); err != nil {
		t.Fatal(err)
	}
	defer qemu.Wait()
	defer qemu.Process.Kill()
	if err := os.WriteFile(filepath.Join(sv.reg.dir(running), layout.QEMUPid), []byte(strconv.Itoa(qemu.Process.Pid)), 0o600); err != nil {
		t.Fatal(err)
	}
	sv.Adopt(context.Background())
	if s, err := sv.Get(running); err != nil || s.PID != qemu.Process.Pid {
		t.Fatalf("the running session was not adopted: %+v %v", s, err)
	}
	for _, id := range []string{stopped, gone, running} {
		s, err := sv.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.PTYs) != len(ptys) {
			t.Fatalf("session %s: %d terminals, want %d", id, len(s.PTYs), len(ptys))
		}
	}
	if err := sv.Remove(context.Background(), gone, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sv.reg.dir(gone)); !os.IsNotExist(err) {
		t.Fatalf("the removed session's directory: %v", err)
	}
	// Close waits for the watchers: one that missed it would hang here.
	done := make(chan struct{})
	go func() {
		sv.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not return: a session's watcher did not stop")
	}
	closed = true
	// The VM outlives the supervisor, and so do the vm package's two
	// goroutines for it (vm.Machine has no way to let go of a VM that
	// keeps running): the wait for its exit (a pidfd poll) and the
	// console log's cap. Both end with the process, before VerifyNone.
	if err := goleak.Find(before, goleak.IgnoreAnyFunction("github.com/gondolin/gondolin/vm.Adopt.func1"),
		goleak.IgnoreTopFunction("github.com/gondolin/gondolin/vm.(*Machine).capConsole")); err != nil {
		t.Fatal(err)
	}
}
