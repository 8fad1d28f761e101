package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gondolin/gondolin/contexts"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testenv"
	"github.com/gondolin/gondolin/internal/testreq"
	"github.com/gondolin/gondolin/internal/testsshd"
	"github.com/gondolin/gondolin/internal/testutil"
)

// farHost is a real sshd on a loopback port with throwaway keys, whose
// logins run gondolin with a home of their own: another machine, as far
// as gondolin can tell.
type farHost struct {
	srv     *testsshd.Server
	home    layout.Home // the far side's GONDOLIN_HOME
	wrapper string      // --gondolin: gondolin with that home
	sshCmd  string      // GONDOLIN_SSH_COMMAND with the client's key
	dir     string
}

func startFarHost(t *testing.T) *farHost {
	t.Helper()
	return startFarHostConfig(t, "")
}

// startFarHostConfig is startFarHost with extra sshd_config lines.
func startFarHostConfig(t *testing.T, sshdConfig string) *farHost {
	t.Helper()
	if os.Getuid() != 0 {
		// sshd needs root for its privilege separation, and the test
		// logs in as root.
		testreq.Skipf(t, "the contexts' tests run sshd: they need root")
	}
	for _, tool := range []string{"sshd", "ssh-keygen", "ssh"} {
		testreq.Tool(t, tool) // skips, or fails where the suite must run whole
	}
	dir := t.TempDir()
	srv, err := testsshd.StartConfig(dir, sshdConfig, "client", "stranger")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Stop()
		if t.Failed() {
			t.Logf("sshd log:\n%s", srv.Log())
		}
	})
	far := &farHost{srv: srv, home: testenv.Home(t), dir: dir}
	far.wrapper = filepath.Join(dir, "far-gondolin")
	os.WriteFile(far.wrapper, []byte(fmt.Sprintf("#!/bin/sh\nexport %s=%s %s=0\nexec %s \"$@\"\n",
		layout.EnvHome, far.home, layout.EnvPool, gondolinBin)), 0o755)
	far.sshCmd = far.ssh("client")
	t.Cleanup(func() { stopSupervisor(t, far.home) })
	return far
}

// farContext starts a far host and makes a home on this machine with a
// context "far" to it; must runs gondolin there and fails the test
// unless it exits 0, returning its stdout.
func farContext(t *testing.T) (far *farHost, home layout.Home, must func(args ...string) string) {
	t.Helper()
	far = startFarHost(t)
	t.Setenv(contexts.EnvSSHCommand, far.sshCmd)
	home = layout.Home(t.TempDir()) // this machine: contexts, and maybe an empty supervisor
	t.Cleanup(func() { stopSupervisor(t, home) })
	must = func(args ...string) string {
		t.Helper()
		r := gondolinWithin(t, 3*time.Minute, home, "", args...)
		if r.code != 0 {
			t.Fatalf("gondolin %v: %+v", args, r)
		}
		return r.stdout
	}
	must("context", "create", "far", "--host", far.url(), "--gondolin", far.wrapper)
	return far, home, must
}

// ssh is the GONDOLIN_SSH_COMMAND that logs in with key, each command on
// a connection of its own.
func (f *farHost) ssh(key string) string {
	return f.srv.SSHCommand(key) + " -o ControlMaster=no"
}

func (f *farHost) url() string { return f.srv.URL("root") }

