package main

import (
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/syncbuf"
	"github.com/gondolin/gondolin/internal/testutil"
)

// TestContextCarriesSecretsSnapshotsIngress: a secret's value goes from
// this shell's environment over the SSH channel into the far supervisor's
// memory only (neither the guest nor the far disk holds it), and
// snapshots, ingress routes and network events work through a context.
func TestContextCarriesSecretsSnapshotsIngress(t *testing.T) {
	far, _, must := farContext(t)
	const secret = "s3cret-value-0f-this-shell-7d2a"
	t.Setenv("FAR_TOKEN", secret)
	id := strings.TrimSpace(must("--context", "far", "bash", "--detach", "--keep", "--name", "sec",
		"--allow-host", "example.com", "--host-secret", "FAR_TOKEN@example.com", "--", "sleep", "1000"))

	if got := must("--context", "far", "exec", "--session", "sec", "--", "sh", "-c", "echo $FAR_TOKEN"); strings.Contains(got, secret) || strings.TrimSpace(got) == "" {
		t.Errorf("the guest sees %q: want a placeholder", got)
	}
	if show := must("--context", "far", "policy", "show", "sec"); !strings.Contains(show, "FAR_TOKEN") || strings.Contains(show, secret) {
		t.Errorf("policy show: %s", show)
	}
	// Nowhere on the far machine's disk (its home) is the value.
	filepath.WalkDir(string(far.home), func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if info, err := d.Info(); err != nil || info.Size() > 64<<20 {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), secret) {
			t.Errorf("%s holds the secret's value", p)
		}
		return nil
	})

	t.Run("snapshot", func(t *testing.T) {
		snap := strings.TrimSpace(must("--context", "far", "snapshot", "sec", "--name", "farsnap"))
		if ls := must("--context", "far", "snapshot", "ls", "-q"); !strings.Contains(ls, snap) {
			t.Errorf("snapshot ls through the context: %q, want %s", ls, snap)
		}
		if ls := must("snapshot", "ls", "-q"); strings.Contains(ls, snap) {
			t.Errorf("this machine lists the far snapshot")
		}
		must("--context", "far", "snapshot", "rm", "farsnap")
	})
	t.Run("ingress", func(t *testing.T) {
		must("--context", "far", "ingress", "sec", "add", "127.0.0.1:0=8080")
		var routes []map[string]any
		out := must("--context", "far", "ingress", "sec", "ls", "--json")
		if err := json.Unmarshal([]byte(out), &routes); err != nil || len(routes) != 1 {
			t.Fatalf("ingress ls --json: %v %q", err, out)
		}
	})
	t.Run("events", func(t *testing.T) {
		must("--context", "far", "exec", "--session", "sec", "--", "sh", "-c", "curl -s -m 5 http://blocked.invalid/ >/dev/null; true")
		var out string
		if !testutil.Poll(30*time.Second, func() bool {
			out = must("--context", "far", "events", "sec", "--json")
			return strings.Contains(out, "blocked.invalid")
		}) {
			t.Errorf("events through the context: %q", out)
		}
	})
	must("--context", "far", "rm", "-f", id)
}

// TestContextTerminals: a terminal through a context detaches and comes
// back repainted, -t gives the command a terminal, and Tab completes the
// far sessions.
func TestContextTerminals(t *testing.T) {
	_, home, _ := farContext(t)
	if r := gondolin(t, home, "", "--context", "far", "bash", "--detach", "--keep", "--name", "term", "--", "sh"); r.code != 0 {
		t.Fatalf("bash --detach: %+v", r)
	}
	tm := startTerm(t, home, "--context", "far", "attach", "term")
	tm.send("echo before-$((6*7))\r")
	tm.waitScreen("before-42")
	tm.send("\x1d") // Ctrl-]: detach
	if code := tm.exit(); code != 0 {
		t.Errorf("detach exit code %d", code)
	}
	again := startTerm(t, home, "--context", "far", "attach", "term")
	again.waitScreen("before-42") // the screen as it was, repainted
	// A resize of this terminal reaches the far one.
	pty.Setsize(again.ptmx, &pty.Winsize{Rows: 40, Cols: 120})
	// The resize and the typed command travel apart (SIGWINCH, then the
	// keys): ask again, but only once the last answer is on screen.
	asked := 0
	testutil.WaitFor(t, 30*time.Second, "the far terminal to be 40x120", func() bool {
		scr := again.screen()
		if strings.Contains(scr, "40 120") {
			return true
		}
		if strings.Count(scr, "size-answered") >= asked {
			again.send("stty size; echo size-answer''ed\r")
			asked++
		}
		return false
	})
	again.send("exit\r")
	again.exit()

	if r := gondolin(t, home, "", "--context", "far", "exec", "-t", "--", "stty", "size"); r.code != 0 || r.stdout != "24 80\r\n" {
		t.Errorf("exec -t through the context: %+v", r)
	}
	if r := gondolin(t, home, "", "--context", "far", "bash", "--detach", "--keep", "--name", "other", "--", "sleep", "1000"); r.code != 0 {
		t.Fatalf("bash --detach: %+v", r)
	}
	if r := gondolin(t, home, "", "__complete", "--context", "far", "attach", "oth"); !strings.Contains(r.stdout, "other") {
		t.Errorf("completion through the context: %+v", r)
	}
}

