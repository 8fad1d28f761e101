package vm

// Adoption without QEMU: a stand-in process whose command line names it
// a VM's QEMU, as RunningPID checks, and the host-side agent on the VM's
// socket. Each test starts its own processes and reaps them when it ends.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testutil"
	"github.com/gondolin/gondolin/vm/agent"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// adoptDir makes a VM directory short enough for its sockets' paths.
func adoptDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "gdadopt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// qemuArgv0 is what a stand-in for dir's QEMU calls itself: QEMU's
// command line names the VM's directory in its -pidfile, sockets and
// disk.
func qemuArgv0(dir string) string {
	return "qemu-system-x86_64 -name gondolin -pidfile " + filepath.Join(dir, layout.QEMUPid) + " -drive file=" + filepath.Join(dir, layout.Disk)
}

// writePid writes dir's pid file.
func writePid(t *testing.T, dir, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, layout.QEMUPid), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// pidCase sets up dir as a case of adoption finds it: it writes the pid
// file (or not) and starts what it names. It returns the pid RunningPID
// must report, 0 for none.
type pidCase struct {
	name  string
	setup func(t *testing.T, dir string) (want int)
	// why is in RunningPID's error when want is 0 (any of them).
	why []string
}

func pidCases() []pidCase {
	return []pidCase{
		{"no pid file", func(t *testing.T, dir string) int { return 0 }, []string{"no pid file"}},
		{"empty pid file", func(t *testing.T, dir string) int { writePid(t, dir, ""); return 0 }, []string{"bad pid file"}},
		{"garbage pid file", func(t *testing.T, dir string) int { writePid(t, dir, "qemu\x00\xff"); return 0 }, []string{"bad pid file"}},
		{"pid with trailing garbage", func(t *testing.T, dir string) int { writePid(t, dir, "123abc\n"); return 0 }, []string{"bad pid file"}},
		{"pid zero", func(t *testing.T, dir string) int { writePid(t, dir, "0\n"); return 0 }, []string{"bad pid file"}},
		{"negative pid", func(t *testing.T, dir string) int { writePid(t, dir, "-1\n"); return 0 }, []string{"bad pid file"}},
		{"dead pid", func(t *testing.T, dir string) int {
			cmd := testutil.StartNamed(t, qemuArgv0(dir), "0")
			cmd.Wait() // exited and reaped: the pid names nothing
			writePid(t, dir, strconv.Itoa(cmd.Process.Pid))
			return 0
		}, []string{"is gone"}},
		{"pid reused by an unrelated process", func(t *testing.T, dir string) int {
			// As after a reboot: the pid file outlived its QEMU, and
			// the pid now names something else.
			cmd := testutil.StartNamed(t, "sleep", "600")
			writePid(t, dir, strconv.Itoa(cmd.Process.Pid))
			return 0
		}, []string{"is not this VM's QEMU"}},
		{"pid reused by a process that names the directory", func(t *testing.T, dir string) int {
			cmd := testutil.StartNamed(t, "tail -f "+filepath.Join(dir, layout.ConsoleLog), "600")
			writePid(t, dir, strconv.Itoa(cmd.Process.Pid))
			return 0
		}, []string{"is not this VM's QEMU"}},
		{"pid reused by another VM's QEMU", func(t *testing.T, dir string) int {
			cmd := testutil.StartNamed(t, qemuArgv0(filepath.Join(filepath.Dir(dir), "other")), "600")
			writePid(t, dir, strconv.Itoa(cmd.Process.Pid))
			return 0
		}, []string{"is not this VM's QEMU"}},
		{"pid reused by the QEMU of a directory with the same prefix", func(t *testing.T, dir string) int {
			cmd := testutil.StartNamed(t, qemuArgv0(dir+"0"), "600")
			writePid(t, dir, strconv.Itoa(cmd.Process.Pid))
			return 0
		}, []string{"is not this VM's QEMU"}},
		{"zombie qemu", func(t *testing.T, dir string) int {
			// Exited, not reaped yet (its parent, this test, has not
			// waited): its pid still names it.
			cmd := testutil.StartNamed(t, qemuArgv0(dir), "0")
			testutil.WaitFor(t, 10*time.Second, "the process a zombie", func() bool { return testutil.ProcState(cmd.Process.Pid) == "Z" })
			writePid(t, dir, strconv.Itoa(cmd.Process.Pid))
			return 0
		}, []string{"has exited"}},
		{"the VM's qemu", func(t *testing.T, dir string) int {
			cmd := testutil.StartNamed(t, qemuArgv0(dir), "600")
			writePid(t, dir, strconv.Itoa(cmd.Process.Pid)+"\n") // as QEMU writes it
			return cmd.Process.Pid
		}, nil},
		{"the VM's qemu, pid padded", func(t *testing.T, dir string) int {
			cmd := testutil.StartNamed(t, qemuArgv0(dir), "600")
			writePid(t, dir, "  "+strconv.Itoa(cmd.Process.Pid)+" \n")
			return cmd.Process.Pid
		}, nil},
	}
}