// TestContexts drives sessions on another "machine" through a context:
// a real sshd, the user's ssh, and dial-stdio on the far side.
func TestContexts(t *testing.T) {
	_, home, must := farContext(t)
	if ls := must("context", "ls"); !strings.Contains(ls, "far") || !strings.Contains(ls, "default *") {
		t.Errorf("context ls:\n%s", ls)
	}
	if st, err := os.Stat(filepath.Join(string(home), "contexts.json")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("contexts.json: %v %v, want mode 0600", st, err)
	}

	id := strings.TrimSpace(must("--context", "far", "bash", "--detach", "--keep", "--name", "r1", "--", "sh", "-c", "sleep 1000"))
	t.Run("list, inspect and exec", func(t *testing.T) {
		if got := must("--context", "far", "list", "-q"); got != id+"\n" {
			t.Errorf("list -q through the context: %q, want %q", got, id)
		}
		if got := must("list", "-q"); got != "" {
			t.Errorf("this machine's list shows %q: the session is on the far one", got)
		}
		r := gondolinEnv(t, home, []string{contexts.EnvContext + "=far"}, "in\n", "exec", "--session", "r1", "--", "sh", "-c", "read x; echo $x-out; echo err >&2; exit 3")
		if r.code != 3 || r.stdout != "in-out\n" || r.stderr != "err\n" {
			t.Errorf("exec --session through the context: %+v", r)
		}
		if r := gondolin(t, home, "", "--context", "far", "exec", "--", "uname", "-s"); r.code != 0 || r.stdout != "Linux\n" {
			t.Errorf("one-shot exec through the context: %+v", r)
		}
		if got := must("--context", "far", "inspect", "r1", "--format", "{{.ID}}"); got != id+"\n" {
			t.Errorf("inspect: %q", got)
		}
	})
	t.Run("policy, logs, cp", func(t *testing.T) {
		must("--context", "far", "policy", "allow", "r1", "example.com")
		if show := must("--context", "far", "policy", "show", "r1"); !strings.Contains(show, "example.com") {
			t.Errorf("policy show: %s", show)
		}
		must("--context", "far", "exec", "--session", "r1", "--", "sh", "-c", "echo far-console > /dev/console")
		if !testutil.Poll(30*time.Second, func() bool {
			return strings.Contains(must("--context", "far", "logs", "r1"), "far-console")
		}) {
			t.Errorf("logs through the context never showed the line")
		}
		src := filepath.Join(t.TempDir(), "f")
		os.WriteFile(src, []byte("through ssh\n"), 0o640)
		must("--context", "far", "cp", src, "r1:/tmp")
		out := t.TempDir()
		must("--context", "far", "cp", "r1:/tmp/f", out)
		if b, _ := os.ReadFile(filepath.Join(out, "f")); string(b) != "through ssh\n" {
			t.Errorf("cp there and back: %q", b)
		}
	})
	t.Run("attach", func(t *testing.T) {
		tm := startTerm(t, home, "--context", "far", "attach", "r1", "--", "sh")
		tm.send("echo far-$((6*7))\r")
		tm.waitScreen("far-42")
		tm.send("exit\r")
		if code := tm.exit(); code != 0 {
			t.Errorf("attach exit code %d", code)
		}
	})
	t.Run("mounts name the far machine's directories", func(t *testing.T) {
		r := gondolin(t, home, "", "--context", "far", "exec", "--mount-hostfs", "/no/such/dir:/w", "--", "true")
		if r.code != 2 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "/no/such/dir") {
			t.Errorf("a missing far directory: %+v", r)
		}
		r = gondolin(t, home, "", "--context", "far", "exec", "--mount-hostfs", "rel:/w", "--", "true")
		if r.code != 2 || !strings.Contains(r.stderr, "absolute path") {
			t.Errorf("a relative far directory: %+v", r)
		}
		dir := t.TempDir() // on the same machine here, but named as the far side sees it
		os.WriteFile(filepath.Join(dir, "x"), []byte("far file\n"), 0o644)
		if r := gondolin(t, home, "", "--context", "far", "exec", "--mount-hostfs", dir+":/w:ro", "--", "cat", "/w/x"); r.code != 0 || r.stdout != "far file\n" {
			t.Errorf("a far directory mounted: %+v", r)
		}
		// A symlink in the far path is resolved there, as here.
		link := filepath.Join(t.TempDir(), "link")
		os.Symlink(dir, link)
		if r := gondolin(t, home, "", "--context", "far", "exec", "--mount-hostfs", link+":/w:ro", "--", "cat", "/w/x"); r.code != 0 || r.stdout != "far file\n" {
			t.Errorf("a far directory mounted through a symlink: %+v", r)
		}
	})
	t.Run("local-only commands refuse", func(t *testing.T) {
		r := gondolin(t, home, "", "--context", "far", "image", "ls")
		if r.code != 2 || !strings.Contains(r.stderr, "this machine's files") {
			t.Errorf("image ls through a context: %+v", r)
		}
		// Keys, agent and known_hosts are files of this machine.
		r = gondolin(t, home, "", "--context", "far", "exec", "--ssh-allow-host", "github.com", "--ssh-agent", "--", "true")
		if r.code != 2 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "git over ssh") {
			t.Errorf("--ssh-allow-host through a context: %+v", r)
		}
		r = gondolin(t, home, "", "--context", "far", "snapshot", "r1", "--output", "rel.qcow2")
		if r.code != 2 || !strings.Contains(r.stderr, "absolute path") {
			t.Errorf("snapshot --output relative through a context: %+v", r)
		}
		for _, args := range [][]string{{"supervisor", "status"}, {"supervisor", "stop"}, {"exec", "--cold", "--", "true"}} {
			if r := gondolin(t, home, "", append([]string{"--context", "far"}, args...)...); r.code != 2 || strings.Count(r.stderr, "\n") != 1 {
				t.Errorf("%v through a context: %+v, want exit 2 and one line", args, r)
			}
		}
	})
	t.Run("context inspect and ls --json", func(t *testing.T) {
		var c struct{ Name, Host string }
		if err := json.Unmarshal([]byte(must("context", "inspect", "far")), &c); err != nil || c.Name != "far" || c.Host == "" {
			t.Errorf("context inspect far: %+v %v", c, err)
		}
		var list []struct{ Name string }
		if err := json.Unmarshal([]byte(must("context", "ls", "--json")), &list); err != nil || len(list) != 2 {
			t.Errorf("context ls --json: %+v %v", list, err)
		}
	})
	must("context", "use", "far")
	if got := must("list", "-q"); got != id+"\n" {
		t.Errorf("list after context use far: %q", got)
	}
	// This machine's supervisor still starts (it serves its own home,
	// whatever context is chosen).
	if got := must("--context", "default", "list", "-q"); got != "" {
		t.Errorf("--context default list: %q", got)
	}
	must("stop", id)
	must("rm", id)
	must("context", "use", "default")
	if got := must("--context", "far", "list", "-q", "--all"); got != "" {
		t.Errorf("after rm: %q", got)
	}
}

