package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/charmbracelet/x/vt"
	"github.com/creack/pty"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/syncbuf"
	"github.com/gondolin/gondolin/internal/testenv"
	"github.com/gondolin/gondolin/internal/testutil"
	"github.com/gondolin/gondolin/sessions"
)

// term runs gondolin on a real pseudo-terminal and keeps what a user
// would see on screen in a terminal emulator.
type term struct {
	t    *testing.T
	cmd  *exec.Cmd
	ptmx *os.File
	mu   sync.Mutex
	emu  *vt.Emulator
	raw  strings.Builder
	done chan struct{}
	err  error
}

func startTerm(t *testing.T, home layout.Home, args ...string) *term {
	t.Helper()
	cmd := exec.Command(gondolinBin, args...)
	cmd.Env = append(os.Environ(), layout.EnvHome+"="+string(home), "TERM=xterm")
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 30, Cols: 100})
	if err != nil {
		t.Fatal(err)
	}
	tm := &term{t: t, cmd: cmd, ptmx: ptmx, emu: vt.NewEmulator(100, 30), done: make(chan struct{})}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ptmx.Read(buf)
			if n > 0 {
				tm.mu.Lock()
				tm.emu.Write(buf[:n])
				tm.raw.Write(buf[:n])
				tm.mu.Unlock()
			}
			if err != nil {
				break
			}
		}
	}()
	go func() {
		for {
			// The emulator answers queries; a real terminal would too.
			b := make([]byte, 256)
			if _, err := tm.emu.Read(b); err != nil {
				return
			}
		}
	}()
	go func() {
		tm.err = cmd.Wait()
		close(tm.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-tm.done
		ptmx.Close()
		if t.Failed() {
			t.Logf("screen of %v:\n%s", args, tm.screen())
		}
	})
	return tm
}

func (tm *term) screen() string {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return tm.emu.String()
}

func (tm *term) waitScreen(want string) {
	tm.t.Helper()
	if !testutil.Poll(60*time.Second, func() bool { return strings.Contains(tm.screen(), want) }) {
		tm.t.Fatalf("screen never showed %q; it shows:\n%s", want, tm.screen())
	}
}

func (tm *term) send(s string) {
	tm.t.Helper()
	if _, err := tm.ptmx.Write([]byte(s)); err != nil {
		tm.t.Fatal(err)
	}
}

// exit waits for gondolin to exit and returns its exit code.
func (tm *term) exit() int {
	tm.t.Helper()
	select {
	case <-tm.done:
	case <-time.After(30 * time.Second):
		tm.t.Fatalf("gondolin did not exit; screen:\n%s", tm.screen())
	}
	if ee, ok := tm.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return 0
}

func listSessions(t *testing.T, home layout.Home) map[string]sessions.Session {
	t.Helper()
	r := gondolin(t, home, "", "list", "--all", "--json")
	if r.code != 0 {
		t.Fatalf("list: %+v", r)
	}
	var list []sessions.Session
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("list --json: %v: %q", err, r.stdout)
	}
	out := map[string]sessions.Session{}
	for _, s := range list {
		out[s.Name] = s
		out[s.ID] = s
	}
	return out
}

