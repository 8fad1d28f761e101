package main

// TestDashboard drives the real dashboard in a real terminal (tmux), the
// way a user does: create a session with the form (and see it being
// made), attach, type, detach, quit, come back, stop it.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/contexts"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testenv"
	"github.com/gondolin/gondolin/internal/testreq"
	"github.com/gondolin/gondolin/internal/testutil"
	"github.com/gondolin/gondolin/sessions"
)

// tmuxServer is a private tmux server (its own socket), killed when the
// test ends.
type tmuxServer struct {
	t      *testing.T
	socket string
}

func newTmux(t *testing.T) *tmuxServer {
	t.Helper()
	testreq.Tool(t, "tmux")
	s := &tmuxServer{t: t, socket: fmt.Sprintf("gd-dash-%d-%d", os.Getpid(), time.Now().UnixNano())}
	t.Cleanup(func() { exec.Command("tmux", "-L", s.socket, "kill-server").Run() })
	return s
}

func (s *tmuxServer) run(args ...string) string {
	s.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-L", s.socket}, args...)...).CombinedOutput()
	if err != nil {
		s.t.Fatalf("tmux %v: %v: %s", args, err, out)
	}
	return string(out)
}

// open starts the dashboard in a new 120x40 tmux session named name. The
// pane stays after gondolin exits and shows its exit status.
func (s *tmuxServer) open(name string, home layout.Home) {
	s.t.Helper()
	s.openEnv(name, home, nil)
}

// openEnv is open with more environment variables (NAME=VALUE).
func (s *tmuxServer) openEnv(name string, home layout.Home, env []string) {
	s.t.Helper()
	vars := layout.EnvHome + "=" + shellQuote(string(home))
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		vars += " " + k + "=" + shellQuote(v)
	}
	cmd := fmt.Sprintf("%s %s; echo dashboard-exited-$?; sleep 600", vars, gondolinBin)
	s.run("new-session", "-d", "-s", name, "-x", "120", "-y", "40", cmd)
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func (s *tmuxServer) screen(name string) string {
	s.t.Helper()
	return s.run("capture-pane", "-p", "-t", name)
}

func (s *tmuxServer) keys(name string, keys ...string) {
	s.t.Helper()
	s.run(append([]string{"send-keys", "-t", name}, keys...)...)
}

// waitScreen polls the pane until cond holds.
func (s *tmuxServer) waitScreen(name, what string, d time.Duration, cond func(string) bool) string {
	s.t.Helper()
	var scr string
	if !testutil.Poll(d, func() bool { scr = s.screen(name); return cond(scr) }) {
		s.t.Fatalf("the screen never showed %s; it shows:\n%s", what, scr)
	}
	return scr
}

func (s *tmuxServer) waitText(name, text string, d time.Duration) string {
	s.t.Helper()
	return s.waitScreen(name, fmt.Sprintf("%q", text), d, func(scr string) bool { return strings.Contains(scr, text) })
}

var (
	helloLine = regexp.MustCompile(`(?m)^hello\s*$`)
	// The first session of a home builds the template: for seconds.
	creatingRow = regexp.MustCompile(`(?m)^> dash\s+[0-9a-f]+\s+creating: ` + sessions.PhaseTemplate)
	liveRow     = regexp.MustCompile(`(?m)^> dash\s+[0-9a-f]+\s+live\b`)
	stopRow     = regexp.MustCompile(`(?m)^> dash\s+[0-9a-f]+\s+stopped\b`)
)

func TestDashboard(t *testing.T) {
	// A home with templates of its own, so that the first create builds
	// one whatever ran before: the new session is then being made for
	// seconds, not a blink, and the screen is sure to be caught showing
	// it.
	home := testenv.PrivateHome(t)
	tm := newTmux(t)
	t.Cleanup(func() { stopSupervisor(t, home) })

	// First visit: nothing yet; create a session with the form.
	tm.open("one", home)
	tm.waitText("one", "No sessions yet", 60*time.Second)
	tm.waitText("one", "events: live", 10*time.Second)
	tm.keys("one", "n")
	tm.waitText("one", "New session", 10*time.Second)
	tm.keys("one", "Tab", "dash")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := sessions.NewClient(home).Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tm.keys("one", "Enter")
	// At once the new session is listed as being made, with what the
	// supervisor does, here and to everyone: gondolin list shows it, and
	// stop refuses it with a clear line.
	tm.waitScreen("one", "the new session creating", 60*time.Second, creatingRow.MatchString)
	if s := listSessions(t, home)["dash"]; s.State != sessions.Creating || s.Phase == "" {
		t.Errorf("gondolin list while the dashboard shows it creating: %s %q", s.State, s.Phase)
	}
	if r := gondolin(t, home, "", "stop", "dash"); r.code == 0 || !strings.Contains(r.stderr, "is being created") {
		t.Errorf("stop of a session being made: %+v", r)
	}
	tm.waitScreen("one", "the new session live", 120*time.Second, liveRow.MatchString)
	// Followers heard it being made, step by step, before it was made.
	var steps []string
	for e := range events {
		if e.Type == sessions.EventCreating {
			steps = append(steps, e.Phase)
		}
		if e.Type == sessions.EventCreated {
			break
		}
	}
	t.Logf("steps of the create: %q", steps)
	if len(steps) < 3 || steps[0] != sessions.PhaseStarting || !slices.Contains(steps, sessions.PhaseTemplate) {
		t.Errorf("steps announced before session.created: %q", steps)
	}
	cancel()
	// Its shell's prompt reaches the preview through pty.output events.
	tm.waitText("one", "root@dash", 60*time.Second)

	// Enter attaches full-screen: the dashboard gives way to the shell.
	tm.keys("one", "Enter")
	tm.waitScreen("one", "the attached shell", 20*time.Second, func(s string) bool {
		return strings.Contains(s, "root@dash") && !strings.Contains(s, "events: live")
	})
	tm.keys("one", "echo hello", "Enter")
	tm.waitScreen("one", "hello", 20*time.Second, helloLine.MatchString)

	// Ctrl-] comes back to the dashboard, preview current.
	tm.keys("one", "C-]")
	scr := tm.waitText("one", "events: live", 20*time.Second)
	if !strings.Contains(scr, "detached") {
		t.Errorf("no word of the detach:\n%s", scr)
	}
	tm.waitScreen("one", "hello in the preview", 20*time.Second, helloLine.MatchString)

	// q quits; the VM keeps running.
	tm.keys("one", "q")
	tm.waitText("one", "dashboard-exited-0", 20*time.Second)
	if s := listSessions(t, home)["dash"]; s.State != sessions.Live || s.RunningPTYs() != 1 {
		t.Fatalf("after quitting the dashboard: %+v", s)
	}

	// Second visit: the session is there, live, hello in its preview.
	tm.open("two", home)
	tm.waitScreen("two", "the session live", 60*time.Second, liveRow.MatchString)
	tm.waitScreen("two", "hello in the preview", 20*time.Second, helloLine.MatchString)

	// x asks first, then stops it.
	tm.keys("two", "x")
	tm.waitText("two", "Stop dash?", 10*time.Second)
	tm.keys("two", "y")
	tm.waitScreen("two", "the session stopped", 60*time.Second, stopRow.MatchString)
	if s := listSessions(t, home)["dash"]; s.State != sessions.Stopped {
		t.Fatalf("after x: %+v", s)
	}
	tm.keys("two", "q")
	tm.waitText("two", "dashboard-exited-0", 20*time.Second)
}