// TestContextFailures: a host that is down, a missing gondolin, a key the
// host does not know and an API of another version each give one line,
// in bounded time.
func TestContextFailures(t *testing.T) {
	far := startFarHost(t)
	home := layout.Home(t.TempDir())
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	down := closed.Addr().(*net.TCPAddr).Port
	closed.Close()
	oldAPI := filepath.Join(far.dir, "old-gondolin")
	os.WriteFile(oldAPI, []byte("#!/bin/sh\necho 'gondolin dial-stdio api=0 version=v0.0.1'\nsleep 1\n"), 0o755)
	tests := []struct {
		name, host, gondolin, ssh, want string
	}{
		{"host down", "ssh://root@127.0.0.1:" + strconv.Itoa(down), far.wrapper, far.sshCmd, "is unreachable"},
		{"no gondolin there", far.url(), "/no/such/gondolin", far.sshCmd, "has no /no/such/gondolin"},
		{"a key it does not know", far.url(), far.wrapper, far.ssh("stranger"), "authentication failed"},
		{"another API", far.url(), oldAPI, far.sshCmd, "speaks API 0"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := "c" + strconv.Itoa(i)
			if r := gondolin(t, home, "", "context", "create", name, "--host", tt.host, "--gondolin", tt.gondolin); r.code != 0 {
				t.Fatalf("context create: %+v", r)
			}
			r := gondolinEnv(t, home, []string{contexts.EnvSSHCommand + "=" + tt.ssh}, "", "--context", name, "list")
			if r.code != 125 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("code %d, stderr %q: want 125 and one line with %q", r.code, r.stderr, tt.want)
			}
			if r.elapsed > 30*time.Second {
				t.Logf("took %v", r.elapsed) // bounded by contexts' deadline; logged, not judged
			}
		})
	}
	for _, bad := range [][]string{
		{"context", "create", "x", "--host", "ssh://-oProxyCommand=evil"},
		{"context", "create", "x", "--host", "http://h"},
		{"context", "create", "x/y", "--host", "ssh://h"},
		{"context", "create", "x"},
		{"context", "rm", "default"},
	} {
		if r := gondolin(t, home, "", bad...); r.code != 2 || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%v: %+v, want exit 2 and one line", bad, r)
		}
	}
	// Not found: 4, but 125 from exec, whose codes are the guest's.
	for args, want := range map[string]int{"--context nope list": 4, "--context nope exec -- true": 125} {
		if r := gondolin(t, home, "", strings.Fields(args)...); r.code != want || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%v: %+v, want exit %d and one line", args, r, want)
		}
	}
}

