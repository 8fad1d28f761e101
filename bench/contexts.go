package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/contexts"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testenv"
	"github.com/gondolin/gondolin/internal/testsshd"
	"github.com/gondolin/gondolin/sessions"
)

func init() {
	sections = append(sections, section{"contexts: another machine over ssh", benchContexts})
}

const (
	ctxEchoLabel = "keystroke echo via context, loopback ssh (target p99 <= local + 3ms)"
	ctxListLabel = "list via context, shared ssh (target <= local + 1 ssh round trip)"
	// listRuns is the brief's "about 20": a CLI start is a few ms, so
	// more runs than -runs cost nothing and steady the p90.
	listRuns = 20
)

// benchContexts measures issue 17's two targets against a real sshd on
// loopback whose logins run gondolin with a home of their own (the "far
// machine", here the same one): keystroke echo through a context against
// the local supervisor's, and `gondolin --context far list` against the
// local list plus one ssh round trip over the shared connection.
func benchContexts(e *env) []row {
	dir, err := os.MkdirTemp("", "gdctx") // short: it holds unix sockets
	check("temp dir", err)
	atExit(func() { os.RemoveAll(dir) }) // on every way out; stop removes it sooner
	sshdDir, farHome, tmp := filepath.Join(dir, "sshd"), layout.Home(filepath.Join(dir, "far")), filepath.Join(dir, "tmp")
	for _, d := range []string{sshdDir, string(farHome), tmp} {
		check("temp dir", os.Mkdir(d, 0o700))
	}
	srv, err := testsshd.Start(sshdDir)
	if errors.Is(err, exec.ErrNotFound) {
		why := "skipped: " + err.Error()
		return []row{{ctxEchoLabel, why, "-", "-"}, {ctxListLabel, why, "-", "-"}}
	}
	check("start sshd", err)
	far := &env{home: farHome, bin: e.bin}
	const ctxName = "bench-far"
	restoreEnv := func() {}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			stopSSHMasters(dir)
			far.shutdown()
			srv.Stop()
			contexts.Open(e.home).Remove(ctxName)
			restoreEnv()
			os.RemoveAll(dir)
		})
	}
	atExit(stop) // fatal skips defers
	defer stop()
	check("link images", testenv.LinkImages(e.home, farHome))
	wrapper := filepath.Join(dir, "far-gondolin")
	// sshd passes none of our environment: the far side's is here.
	check("far wrapper", os.WriteFile(wrapper, []byte(fmt.Sprintf("#!/bin/sh\nexport %s=%s %s=0\nexec %s \"$@\"\n",
		layout.EnvHome, farHome, layout.EnvPool, e.bin)), 0o755))
	u, err := user.Current()
	check("current user", err)
	ctxt := contexts.Context{Name: ctxName, Host: srv.URL(u.Username), Gondolin: wrapper}
	check("context create", contexts.Open(e.home).Create(ctxt))

	// The in-process dialer and the CLI read these from the environment.
	// TMPDIR puts the ssh control sockets (contexts' ControlPath) in dir,
	// where no earlier run's master is, and where stop finds ours. No
	// warm pool on either side: both figures are the transport, without
	// VMs booting in the background.
	restoreEnv = setenvs(map[string]string{
		contexts.EnvSSHCommand: srv.SSHCommand("client"),
		"TMPDIR":               tmp,
		layout.EnvPool:         "0",
	})

	// Keystroke echo, here then there: a sessions client of this home's
	// supervisor, then one over contexts' dialer (ssh, dial-stdio), each
	// attached to a shell of its own.
	ctx, local, stopLocal := startSupervisor(e, 10*time.Minute)
	defer stopLocal()
	localEcho := attachEcho(ctx, local)
	remote := sessions.NewDialClient(func(ctx context.Context) (net.Conn, error) { return ctxt.Dial(ctx, false) })
	remoteEcho := attachEcho(ctx, remote)

	// list: the real CLI, as a user runs it, each after a warm-up (the
	// first through the context makes the control master when the
	// attach above did not).
	cli := func(args ...string) func() error {
		return func() error {
			cmd := exec.Command(e.bin, args...)
			cmd.Env = e.environ()
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("gondolin %v: %v: %s", args, err, out)
			}
			return nil
		}
	}
	localList := warmTimeN(listRuns, cli("list"))
	remoteList := warmTimeN(listRuns, cli("--context", ctxt.Name, "list"))
	// One round trip over the same shared connection: the options
	// contexts' dialer gives, then `true` as the far command, through
	// sh as GONDOLIN_SSH_COMMAND is run. Like dial-stdio, it runs in the
	// far user's login shell, so that shell's start-up is in both.
	ssh := func(args ...string) func() error {
		return func() error {
			cmd := exec.Command("sh", append([]string{"-c", srv.SSHCommand("client") + ` "$@"`, "ssh"}, sshArgs(srv, u.Username, tmp, args...)...)...)
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("ssh %v: %v: %s", args, err, out)
			}
			return nil
		}
	}
	// The figure is meant over the master: without one it would be a
	// login, and the comparison void.
	check("ssh control master", ssh("-O", "check", "127.0.0.1")())
	rtt := warmTimeN(listRuns, ssh("--", "127.0.0.1", "true"))

	lp99, rp99 := localEcho.pct(0.99), remoteEcho.pct(0.99)
	limit50 := localList.pct(0.5) + rtt.pct(0.5)
	limit90 := localList.pct(0.9) + rtt.pct(0.9)
	return []row{
		{ctxEchoLabel, remoteEcho.p50p99(), "local " + localEcho.p50p99(),
			fmt.Sprintf("%s, p99 %+.2fms", ratio(rp99, lp99), float64(rp99-lp99)/float64(time.Millisecond))},
		{ctxListLabel, remoteList.String(), fmt.Sprintf("p50 %s  p90 %s", ms(limit50), ms(limit90)), ratio(remoteList.pct(0.5), limit50)},
		{"  local list", localList.String(), "-", "-"},
		{"  ssh host true, shared connection", rtt.String(), "-", "-"},
	}
}

