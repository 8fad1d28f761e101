package sessions

// What a restarted supervisor makes of the sessions it finds on disk, with
// no VM booted: a session's "QEMU" is a stand-in process whose command
// line names it so (what vm.RunningPID checks), and its guest agent is a
// fake on the VM's agent socket that speaks just enough of the protocol
// for adoption (the handshake, then setup, ping, list and attach).

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"go.uber.org/goleak"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/syncbuf"
	"github.com/gondolin/gondolin/internal/testutil"
	"github.com/gondolin/gondolin/vm"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// adoptID is the session each adoption case loads.
const adoptID = "0000000000ad"

// The terminals the adopted session's state records: the guest still
// runs guestPTY and has forgotten forgottenPTY.
const (
	guestPTY     = 1
	forgottenPTY = 2
)

// qemuName is what a stand-in for the QEMU of the VM in dir calls itself.
func qemuName(dir string) string {
	return "qemu-system-x86_64 -name gondolin -pidfile " + filepath.Join(dir, layout.QEMUPid) + " -drive file=" + filepath.Join(dir, layout.Disk)
}

// agentMode is how a case's guest agent behaves.
type agentMode int

const (
	noAgent        agentMode = iota // no socket (QEMU offers none)
	silentAgent                     // accepts the connection, never answers
	answeringAgent                  // answers at once
	lateAgent                       // answers once the test says so, while adoption waits
	tooLateAgent                    // answers only after adoption gave up on it
)

// fakeAgent is a guest agent on a VM's agent socket: it accepts
// connections at once, as QEMU does, and speaks once answer is closed.
// Connections still open when the test ends are closed, and its
// goroutines waited for.
type fakeAgent struct {
	answer   chan struct{}
	once     sync.Once
	accepted chan struct{} // closed on the first connection
	accOnce  sync.Once
	done     chan struct{}
	mu       sync.Mutex
	conns    map[net.Conn]bool
	wg       sync.WaitGroup
	attachMu sync.Mutex
	attached []uint64 // the terminals the host attached to
}