// checkNotRunning checks that err is ErrNotRunning for one of the
// reasons why.
func checkNotRunning(t *testing.T, err error, why []string) {
	t.Helper()
	if !errors.Is(err, ErrNotRunning) {
		t.Fatalf("err = %v; want ErrNotRunning", err)
	}
	for _, w := range why {
		if strings.Contains(err.Error(), w) {
			return
		}
	}
	t.Fatalf("err = %v; want it to say one of %q", err, why)
}

// TestRunningPID: what RunningPID makes of a VM directory's pid file and
// the process it names.
func TestRunningPID(t *testing.T) {
	for _, tt := range pidCases() {
		t.Run(tt.name, func(t *testing.T) {
			dir := adoptDir(t)
			want := tt.setup(t, dir)
			pid, err := RunningPID(dir)
			if want == 0 {
				if pid != 0 {
					t.Errorf("pid = %d; want none", pid)
				}
				checkNotRunning(t, err, tt.why)
				return
			}
			if err != nil || pid != want {
				t.Fatalf("RunningPID = %d, %v; want %d", pid, err, want)
			}
		})
	}
}

// TestAdopt: Adopt takes over exactly the processes RunningPID accepts,
// skips what the guest printed before, and sees the adopted QEMU exit
// although it is not a child it can wait for.
func TestAdopt(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	for _, tt := range pidCases() {
		t.Run(tt.name, func(t *testing.T) {
			dir := adoptDir(t)
			old := []byte("output of the guest before the restart\n")
			if err := os.WriteFile(filepath.Join(dir, layout.ConsoleLog), old, 0o600); err != nil {
				t.Fatal(err)
			}
			want := tt.setup(t, dir)
			m, err := Adopt(Config{Dir: dir})
			if want == 0 {
				if m != nil {
					t.Errorf("adopted a machine: pid %d", m.PID())
				}
				checkNotRunning(t, err, tt.why)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// The watch on the process ends with it: kill it at the end
			// if the test did not.
			t.Cleanup(func() {
				if p, err := os.FindProcess(want); err == nil {
					p.Kill()
				}
				waitExited(t, m)
			})
			if m.PID() != want {
				t.Fatalf("PID = %d; want %d", m.PID(), want)
			}
			if m.Config().Dir != dir || m.Config().CPUs != DefaultCPUs {
				t.Errorf("config not filled in: %+v", m.Config())
			}
			if m.consoleFrom != int64(len(old)) {
				t.Errorf("consoleFrom = %d; want %d (what the guest printed before)", m.consoleFrom, len(old))
			}
			select {
			case <-m.Exited():
				t.Fatalf("exited at once: %v", m.ExitErr())
			case <-time.After(200 * time.Millisecond):
			}
			if p, err := os.FindProcess(want); err == nil {
				p.Kill()
			}
			select {
			case <-m.Exited():
			case <-time.After(10 * time.Second):
				t.Fatal("the adopted QEMU's exit was not seen")
			}
			if err := m.ExitErr(); !errors.Is(err, ErrExited) || !strings.Contains(err.Error(), "exit status unknown") {
				t.Errorf("ExitErr = %v; want ErrExited, exit status unknown", err)
			}
		})
	}
}

// waitExited waits for an adopted machine to see its QEMU exit (its
// goroutines end with it).
func waitExited(t *testing.T, m *Machine) {
	t.Helper()
	select {
	case <-m.Exited():
	case <-time.After(10 * time.Second):
		t.Error("the adopted QEMU's exit was not seen")
	}
}

// adoptSystem is the agent's System for adoption: the guest side of
// Setup (it records the hostnames it is given) and Ping, nothing more.
type adoptSystem struct {
	mu        sync.Mutex
	hostnames []string
}

func (s *adoptSystem) Setup(setup *agentproto.Setup) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hostnames = append(s.hostnames, setup.Hostname)
	return nil
}

func (s *adoptSystem) setups() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.hostnames...)
}

func (*adoptSystem) Info() agentproto.Info {
	return agentproto.Info{Version: agentproto.Version, Kernel: "adopt-test"}
}
func (*adoptSystem) Network(*agentproto.Network) error { return errors.New("no network here") }
func (*adoptSystem) Mount(*agentproto.Mount) error     { return errors.New("no mounts here") }
func (*adoptSystem) Freeze(*agentproto.Freeze) error   { return errors.New("no freezing here") }
func (*adoptSystem) Sync() error                       { return nil }
func (*adoptSystem) Shutdown() error                   { return errors.New("not in a VM") }