// attachEcho creates a shell through client, attaches to it and times
// keystroke echo as benchSessions does.
func attachEcho(ctx context.Context, client *sessions.Client) durations {
	s, err := client.Create(ctx, sessions.CreateRequest{Command: []string{"sh", "-c", "PS1='ready> ' exec sh -i"}})
	check("create", err)
	att, err := client.Attach(ctx, s.ID, 0, 24, 80)
	check("attach", err)
	defer att.Close()
	out := &signalBuffer{ch: make(chan struct{}, 1)}
	go att.Output(out)
	waitFor(out, "ready>")
	return echoRTT(200, func(b byte) { att.Input([]byte{b}) }, out)
}

// warmTimeN times n runs of f after two untimed ones.
func warmTimeN(n int, f func() error) durations {
	for range 2 {
		check("warm-up", f())
	}
	d, err := timeN(n, f)
	check("timed run", err)
	return d
}

// sshArgs is what contexts' dialer gives ssh before the host (its
// connection sharing included), then args.
func sshArgs(srv *testsshd.Server, user, tmp string, args ...string) []string {
	return append([]string{"-T", "-o", "ControlMaster=auto", "-o", "ControlPersist=60",
		"-o", "ControlPath=" + filepath.Join(tmp, "gondolin-ssh-"+strconv.Itoa(os.Getuid()), "%C"),
		"-p", strconv.Itoa(srv.Port), "-l", user}, args...)
}

// setenvs sets the variables and returns what puts them back.
func setenvs(vars map[string]string) (restore func()) {
	old := map[string]*string{}
	for k, v := range vars {
		if o, ok := os.LookupEnv(k); ok {
			old[k] = &o
		} else {
			old[k] = nil
		}
		os.Setenv(k, v)
	}
	return func() {
		for k, o := range old {
			if o == nil {
				os.Unsetenv(k)
			} else {
				os.Setenv(k, *o)
			}
		}
	}
}

// stopSSHMasters ends the ssh control masters whose sockets are in dir
// (ControlPersist detached them from whoever started them): every
// process whose command line names a path in dir that is an ssh.
func stopSSHMasters(dir string) {
	for _, p := range homeProcesses(layout.Home(dir)) {
		if exe, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(p.pid), "exe")); filepath.Base(exe) == "ssh" {
			syscall.Kill(p.pid, syscall.SIGTERM)
		}
	}
}