func supervisorPID(t *testing.T, home layout.Home) int {
	t.Helper()
	b, err := os.ReadFile(home.SupervisorLock())
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func stopSupervisor(t *testing.T, home layout.Home) {
	t.Helper()
	gondolin(t, home, "", "supervisor", "stop", "--all")
}

// TestSessionLifecycle walks a session through what a user does: create,
// type, detach, reattach to the same screen, kill the supervisor, come
// back to the same screen with what was printed meanwhile, and exit.
func TestSessionLifecycle(t *testing.T) {
	home := testenv.Home(t)
	t.Cleanup(func() { stopSupervisor(t, home) })

	first := startTerm(t, home, "bash", "--name", "life")
	first.waitScreen("root@life")
	first.send("echo marker-$((40+2))\r")
	first.waitScreen("marker-42")
	first.send("\x1d") // Ctrl-]
	if code := first.exit(); code != 0 {
		t.Fatalf("detach exited %d", code)
	}
	if s := listSessions(t, home)["life"]; s.State != sessions.Live || s.RunningPTYs() != 1 || s.PID == 0 {
		t.Fatalf("after detach: %+v", s)
	}
	// A detached client is gone from the supervisor too.
	testutil.WaitFor(t, 10*time.Second, "no clients on the PTY", func() bool { return listSessions(t, home)["life"].PTYs[0].Clients == 0 })

	// Reattach: the screen comes back before anything is typed.
	second := startTerm(t, home, "attach", "--detach-keys", "ctrl-p,ctrl-q", "life")
	second.waitScreen("marker-42")
	second.send("(sleep 2; echo printed-while-away) &\r")
	time.Sleep(300 * time.Millisecond)
	second.send("\x1d") // not the detach keys now: the shell gets it
	time.Sleep(300 * time.Millisecond)
	select {
	case <-second.done:
		t.Fatal("Ctrl-] detached although --detach-keys changed them")
	default:
	}
	second.send("\x03")     // Ctrl-C: clear what readline made of Ctrl-]
	second.send("\x10\x11") // ctrl-p, ctrl-q
	if code := second.exit(); code != 0 {
		t.Fatalf("detach with ctrl-p,ctrl-q exited %d", code)
	}

	// kill -9 the supervisor; the next command starts a new one that
	// adopts the VM and replays what the terminal printed in between.
	old := supervisorPID(t, home)
	syscall.Kill(old, syscall.SIGKILL)
	time.Sleep(2500 * time.Millisecond)
	third := startTerm(t, home, "attach", "life")
	third.waitScreen("printed-while-away")
	if !strings.Contains(third.screen(), "marker-42") {
		t.Fatalf("screen lost its history:\n%s", third.screen())
	}
	if pid := supervisorPID(t, home); pid == old {
		t.Fatal("no new supervisor")
	}
	third.send("echo after-$((1+1))\r")
	third.waitScreen("after-2")
	third.send("exit 3\r")
	if code := third.exit(); code != 3 {
		t.Fatalf("attach exited %d, want the shell's 3", code)
	}
	testutil.WaitFor(t, 20*time.Second, "the session stopped", func() bool { return listSessions(t, home)["life"].State == sessions.Stopped })
	if r := gondolin(t, home, "", "rm", "life"); r.code != 0 {
		t.Fatalf("rm: %+v", r)
	}
	if _, ok := listSessions(t, home)["life"]; ok {
		t.Fatal("session still listed after rm")
	}
}

// TestSessionSharedTerminal attaches two clients to one terminal.
func TestSessionSharedTerminal(t *testing.T) {
	home := testenv.Home(t)
	t.Cleanup(func() { stopSupervisor(t, home) })
	if r := gondolin(t, home, "", "bash", "--detach", "--name", "shared"); r.code != 0 {
		t.Fatalf("bash --detach: %+v", r)
	}
	a := startTerm(t, home, "attach", "shared")
	b := startTerm(t, home, "attach", "shared")
	a.waitScreen("root@shared")
	b.waitScreen("root@shared")
	a.send("echo from-$((10+1))\r")
	a.waitScreen("from-11")
	b.waitScreen("from-11")
	b.send("echo from-$((20+2))\r")
	a.waitScreen("from-22")
	b.waitScreen("from-22")
	a.send("\x1d")
	a.exit()
	b.send("echo still-$((3+3))\r")
	b.waitScreen("still-6")

	// A new terminal with a command, written as the README does: flags
	// may follow the session, and -- is not part of the command.
	c := startTerm(t, home, "attach", "shared", "--detach-keys", "ctrl-p,ctrl-q", "--env", "X=4", "--cwd", "/tmp",
		"--", "sh", "-c", "echo ran-$((3+X)) in $(pwd); sleep 1; exit 7")
	c.waitScreen("ran-7 in /tmp")
	if code := c.exit(); code != 7 {
		t.Fatalf("attach -- CMD exited %d, want the command's 7", code)
	}

	// list -q: the IDs alone, for scripts.
	if r := gondolin(t, home, "", "list", "-q"); r.code != 0 || r.stdout != listSessions(t, home)["shared"].ID+"\n" {
		t.Fatalf("list -q: %+v", r)
	}
}

// TestSessionExecAndStale runs execs in a session, then kills its QEMU.
func TestSessionExecAndStale(t *testing.T) {
	home := testenv.Home(t)
	t.Cleanup(func() { stopSupervisor(t, home) })
	r := gondolin(t, home, "", "bash", "--detach", "--name", "ex", "--keep", "--", "sh", "-c", "true")
	if r.code != 0 {
		t.Fatalf("bash --detach: %+v", r)
	}
	id := strings.TrimSpace(r.stdout)

	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := gondolin(t, home, "in-"+strconv.Itoa(i)+"\n", "exec", "--session", id[:6], "--", "sh", "-c",
				fmt.Sprintf("read x; echo $x-out; echo %d-err >&2; exit %d", i, i))
			if r.stdout != fmt.Sprintf("in-%d-out\n", i) || r.stderr != fmt.Sprintf("%d-err\n", i) || r.code != i {
				errs <- fmt.Sprintf("exec %d: %+v", i, r)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if r := gondolin(t, home, "", "exec", "--session", "ex", "--", "no-such-cmd"); r.code != 127 {
		t.Errorf("missing command in session: %+v", r)
	}
	if r := gondolin(t, home, "", "exec", "--session", "nosuch", "--", "true"); r.code != 125 || !strings.Contains(r.stderr, "no session") {
		t.Errorf("unknown session: %+v", r)
	}
	// The session's shape is its own: a bad default for new VMs does not
	// stop an exec in it, and --env is still checked.
	if r := gondolinEnv(t, home, []string{layout.EnvCPUs + "=two"}, "", "exec", "--session", "ex", "--", "true"); r.code != 0 {
		t.Errorf("exec --session with GONDOLIN_CPUS=two: %+v", r)
	}
	if r := gondolin(t, home, "", "exec", "--session", "ex", "--env", "1BAD=x", "--", "true"); r.code != 2 || !strings.Contains(r.stderr, "--env") {
		t.Errorf("exec --session --env 1BAD=x: %+v", r)
	}
	checkListings(t, home, "ex", id)
	gondolin(t, home, "", "exec", "--session", "ex", "--", "sh", "-c", "echo console-line-$((6*7)) > /dev/console")
	if r := gondolin(t, home, "", "logs", "ex"); r.code != 0 || !strings.Contains(r.stdout, "console-line-42") {
		t.Errorf("logs: %+v", r)
	}
	if r := gondolin(t, home, "", "rm", "ex"); r.code == 0 || !strings.Contains(r.stderr, "live") {
		t.Errorf("rm of a live session: %+v", r)
	}

	s := listSessions(t, home)["ex"]
	syscall.Kill(s.PID, syscall.SIGKILL)
	if !testutil.Poll(2*time.Second, func() bool { return listSessions(t, home)["ex"].State == sessions.Stale }) {
		t.Fatalf("not stale 2 s after QEMU died: %+v", listSessions(t, home)["ex"])
	}
	if reason := listSessions(t, home)["ex"].Reason; !strings.Contains(reason, "exited") {
		t.Fatalf("stale reason %q", reason)
	}
	if r := gondolin(t, home, "", "rm", "ex"); r.code != 0 {
		t.Fatalf("rm stale: %+v", r)
	}
}

// TestSupervisorRestartAndGhosts checks the supervisor's socket, that
// stopping it leaves VMs running, and that sessions of an earlier host
// boot show as stale rather than as ghosts.
func TestSupervisorRestartAndGhosts(t *testing.T) {
	home := testenv.Home(t)
	t.Cleanup(func() { stopSupervisor(t, home) })
	r := gondolin(t, home, "", "bash", "--detach", "--name", "keeper")
	if r.code != 0 {
		t.Fatalf("bash: %+v", r)
	}
	for path, want := range map[string]os.FileMode{home.SupervisorSocket(): 0o600, string(home): 0o700, home.Sessions(): 0o700} {
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v (%v)", path, st.Mode().Perm(), want, err)
		}
	}
	pid := listSessions(t, home)["keeper"].PID
	if r := gondolin(t, home, "", "supervisor", "status"); r.code != 0 || !strings.Contains(r.stdout, "1 sessions (1 live)") {
		t.Fatalf("supervisor status: %+v", r)
	}
	// logs -f follows the console until interrupted.
	follow := exec.Command(gondolinBin, "logs", "-f", "keeper")
	follow.Env = append(os.Environ(), layout.EnvHome+"="+string(home))
	var followed syncbuf.Buffer
	follow.Stdout = &followed
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	mustRun(t, home, "exec", "--session", "keeper", "--", "sh", "-c", "echo followed-line > /dev/console")
	testutil.WaitFor(t, 10*time.Second, "the followed line", func() bool { return strings.Contains(followed.String(), "followed-line") })
	follow.Process.Signal(syscall.SIGINT)
	if err := follow.Wait(); err != nil {
		t.Fatalf("logs -f after Ctrl-C: %v", err)
	}
	if r := gondolin(t, home, "", "supervisor", "stop"); r.code != 0 {
		t.Fatalf("supervisor stop: %+v", r)
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("supervisor stop killed the VM: %v", err)
	}
	if s := listSessions(t, home)["keeper"]; s.State != sessions.Live || s.PID != pid {
		t.Fatalf("not adopted: %+v", s)
	}
	// Pretend the session was made before a host reboot: its VM is gone,
	// it was never stopped, and it was recorded under another boot ID.
	dir := home.Session(listSessions(t, home)["keeper"].ID)
	gondolin(t, home, "", "supervisor", "stop", "--all")
	specPath := filepath.Join(dir, layout.SpecFile)
	b, _ := os.ReadFile(specPath)
	var rec map[string]any
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	rec["host_boot_id"] = "00000000-0000-0000-0000-000000000000"
	b, _ = json.Marshal(rec)
	os.WriteFile(specPath, b, 0o600)
	os.WriteFile(filepath.Join(dir, layout.StateFile), []byte(`{}`), 0o600)
	s := listSessions(t, home)["keeper"]
	if s.State != sessions.Stale || !strings.Contains(s.Reason, "rebooted") {
		t.Fatalf("ghost: %+v", s)
	}
}

// TestExecInteractive: on a terminal, stdin reaches the command only with
// -i (or -t).
func TestExecInteractive(t *testing.T) {
	home := testenv.Home(t)
	with := startTerm(t, home, "exec", "-i", "--", "sh", "-c", "echo ready; read x; echo got-$x")
	with.waitScreen("ready")
	with.send("typed\r")
	with.waitScreen("got-typed")
	if code := with.exit(); code != 0 {
		t.Fatalf("exec -i exited %d", code)
	}
	without := startTerm(t, home, "exec", "--", "sh", "-c", "read x; echo rc=$?")
	without.waitScreen("rc=1") // stdin is /dev/null: read hits EOF at once
	without.exit()
}