// serveLateAgent serves the agent on dir's socket, as QEMU offers it:
// connections are accepted at once, but the agent reads nothing until
// answer is closed (a guest still booting, or hung). Connections still
// open when the test ends are closed.
func serveLateAgent(t *testing.T, dir string, answer <-chan struct{}) *adoptSystem {
	t.Helper()
	ln := testutil.Listen(t, "unix", filepath.Join(dir, layout.AgentSocket))
	sys := &adoptSystem{}
	srv := agent.NewServer(log.New(io.Discard, "", 0), sys)
	done := make(chan struct{})
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		close(done)
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	testutil.Serve(t, ln, func(c net.Conn) {
		mu.Lock()
		select {
		case <-done:
			mu.Unlock()
			c.Close()
			return
		default:
		}
		conns[c] = true
		wg.Add(1)
		mu.Unlock()
		defer wg.Done()
		defer c.Close()
		select {
		case <-answer:
		case <-done:
			return
		}
		srv.ServeConn(c)
	})
	return sys
}

// TestAdoptedAgent: connecting to the agent of an adopted VM, as the
// supervisor does after taking its QEMU over, for each way the guest may
// (not) answer.
func TestAdoptedAgent(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(),
		// The in-process agent's SIGCHLD loop lives as long as the process.
		goleak.IgnoreTopFunction("os/signal.signal_recv"), goleak.IgnoreAnyFunction("github.com/gondolin/gondolin/vm/agent.newReaper.func1"))
	const wait = 1500 * time.Millisecond
	never := -time.Duration(1)
	tests := []struct {
		name string
		// answerAfter is when the agent starts answering: 0 at once,
		// never (negative) not at all; no socket when noSocket.
		answerAfter time.Duration
		noSocket    bool
		err         error  // wanted error, nil for a connection
		text        string // in the error
	}{
		{name: "agent answers", answerAfter: 0},
		{name: "agent answers late", answerAfter: 500 * time.Millisecond},
		{name: "agent never answers", answerAfter: never, err: context.DeadlineExceeded, text: "guest agent did not answer"},
		{name: "no agent socket", noSocket: true, err: os.ErrNotExist, text: "connect to guest agent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := adoptDir(t)
			cmd := testutil.StartNamed(t, qemuArgv0(dir), "600")
			writePid(t, dir, strconv.Itoa(cmd.Process.Pid))
			m, err := Adopt(Config{Dir: dir})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				cmd.Process.Kill()
				waitExited(t, m)
			})
			var sys *adoptSystem
			if !tt.noSocket {
				answer := make(chan struct{})
				sys = serveLateAgent(t, dir, answer)
				switch {
				case tt.answerAfter == 0:
					close(answer)
				case tt.answerAfter > 0:
					timer := time.AfterFunc(tt.answerAfter, func() { close(answer) })
					t.Cleanup(func() { timer.Stop() })
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			start := time.Now()
			type result struct {
				a   *Agent
				err error
			}
			got := make(chan result, 1)
			go func() {
				a, err := m.ConnectAgent(ctx, agentproto.Setup{Hostname: "adopted"})
				got <- result{a, err}
			}()
			var a *Agent
			select {
			case r := <-got:
				a, err = r.a, r.err
			case <-time.After(wait + 10*time.Second):
				t.Fatalf("ConnectAgent still waits %v after its deadline", time.Since(start)-wait)
			}
			if tt.err != nil {
				if a != nil {
					a.Close()
				}
				if !errors.Is(err, tt.err) || !strings.Contains(err.Error(), tt.text) {
					t.Fatalf("err = %v; want %v mentioning %q", err, tt.err, tt.text)
				}
				return
			}
			if err != nil {
				t.Fatalf("no connection after %v: %v", time.Since(start), err)
			}
			defer a.Close()
			if d := time.Since(start); d < tt.answerAfter {
				t.Errorf("connected after %v, before the agent answered (%v)", d, tt.answerAfter)
			}
			info, err := a.Ping(ctx)
			if err != nil || info.Kernel != "adopt-test" {
				t.Fatalf("Ping = %+v, %v", info, err)
			}
			// The guest learns who it is (and the time) on every
			// connection.
			if got := fmt.Sprint(sys.setups()); got != "[adopted]" {
				t.Errorf("the guest was set up with hostnames %s; want [adopted]", got)
			}
		})
	}
}