// sharedHost is a far host reached with ssh's connection sharing on, as
// users get by default, with its control directory (where contexts
// keep their forwards) in a TMPDIR of the test's own.
type sharedHost struct {
	t        *testing.T
	far      *farHost
	home     layout.Home
	controls string
}

func startSharedHost(t *testing.T, sshdConfig string) *sharedHost {
	far := startFarHostConfig(t, sshdConfig)
	t.Setenv(contexts.EnvSSHCommand, far.srv.SSHCommand("client")) // sharing on
	tmp, err := os.MkdirTemp("", "gdfw")                           // short: it holds sockets
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", tmp)
	h := &sharedHost{t: t, far: far, home: layout.Home(t.TempDir()), controls: filepath.Join(tmp, "gondolin-ssh-"+strconv.Itoa(os.Getuid()))}
	t.Cleanup(func() { h.killMasters(); os.RemoveAll(tmp) })
	t.Cleanup(func() { stopSupervisor(t, h.home) })
	if r := gondolin(t, h.home, "", "context", "create", "far", "--host", far.url(), "--gondolin", far.wrapper); r.code != 0 {
		t.Fatal(r)
	}
	return h
}

func (h *sharedHost) run(args ...string) result {
	h.t.Helper()
	return gondolinWithin(h.t, 3*time.Minute, h.home, "", append([]string{"--context", "far"}, args...)...)
}

// masters are the ssh masters that ControlPersist detached: the ssh
// processes whose command line names the control directory (a master
// calls itself "ssh: CONTROLPATH [mux]").
func (h *sharedHost) masters() []int {
	return testutil.Procs(func(cmdline, _ []byte, exe string) bool {
		return exe == "ssh" && strings.Contains(string(cmdline), h.controls)
	})
}

func (h *sharedHost) killMasters() {
	for _, pid := range h.masters() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	testutil.WaitFor(h.t, 10*time.Second, "the ssh masters to end", func() bool { return len(h.masters()) == 0 })
}

// masterFiles counts the open files of the masters: a forward's
// listener is one, so a leak of them shows here.
func (h *sharedHost) masterFiles() (n int) {
	for _, pid := range h.masters() {
		fds, _ := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
		n += len(fds)
	}
	return n
}

// fewestMasterFiles is the fewest open files the masters have over two
// seconds: a baseline taken as the last command's channel closes.
func (h *sharedHost) fewestMasterFiles() (fewest int) {
	testutil.Poll(2*time.Second, func() bool {
		if n := h.masterFiles(); fewest == 0 || n < fewest {
			fewest = n
		}
		return false
	})
	return fewest
}

// noMoreMasterFiles fails the test unless the masters' open files come
// down to at most base (a finished command's channel closes a moment
// after it exits, later on a slow day; a leaked listener never does).
func (h *sharedHost) noMoreMasterFiles(t *testing.T, base int) {
	t.Helper()
	testutil.WaitFor(t, 30*time.Second, fmt.Sprintf("the masters' open files down to %d", base), func() bool { return h.masterFiles() <= base })
}