func serveFakeAgent(t *testing.T, dir string) *fakeAgent {
	t.Helper()
	f := &fakeAgent{answer: make(chan struct{}), accepted: make(chan struct{}), done: make(chan struct{}), conns: map[net.Conn]bool{}}
	ln := testutil.Listen(t, "unix", filepath.Join(dir, layout.AgentSocket))
	t.Cleanup(func() {
		f.mu.Lock()
		close(f.done)
		for c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	testutil.Serve(t, ln, f.serve)
	return f
}

// speak lets the agent answer.
func (f *fakeAgent) speak() { f.once.Do(func() { close(f.answer) }) }

func (f *fakeAgent) serve(c net.Conn) {
	f.mu.Lock()
	select {
	case <-f.done:
		f.mu.Unlock()
		c.Close()
		return
	default:
	}
	f.conns[c] = true
	f.wg.Add(1)
	f.mu.Unlock()
	defer f.wg.Done()
	defer c.Close()
	f.accOnce.Do(func() { close(f.accepted) })
	select {
	case <-f.answer:
	case <-f.done:
		return
	}
	br := bufio.NewReaderSize(c, 64<<10)
	if err := agentproto.GuestHandshake(br, c); err != nil {
		return
	}
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = false
	cfg.LogOutput = io.Discard
	sess, err := yamux.Server(&agentproto.Conn{R: br, W: c, C: c}, cfg)
	if err != nil {
		return
	}
	defer sess.Close()
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		f.handle(st)
	}
}

// handle answers one request. An attached terminal's stream stays open
// (the terminal runs on) until the connection goes.
func (f *fakeAgent) handle(st *yamux.Stream) {
	var req agentproto.Request
	if err := agentproto.Expect(st, agentproto.FrameRequest, &req); err != nil {
		st.Close()
		return
	}
	var resp agentproto.Response
	switch req.Op {
	case agentproto.OpPing:
		resp.Info = &agentproto.Info{Version: agentproto.Version, Kernel: "fake"}
	case agentproto.OpList:
		resp.Processes = []agentproto.Process{{ID: guestPTY, PID: 42, Argv: []string{"top"}, TTY: true, Running: true, Offset: 5}}
	case agentproto.OpAttach:
		if req.ID != guestPTY {
			agentproto.WriteJSON(st, agentproto.FrameError, agentproto.Response{Error: "no such process"})
			st.Close()
			return
		}
		f.attachMu.Lock()
		f.attached = append(f.attached, req.ID)
		f.attachMu.Unlock()
		resp.ID = req.ID
		agentproto.WriteJSON(st, agentproto.FrameResponse, resp)
		agentproto.WriteFrame(st, agentproto.FrameOutput, agentproto.OutputPayload(req.Offset, []byte("hello")[min(req.Offset, 5):]))
		return
	case agentproto.OpSetup:
	default:
		agentproto.WriteJSON(st, agentproto.FrameError, agentproto.Response{Error: "not faked: " + req.Op})
		st.Close()
		return
	}
	agentproto.WriteJSON(st, agentproto.FrameResponse, resp)
	st.Close()
}

// A pid file and what it names, as a restarted supervisor finds them.
// Each returns the pid of the session's QEMU, 0 when it has none.
type qemuSetup func(t *testing.T, dir string) int

func writePidFile(t *testing.T, dir, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, layout.QEMUPid), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

var (
	noPidFile      qemuSetup = func(t *testing.T, dir string) int { return 0 }
	garbagePidFile qemuSetup = func(t *testing.T, dir string) int { writePidFile(t, dir, "qemu?\n"); return 0 }
	deadPid        qemuSetup = func(t *testing.T, dir string) int {
		cmd := testutil.StartNamed(t, qemuName(dir), "0")
		cmd.Wait()
		writePidFile(t, dir, strconv.Itoa(cmd.Process.Pid))
		return 0
	}
	reusedPid qemuSetup = func(t *testing.T, dir string) int {
		cmd := testutil.StartNamed(t, "sleep", "600")
		writePidFile(t, dir, strconv.Itoa(cmd.Process.Pid))
		return 0
	}
	zombiePid qemuSetup = func(t *testing.T, dir string) int {
		cmd := testutil.StartNamed(t, qemuName(dir), "0")
		testutil.WaitFor(t, 10*time.Second, "a zombie", func() bool { return testutil.ProcState(cmd.Process.Pid) == "Z" })
		writePidFile(t, dir, strconv.Itoa(cmd.Process.Pid))
		return 0
	}
	runningQEMU qemuSetup = func(t *testing.T, dir string) int {
		cmd := testutil.StartNamed(t, qemuName(dir), "600")
		writePidFile(t, dir, strconv.Itoa(cmd.Process.Pid)+"\n")
		return cmd.Process.Pid
	}
)

// TestAdoptDecides: for each way a restarted supervisor can find a
// session's VM, the state and reason Adopt leaves it in, whether its QEMU
// is taken over, and what then becomes of it when that QEMU exits.
func TestAdoptDecides(t *testing.T) {
	const otherBoot = "a boot before the host's last reboot"
	tests := []struct {
		name    string
		stopped bool
		// boot is the record's HostBootID: "" as in older records,
		// "this" for this boot.
		boot  string
		qemu  qemuSetup
		agent agentMode
		want  State
		// reason is in the session's Reason; before, when set, is its
		// state while adoption waits for a lateAgent.
		reason  string
		before  string
		adopted bool // the QEMU is taken over (its PID reported)
	}{
		{name: "stopped", stopped: true, qemu: runningQEMU, agent: answeringAgent, want: Stopped},
		{name: "pid file missing", qemu: noPidFile, want: Stale, reason: "the VM is not running (vm is not running: no pid file)"},
		{name: "pid file garbage", qemu: garbagePidFile, want: Stale, reason: "the VM is not running (vm is not running: bad pid file)"},
		{name: "pid dead", qemu: deadPid, want: Stale, reason: "is gone"},
		{name: "pid reused by an unrelated process", qemu: reusedPid, want: Stale, reason: "is not this VM's QEMU"},
		{name: "zombie", qemu: zombiePid, want: Stale, reason: "the VM is not running (vm is not running: process"},
		{name: "host rebooted", boot: otherBoot, qemu: runningQEMU, agent: answeringAgent, want: Stale, reason: "the host rebooted since the VM started"},
		{name: "no agent socket", qemu: runningQEMU, agent: noAgent, want: Stale, reason: "agent not answering: guest agent did not answer: connect to guest agent", adopted: true},
		{name: "agent never answers", qemu: runningQEMU, agent: silentAgent, want: Stale, reason: "agent not answering: guest agent did not answer: guest agent handshake: context deadline exceeded", adopted: true},
		{name: "agent answers", qemu: runningQEMU, agent: answeringAgent, want: Live, adopted: true},
		{name: "agent answers, same boot", boot: "this", qemu: runningQEMU, agent: answeringAgent, want: Live, adopted: true},
		{name: "agent answers late", qemu: runningQEMU, agent: lateAgent, want: Live, before: "reconnecting to the agent", adopted: true},
		{name: "agent answers after adoption gave up", qemu: runningQEMU, agent: tooLateAgent, want: Live,
			before: "agent not answering: guest agent did not answer", adopted: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Registered first, so checked last: after the supervisor
			// closed and the processes were reaped.
			before := goleak.IgnoreCurrent()
			t.Cleanup(func() { goleak.VerifyNone(t, before) })
			if tt.agent == tooLateAgent {
				// Restored after the supervisor's Close has waited for
				// its watchers (cleanups run last registered first).
				old := probeInterval
				probeInterval = 200 * time.Millisecond
				t.Cleanup(func() { probeInterval = old })
			}

			home, err := os.MkdirTemp("", "gdad") // short: the agent socket's path is bounded
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(home) })
			rt, err := NewRuntime(layout.Home(home))
			if err != nil {
				t.Fatal(err)
			}
			logs := &syncbuf.Buffer{}
			sv := NewSupervisor(rt, log.New(logs, "", 0))
			dir := sv.reg.dir(adoptID)
			rec := Record{ID: adoptID, Created: time.Now().UTC(), HostBootID: tt.boot}
			if tt.boot == "this" {
				rec.HostBootID = sv.bootID
			}
			rec.VM.Dir = dir
			if err := sv.reg.create(rec); err != nil {
				t.Fatal(err)
			}
			now := time.Now().UTC()
			ptys := []PTYRecord{{ID: guestPTY, Argv: []string{"top"}, Created: now}, {ID: forgottenPTY, Argv: []string{"sh"}, Created: now}}
			if err := sv.reg.saveState(adoptID, StateRecord{Stopped: tt.stopped, PTYs: ptys}); err != nil {
				t.Fatal(err)
			}
			pid := tt.qemu(t, dir)
			var agent *fakeAgent
			if tt.agent != noAgent {
				agent = serveFakeAgent(t, dir)
				if tt.agent == answeringAgent {
					agent.speak()
				}
			}
			closed := false
			closeOnce := func() {
				if !closed {
					closed = true
					sv.Close()
				}
			}
			t.Cleanup(closeOnce)

			// Adoption gives up on an agent after 15s, or when its
			// context ends: sooner here.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			adopted := make(chan struct{})
			go func() {
				defer close(adopted)
				sv.Adopt(ctx)
			}()
			if tt.agent == lateAgent {
				select {
				case <-agent.accepted:
				case <-adopted:
					t.Fatal("adoption ended without connecting to the agent")
				}
				// The session is listed while its agent is awaited, and
				// stays so (the host repeating its hello) until the
				// agent answers.
				for range 3 {
					s, err := sv.Get(adoptID)
					if err != nil || s.State != Stale || s.Reason != tt.before || s.PID != pid {
						t.Fatalf("while the agent is awaited: %s %q pid %d, %v; want stale %q pid %d", s.State, s.Reason, s.PID, err, tt.before, pid)
					}
					time.Sleep(150 * time.Millisecond)
				}
				agent.speak()
			}
			select {
			case <-adopted:
			case <-time.After(30 * time.Second):
				t.Fatal("Adopt did not return")
			}
			if tt.agent == tooLateAgent {
				// Adoption gave up: stale, and asked again at every probe
				// until the guest answers.
				s, err := sv.Get(adoptID)
				if err != nil || s.State != Stale || !strings.Contains(s.Reason, tt.before) {
					t.Fatalf("after adoption gave up: %s %q, %v; want stale %q", s.State, s.Reason, err, tt.before)
				}
				agent.speak()
				testutil.WaitFor(t, 10*time.Second, "the session live once its agent answered", func() bool {
					s, err := sv.Get(adoptID)
					return err == nil && s.State == Live
				})
			}

			s, err := sv.Get(adoptID)
			if err != nil {
				t.Fatal(err)
			}
			if s.State != tt.want || !strings.Contains(s.Reason, tt.reason) || (tt.reason == "" && s.Reason != "") {
				t.Fatalf("state %s, reason %q; want %s, %q\nlog:\n%s", s.State, s.Reason, tt.want, tt.reason, logs.String())
			}
			wantPID := 0
			if tt.adopted {
				wantPID = pid
			}
			if s.PID != wantPID {
				t.Fatalf("PID %d; want %d", s.PID, wantPID)
			}
			running := map[uint64]bool{}
			for _, p := range s.PTYs {
				running[p.ID] = p.Running
			}
			if len(s.PTYs) != len(ptys) {
				t.Fatalf("terminals %+v; want the %d recorded", s.PTYs, len(ptys))
			}
			// Only a live session follows the terminals its guest still
			// has; the ones it forgot, and all of a session without an
			// agent, are not running.
			if running[guestPTY] != (tt.want == Live) || running[forgottenPTY] {
				t.Errorf("terminals running: %v", running)
			}
			if tt.want == Live {
				agent.attachMu.Lock()
				attached := fmt.Sprint(agent.attached)
				agent.attachMu.Unlock()
				if attached != fmt.Sprint([]uint64{guestPTY}) {
					t.Errorf("attached to terminals %s; want [%d]", attached, guestPTY)
				}
			}
			if pid != 0 && !tt.adopted {
				// A QEMU that is not taken over is not touched either.
				if err := syscall.Kill(pid, 0); err != nil {
					t.Errorf("the QEMU that was not taken over: %v", err)
				}
			}
			if !tt.adopted {
				return
			}
			// The session's watcher sees its QEMU die (killed, not
			// stopped: it was not asked to stop).
			p, _ := os.FindProcess(pid)
			p.Kill()
			testutil.WaitFor(t, 10*time.Second, "the session stale with its VM's exit", func() bool {
				s, err := sv.Get(adoptID)
				return err == nil && s.State == Stale && strings.HasPrefix(s.Reason, "the VM exited: ") && s.PID == 0
			})
			s, _ = sv.Get(adoptID)
			for _, p := range s.PTYs {
				if p.Running {
					t.Errorf("terminal %d runs on after its VM exited", p.ID)
				}
			}
			closeOnce()
		})
	}
}