var (
	localRow = regexp.MustCompile(`(?m)^. localsess\s+default\s+[0-9a-f]+\s+live\b`)
	farRow   = regexp.MustCompile(`(?m)^. farsess\s+far\s+[0-9a-f]+\s+live\b`)
)

// TestDashboardContexts: with a context on another machine (a real sshd
// on loopback), the dashboard shows this machine's session and the far
// one's together, each with its HOST, and Enter attaches to the far one
// through ssh.
func TestDashboardContexts(t *testing.T) {
	far := startFarHost(t)
	home := testenv.Home(t)
	t.Cleanup(func() { stopSupervisor(t, home) })
	env := []string{contexts.EnvSSHCommand + "=" + far.sshCmd, layout.EnvPool + "=0"}
	must := func(args ...string) string {
		t.Helper()
		r := runGondolin(t, 5*time.Minute, home, env, "", args...)
		if r.code != 0 {
			t.Fatalf("gondolin %v: %+v", args, r)
		}
		return r.stdout
	}
	must("context", "create", "far", "--host", far.url(), "--gondolin", far.wrapper)
	must("--context", "far", "bash", "--detach", "--keep", "--name", "farsess", "--", "sh")
	must("bash", "--detach", "--keep", "--name", "localsess", "--", "sleep", "1000")
	t.Logf("both sessions made")

	tm := newTmux(t)
	tm.openEnv("ctx", home, env)
	scr := tm.waitScreen("ctx", "both sessions, with their hosts", 90*time.Second, func(s string) bool {
		return localRow.MatchString(s) && farRow.MatchString(s)
	})
	if !strings.Contains(scr, "HOST") {
		t.Errorf("no HOST column:\n%s", scr)
	}
	tm.waitText("ctx", "events: live", 30*time.Second)
	t.Logf("both listed")

	// Select the far session and attach to it: keys typed here run in
	// the far VM.
	tm.keys("ctx", "/", "farsess", "Enter")
	tm.waitScreen("ctx", "farsess selected", 10*time.Second, regexp.MustCompile(`(?m)^> farsess\s+far\b`).MatchString)
	tm.keys("ctx", "Enter")
	tm.waitScreen("ctx", "the attached far shell", 30*time.Second, func(s string) bool { return !strings.Contains(s, "events: live") })
	tm.keys("ctx", "echo far-$((6*7))", "Enter")
	tm.waitScreen("ctx", "far-42", 30*time.Second, regexp.MustCompile(`(?m)^far-42\s*$`).MatchString)
	tm.keys("ctx", "C-]")
	if scr := tm.waitText("ctx", "events: live", 30*time.Second); !strings.Contains(scr, "detached") {
		t.Errorf("no word of the detach:\n%s", scr)
	}
	tm.keys("ctx", "Escape")
	tm.waitScreen("ctx", "the filter cleared", 10*time.Second, localRow.MatchString)

	// The far machine goes away (no sshd, no supervisor): its session
	// stays listed, marked unreachable, and this machine's is untouched.
	t.Logf("attached and detached")
	far.srv.Stop()
	stopSupervisor(t, far.home)
	t.Logf("far host gone")
	scr = tm.waitScreen("ctx", "the far session unreachable", 60*time.Second,
		regexp.MustCompile(`(?m)^. farsess\s+far\s+[0-9a-f]+\s+unreachable: `).MatchString)
	t.Logf("with the far host gone:\n%s", scr)
	if !localRow.MatchString(scr) || !strings.Contains(scr, "1 of 2 hosts unreachable") {
		t.Errorf("with the far host gone:\n%s", scr)
	}
	tm.keys("ctx", "q")
	tm.waitText("ctx", "dashboard-exited-0", 20*time.Second)
}