// listeners counts the forwards' listening sockets, unlinked ones
// included (/proc/net/unix keeps the path a socket was bound to): a
// master's leaked listener shows here even when its file is gone.
func (h *sharedHost) listeners() (n int) {
	b, _ := os.ReadFile("/proc/net/unix")
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		// Num RefCount Protocol Flags Type St Inode Path; __SO_ACCEPTCON
		// in Flags marks a listener.
		if len(f) == 8 && f[3] == "00010000" && strings.HasPrefix(f[7], filepath.Join(h.controls, "api-")) {
			n++
		}
	}
	return n
}

// forward is where the link to the current forward's socket leads (see
// contexts' forward.go), or "" when it leads to no socket.
func (h *sharedHost) forward() string {
	links, _ := filepath.Glob(filepath.Join(h.controls, "api-*.sock"))
	if len(links) != 1 {
		return ""
	}
	target, _ := os.Readlink(links[0])
	if fi, err := os.Stat(links[0]); err != nil || fi.Mode().Type() != os.ModeSocket {
		return ""
	}
	return target
}

// sockets are the forwards' sockets in the control directory.
func (h *sharedHost) sockets() (socks []string) {
	names, _ := filepath.Glob(filepath.Join(h.controls, "api-*.[0-9]*"))
	for _, n := range names {
		if fi, err := os.Lstat(n); err == nil && fi.Mode().Type() == os.ModeSocket {
			socks = append(socks, filepath.Base(n))
		}
	}
	return socks
}

// hideFar takes the far gondolin away (only a forward still reaches the
// far supervisor) and returns what brings it back.
func (h *sharedHost) hideFar() func() {
	os.Rename(h.far.wrapper, h.far.wrapper+".off")
	return func() { os.Rename(h.far.wrapper+".off", h.far.wrapper) }
}

// TestContextSharedConnection drives a context over a shared ssh
// connection: the first command logs in and runs dial-stdio, which
// leaves a forward to the far supervisor's socket on the connection's
// master; later commands go through that forward alone (with the far
// gondolin taken away, they still work). A far supervisor that stopped
// sends them the long way again, which starts it, and the same forward
// serves on (no listener leaks in the master); a master that died gets
// a new forward, and the old one's socket is swept.
func TestContextSharedConnection(t *testing.T) {
	h := startSharedHost(t, "")
	throughForward := func(what string) {
		t.Helper()
		if h.forward() == "" {
			t.Fatalf("%s: no forward", what)
		}
		defer h.hideFar()()
		if r := h.run("list", "-q"); r.code != 0 {
			t.Fatalf("%s: list through the forward: %+v", what, r)
		}
		if r := h.run("exec", "--", "echo", "through-the-forward"); r.code != 0 || r.stdout != "through-the-forward\n" {
			t.Errorf("%s: exec through the forward: %+v", what, r)
		}
	}

	if r := h.run("list", "-q"); r.code != 0 || r.stdout != "" {
		t.Fatalf("first list: %+v", r)
	}
	throughForward("after the first command")
	first, files := h.forward(), h.fewestMasterFiles()

	t.Run("the far supervisor stopped", func(t *testing.T) {
		for range 2 {
			stopSupervisor(t, h.far.home)
			if r := h.run("list", "-q"); r.code != 0 {
				t.Fatalf("list after the far supervisor stopped: %+v", r)
			}
		}
		throughForward("after the long way started it again")
		if h.forward() != first || h.listeners() != 1 {
			t.Errorf("forward %s, listeners %d; want the same forward (%s), one listener", h.forward(), h.listeners(), first)
		}
		h.noMoreMasterFiles(t, files)
	})
	t.Run("the far supervisor moved", func(t *testing.T) {
		// Another far home: another socket to forward to, while the
		// master lives. The old forward must be cancelled in it.
		stopSupervisor(t, h.far.home)
		moved := testenv.Home(h.t) // for the rest of the test
		h.t.Cleanup(func() { stopSupervisor(h.t, moved) })
		wrapper, _ := os.ReadFile(h.far.wrapper)
		os.WriteFile(h.far.wrapper, []byte(strings.Replace(string(wrapper), string(h.far.home), string(moved), 1)), 0o755)
		if r := h.run("list", "-q"); r.code != 0 {
			t.Fatalf("list after the far supervisor moved: %+v", r)
		}
		throughForward("after it moved")
		if got := h.sockets(); h.forward() == first || len(got) != 1 || h.listeners() != 1 {
			t.Errorf("forward %s, sockets %v, listeners %d: want a new forward, the old one cancelled and swept", h.forward(), got, h.listeners())
		}
		first = h.forward()
	})
	t.Run("the master died", func(t *testing.T) {
		h.killMasters()
		restore := h.hideFar()
		r := h.run("list", "-q")
		restore()
		if r.code != 125 || !strings.Contains(r.stderr, "has no") {
			t.Errorf("with no master and no far gondolin: %+v, want the long way's error", r)
		}
		if r := h.run("list", "-q"); r.code != 0 {
			t.Fatalf("list after the master died: %+v", r)
		}
		throughForward("after a new master")
		if got := h.sockets(); h.forward() == first || len(got) != 1 || h.listeners() != 1 {
			t.Errorf("forward %s, sockets %v, listeners %d: want a new forward and the old one swept", h.forward(), got, h.listeners())
		}
	})
}