// TestContextSignalsAndFollow: Ctrl-C reaches the command through the
// context (ssh runs in a process group of its own, so the signal is
// gondolin's to forward), and logs -f follows the far console.
func TestContextSignalsAndFollow(t *testing.T) {
	far, home, must := farContext(t)
	must("--context", "far", "bash", "--detach", "--keep", "--name", "sig", "--", "sleep", "1000")

	cmd := exec.Command(gondolinBin, "--context", "far", "exec", "--session", "sig", "--", "sh", "-c", `trap 'echo got INT; exit 3' INT; echo ready; sleep 60 & wait`)
	cmd.Env = append(os.Environ(), layout.EnvHome+"="+string(home))
	out := &syncbuf.Buffer{}
	cmd.Stdout = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, time.Minute, "the command ready", func() bool { return strings.Contains(out.String(), "ready") })
	cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || !strings.Contains(out.String(), "got INT") {
		t.Errorf("err %v, output %q; want exit 3 after 'got INT'", err, out.String())
	}

	follow := exec.Command(gondolinBin, "--context", "far", "logs", "-f", "sig")
	follow.Env = cmd.Env
	logs, logsErr := &syncbuf.Buffer{}, &syncbuf.Buffer{}
	follow.Stdout, follow.Stderr = logs, logsErr
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { follow.Process.Kill() })
	must("--context", "far", "exec", "--session", "sig", "--", "sh", "-c", "echo followed-$((6*7)) > /dev/console")
	testutil.WaitFor(t, 30*time.Second, "logs -f to show the new line", func() bool { return strings.Contains(logs.String(), "followed-42") })

	// events -f whose link drops says so and fails: a script following
	// it must not take that for the session's end.
	events := exec.Command(gondolinBin, "--context", "far", "events", "-f", "sig")
	events.Env = cmd.Env
	evOut, evErr := &syncbuf.Buffer{}, &syncbuf.Buffer{}
	events.Stdout, events.Stderr = evOut, evErr
	if err := events.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { events.Process.Kill() })
	must("--context", "far", "exec", "--session", "sig", "--", "sh", "-c", "curl -s -m 5 http://blocked.invalid/ >/dev/null; true")
	testutil.WaitFor(t, 30*time.Second, "events -f to show the blocked lookup", func() bool { return strings.Contains(evOut.String(), "blocked.invalid") })
	if code := cutLink(t, events); code != 125 || !strings.Contains(evErr.String(), "broke off") {
		t.Errorf("events -f after its link dropped: exit %d, stderr %q; want 125 saying it broke off", code, evErr.String())
	}

	// So does logs -f, and a cut link leaves no dial-stdio on the far
	// side.
	if code := cutLink(t, follow); code != 125 || !strings.Contains(logsErr.String(), "broke off") {
		t.Errorf("logs -f after its link dropped: exit %d, stderr %q; want 125 saying it broke off", code, logsErr.String())
	}
	testutil.WaitFor(t, 30*time.Second, "the far dial-stdios to end", func() bool { return len(dialStdios(far.home)) == 0 })

	// A client killed outright leaves none either: its ssh ends the far
	// input, on which the supervisor ends the stream (and dial-stdio,
	// should one not end, stops waiting after contexts.CloseGrace).
	again := exec.Command(gondolinBin, "--context", "far", "logs", "-f", "sig")
	again.Env = cmd.Env
	if err := again.Start(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 30*time.Second, "a dial-stdio for logs -f", func() bool { return len(dialStdios(far.home)) == 1 })
	again.Process.Kill()
	again.Wait()
	testutil.WaitFor(t, 30*time.Second, "the far dial-stdio to end", func() bool { return len(dialStdios(far.home)) == 0 })
}

// cutLink kills the ssh under a running gondolin (farContext's ssh has
// no shared connection: one process per link) and returns gondolin's
// exit code, within a bound.
func cutLink(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	links := testutil.Children(cmd.Process.Pid)
	if len(links) == 0 {
		t.Fatalf("%v has no ssh to cut", cmd.Args)
	}
	for _, pid := range links {
		syscall.Kill(-pid, syscall.SIGKILL) // ssh and its process group
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(time.Minute):
		t.Fatalf("%v went on after its link was cut", cmd.Args)
		return 0
	}
}

// dialStdios are the dial-stdio processes serving home.
func dialStdios(home layout.Home) []int {
	return testutil.Procs(func(cmdline, environ []byte, _ string) bool {
		return strings.Contains(string(cmdline), "dial-stdio") && strings.Contains(string(environ), layout.EnvHome+"="+string(home)+"\x00")
	})
}