// TestDerivedState: the state and reason a session shows, derived from
// what the supervisor knows of it (nothing of it is stored).
func TestDerivedState(t *testing.T) {
	// derivedLocked only asks whether there is a machine and an agent
	// connection.
	m, a := new(vm.Machine), new(vm.Agent)
	const brokenWhy, staleWhy = "internal error in the guest's frames; remove it with: gondolin rm -f x", "agent not answering: context deadline exceeded"
	tests := []struct {
		name    string
		stopped bool
		broken  string
		stale   string
		m       *vm.Machine
		a       *vm.Agent
		want    State
		reason  string
	}{
		{name: "stopped", stopped: true, want: Stopped},
		{name: "stopped wins over everything", stopped: true, broken: brokenWhy, stale: staleWhy, m: m, a: a, want: Stopped},
		{name: "broken", broken: brokenWhy, m: m, a: a, want: Stale, reason: brokenWhy},
		{name: "broken wins over stale", broken: brokenWhy, stale: staleWhy, m: m, want: Stale, reason: brokenWhy},
		{name: "stale with a reason", stale: staleWhy, want: Stale, reason: staleWhy},
		{name: "stale although connected (a probe failed)", stale: staleWhy, m: m, a: a, want: Stale, reason: staleWhy},
		{name: "no VM", want: Stale, reason: "the VM is not running"},
		{name: "no VM but an agent", a: a, want: Stale, reason: "the VM is not running"},
		{name: "VM, agent awaited", m: m, want: Stale, reason: "reconnecting to the agent"},
		{name: "VM and agent", m: m, a: a, want: Live},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &session{state: StateRecord{Stopped: tt.stopped}, broken: tt.broken, stale: tt.stale, m: tt.m, agent: tt.a}
			s.mu.Lock()
			st, reason := s.derivedLocked()
			s.mu.Unlock()
			if st != tt.want || reason != tt.reason {
				t.Errorf("derivedLocked = %s, %q; want %s, %q", st, reason, tt.want, tt.reason)
			}
		})
	}
}