// TestContextForwardingRefused: a far sshd that refuses socket
// forwarding still lets the master bind a forward, and only a
// connection through it tells. Every command then takes the long way
// and works, and the dialer stops trying (no listener per command piles
// up in the master).
func TestContextForwardingRefused(t *testing.T) {
	h := startSharedHost(t, "AllowStreamLocalForwarding no")
	var files int
	for i := range 4 {
		if r := h.run("list", "-q"); r.code != 0 {
			t.Fatalf("list %d: %+v", i, r)
		}
		if i == 1 {
			files = h.fewestMasterFiles()
		}
	}
	if h.forward() != "" || len(h.sockets()) != 0 || h.listeners() != 0 {
		t.Errorf("forward %q, sockets %v, listeners %d with forwarding refused", h.forward(), h.sockets(), h.listeners())
	}
	if offs, _ := filepath.Glob(filepath.Join(h.controls, "api-*.off")); len(offs) != 1 {
		t.Errorf("no mark that forwarding is off here: %v", offs)
	}
	if files == 0 {
		t.Fatal("no ssh master")
	}
	h.noMoreMasterFiles(t, files)
}

// TestContextSSHDiesWithItsClient: a client killed during a slow login
// (or by Ctrl-C, which ssh's own process group does not see) takes its
// ssh with it, rather than leave it to log in and start a far
// supervisor for nobody.
func TestContextSSHDiesWithItsClient(t *testing.T) {
	home := layout.Home(t.TempDir())
	dir := t.TempDir()
	slow := filepath.Join(dir, "slow-ssh")
	pidFile := filepath.Join(dir, "pid")
	os.WriteFile(slow, []byte(fmt.Sprintf("#!/bin/sh\necho $$ > %s.tmp && mv %s.tmp %s\nexec sleep 120\n", pidFile, pidFile, pidFile)), 0o755)
	if r := gondolin(t, home, "", "context", "create", "slow", "--host", "ssh://nowhere"); r.code != 0 {
		t.Fatal(r)
	}
	cmd := exec.Command(gondolinBin, "--context", "slow", "list")
	cmd.Env = append(os.Environ(), layout.EnvHome+"="+string(home), contexts.EnvSSHCommand+"="+slow)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int
	testutil.WaitFor(t, 30*time.Second, "the stand-in ssh to start", func() bool {
		b, err := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0
	})
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	cmd.Process.Kill()
	cmd.Wait()
	testutil.WaitFor(t, 30*time.Second, "ssh to die with its client", func() bool {
		st := testutil.ProcState(pid)
		return st == "" || st == "Z" // gone, or a zombie nobody has reaped yet
	})
}
