package contexts

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/termsafe"
)

// Target is where a context's ssh goes.
type Target struct {
	User, Host string
	Port       int // 0: ssh's own default (or the user's config)
}

var (
	validUser = regexp.MustCompile(`^[a-zA-Z0-9._][a-zA-Z0-9._-]{0,63}$`)
	// A host name, or an IP address (IPv6 comes out of its brackets):
	// nothing a shell or ssh's %h expansion in a ProxyCommand could
	// read as syntax.
	validHost = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,252}$|^[0-9a-fA-F:.]+$`)
)

// sshEnv is what ssh keeps of environ: what ssh and a user's config use
// (agent, keys, terminal, locale, Kerberos, askpass), nothing else.
func sshEnv(environ []string) []string {
	keep := map[string]bool{"PATH": true, "HOME": true, "USER": true, "LOGNAME": true, "SHELL": true, "TERM": true, "LANG": true,
		"LC_ALL": true, "TMPDIR": true, "SSH_AUTH_SOCK": true, "SSH_ASKPASS": true, "DISPLAY": true, "KRB5CCNAME": true, "XDG_RUNTIME_DIR": true,
		EnvSSHCommand: true}
	var out []string
	for _, kv := range environ {
		if k, _, _ := strings.Cut(kv, "="); keep[k] || strings.HasPrefix(k, "LC_") {
			out = append(out, kv)
		}
	}
	return out
}

// ParseHost reads ssh://[USER@]HOST[:PORT]. Nothing in it can reach ssh
// as an option: a host or user that starts with '-' is refused.
func ParseHost(s string) (Target, error) {
	bad := func(why string) (Target, error) {
		return Target{}, errdefs.Fieldf("--host", "--host %q: %s (use ssh://[USER@]HOST[:PORT])", s, why)
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return bad("not a URL")
	case u.Scheme != "ssh":
		return bad("only ssh:// is supported")
	case u.Opaque != "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return bad("a host takes no path, query or fragment")
	case !validHost.MatchString(u.Hostname()):
		return bad("a host name takes letters, digits, '.', '_' and '-' (or an IP address)")
	}
	t := Target{Host: u.Hostname()}
	if u.User != nil {
		if _, has := u.User.Password(); has || !validUser.MatchString(u.User.Username()) {
			return bad("a user name takes letters, digits, '.', '_' and '-' (no password)")
		}
		t.User = u.User.Username()
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return bad("port out of range")
		}
		t.Port = n
	}
	return t, nil
}

func checkCommand(cmd string) error {
	if cmd == "" || len(cmd) > 4096 || strings.ContainsAny(cmd, "\x00\n\r") {
		return errdefs.Fieldf("--gondolin", "--gondolin %q: give the path (or name) of gondolin on the far host", cmd)
	}
	return nil
}

// APIVersion is the version of the API a dial-stdio carries; both ends
// must agree.
const APIVersion = 1

// greeting starts what dial-stdio writes, before the API's bytes: one
// line, "gondolin dial-stdio api=N version=V" or "gondolin dial-stdio
// error: WHY".
const greeting = "gondolin dial-stdio "

// Greeting is the line dial-stdio writes once it holds a connection to
// its supervisor, whose socket is at socket and whose PingInfo.Instance
// is instance (what a forward reaches and checks; see forward.go).
func Greeting(version, socket, instance string) string {
	line := fmt.Sprintf("%sapi=%d version=%s", greeting, APIVersion, strings.ReplaceAll(version, " ", "_"))
	if validFarSocket.MatchString(socket) && validInstance.MatchString(instance) {
		line += " socket=" + socket + " instance=" + instance
	}
	return line + "\n"
}

// GreetingError is the line dial-stdio writes when it cannot serve.
func GreetingError(err error) string {
	return greeting + "error: " + strings.ReplaceAll(err.Error(), "\n", " ") + "\n"
}

// dialTimeout bounds a connection's set-up: ssh's own connect, the login,
// and the far supervisor's start. A variable for tests.
var dialTimeout = 60 * time.Second

// errDialTimeout is the cause of a dial's context that ran out.
var errDialTimeout = errors.New("dial timeout")

// Dial connects to c's supervisor API: through the shared ssh
// connection's forward when there is one that answers (see forward.go),
// else through ssh and dial-stdio on the far side, which then sets that
// forward up for the next dial. noStart asks dial-stdio not to start a
// supervisor there (a forward reaches only one that runs).
func (c Context) Dial(ctx context.Context, noStart bool) (net.Conn, error) {
	t, err := ParseHost(c.Host)
	if err != nil {
		return nil, err
	}
	// One bound over all of it: the forward's ping, the login and the
	// far start, and mending the forward (which cancels what it must
	// with a few seconds of its own).
	ctx, cancel := context.WithTimeoutCause(ctx, dialTimeout, errDialTimeout)
	defer cancel()
	fwd := c.forwardPath()
	if fwd != "" {
		if conn, err := dialForward(ctx, fwd); err == nil {
			return conn, nil
		}
	}
	conn, far, err := c.dialStdio(ctx, t, noStart)
	if err == nil && fwd != "" && far.socket != "" {
		c.forward(ctx, t, fwd, far)
	}
	return conn, err
}

// dialStdio runs dial-stdio on the far side through ssh, and returns the
// far supervisor as its greeting gave it.
func (c Context) dialStdio(ctx context.Context, t Target, noStart bool) (net.Conn, farSupervisor, error) {
	name, args := c.command(t, noStart)
	cmd := exec.Command(name, args...)
	// ssh (and a shared connection's master, which outlives this
	// command) keeps no token this shell exported for --host-secret.
	cmd.Env = sshEnv(os.Environ())
	cmd.SysProcAttr = sshProcAttr()
	// A child that keeps ssh's stderr open (a ProxyCommand, a wrapper's
	// leftover) must not hold Wait.
	cmd.WaitDelay = 2 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, farSupervisor{}, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, farSupervisor{}, err
	}
	tail := &tailBuffer{}
	cmd.Stderr = tail
	if err := cmd.Start(); err != nil {
		return nil, farSupervisor{}, errdefs.Errorf(errdefs.ErrUnavailable, "context %s: cannot run ssh: %v", c.Name, err)
	}
	conn := &sshConn{cmd: cmd, w: stdin, r: bufio.NewReaderSize(stdout, 64<<10), stderr: tail, addr: sshAddr(t.Host)}
	type answer struct {
		line string
		err  error
	}
	got := make(chan answer, 1)
	go func() {
		line, err := readLine(conn.r, 4096)
		got <- answer{line, err}
	}()
	var a answer
	select {
	case a = <-got:
	case <-ctx.Done():
		conn.kill()
		if context.Cause(ctx) == errDialTimeout {
			return nil, farSupervisor{}, errdefs.Errorf(errdefs.ErrUnavailable, "context %s: %s did not answer in %s", c.Name, t.Host, dialTimeout)
		}
		return nil, farSupervisor{}, errdefs.Errorf(errdefs.ErrUnavailable, "context %s: %v", c.Name, ctx.Err())
	}
	if errors.Is(a.err, errGreetingTooLong) {
		conn.kill()
		return nil, farSupervisor{}, errdefs.Errorf(errdefs.ErrUnavailable, "context %s: %s answered with a line of over 4 KiB, not gondolin's dial-stdio (is --gondolin right?)", c.Name, t.Host)
	}
	if a.err != nil {
		conn.Close() // exited, or about to: its status and stderr say why
		return nil, farSupervisor{}, c.explain(t, conn)
	}
	far, err := checkGreeting(c, t, a.line)
	if err != nil {
		conn.kill()
		return nil, farSupervisor{}, err
	}
	return conn, far, nil
}

// command is the ssh command line that runs dial-stdio on the far side.
func (c Context) command(t Target, noStart bool) (name string, args []string) {
	remote := shellQuote(c.gondolin()) + " supervisor dial-stdio"
	if noStart {
		remote += " --no-start"
	}
	return c.ssh(t, "--", t.Host, remote)
}

// ssh is an ssh command line: ssh (or GONDOLIN_SSH_COMMAND, run by sh as
// git runs GIT_SSH_COMMAND), the options every context's ssh gets, the
// target's port and user, then rest.
func (c Context) ssh(t Target, rest ...string) (name string, args []string) {
	// BatchMode: no prompt (a passphrase, a password, an unknown host
	// key) can be answered from here (ssh runs in a process group of
	// its own, and the dashboard owns the terminal): it fails at once
	// with a line explain() reads.
	args = []string{"-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3"}
	if dir, err := controlDir(); err == nil {
		// Connection sharing: a command after the first one costs no
		// new login. An option the user gives (in GONDOLIN_SSH_COMMAND
		// or their config's Host block) comes first and wins.
		args = append(args, "-o", "ControlMaster=auto", "-o", "ControlPersist=60", "-o", "ControlPath="+filepath.Join(dir, "%C"))
	}
	if t.Port != 0 {
		args = append(args, "-p", strconv.Itoa(t.Port))
	}
	if t.User != "" {
		args = append(args, "-l", t.User)
	}
	args = append(args, rest...)
	if sshCommand := os.Getenv(EnvSSHCommand); sshCommand != "" {
		return "sh", append([]string{"-c", shellLine(sshCommand), "ssh"}, args...)
	}
	return "ssh", args
}

// shellLine is the sh -c line that runs GONDOLIN_SSH_COMMAND with ssh's
// arguments. It execs the command, so that ssh is the process Dial
// started and dies with its client (sshProcAttr); a command that starts
// with a variable assignment (FOO=1 ssh ...) cannot be exec'd, and runs
// as a child of sh.
func shellLine(sshCommand string) string {
	if leadingAssignment.MatchString(sshCommand) {
		return sshCommand + ` "$@"`
	}
	return `exec ` + sshCommand + ` "$@"`
}

var leadingAssignment = regexp.MustCompile(`^\s*[A-Za-z_][A-Za-z0-9_]*=`)

func (c Context) gondolin() string {
	if c.Gondolin == "" {
		return "gondolin"
	}
	return c.Gondolin
}

// controlDir is where the shared ssh connections' sockets live: a
// directory of this user's, short enough for a socket path.
func controlDir() (string, error) {
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("gondolin-ssh-%d", os.Getuid()))
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return "", err
	}
	// Another user's directory (or a symlink) would let them in.
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Getuid() || fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s is not a private directory of this user", dir)
	}
	return dir, nil
}

var shellSafe = regexp.MustCompile(`^[a-zA-Z0-9/._+-]+$`)

// shellQuote quotes s for the far side's shell, which ssh hands its
// command line to.
func shellQuote(s string) string {
	if shellSafe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// farSupervisor is what a greeting says of the far supervisor for a
// forward: its socket and instance (both "" from an older gondolin).
type farSupervisor struct {
	socket, instance string
}

// checkGreeting reads dial-stdio's first line: an error, or the API and
// version it speaks and its supervisor.
func checkGreeting(c Context, t Target, line string) (farSupervisor, error) {
	rest, ok := strings.CutPrefix(line, greeting)
	switch {
	case !ok:
		return farSupervisor{}, errdefs.Errorf(errdefs.ErrUnavailable, "context %s: %s answered \"%s\", not gondolin's dial-stdio (is --gondolin right?)", c.Name, t.Host, termsafe.String(trim(line, 80)))
	case strings.HasPrefix(rest, "error: "):
		return farSupervisor{}, errdefs.Errorf(errdefs.ErrUnavailable, "context %s: on %s: %s", c.Name, t.Host, termsafe.String(strings.TrimPrefix(rest, "error: ")))
	}
	var api int
	var version string
	var far farSupervisor
	for f := range strings.FieldsSeq(rest) {
		if v, ok := strings.CutPrefix(f, "api="); ok {
			api, _ = strconv.Atoi(v)
		} else if v, ok := strings.CutPrefix(f, "version="); ok {
			version = v
		} else if v, ok := strings.CutPrefix(f, "socket="); ok && validFarSocket.MatchString(v) {
			far.socket = v
		} else if v, ok := strings.CutPrefix(f, "instance="); ok && validInstance.MatchString(v) {
			far.instance = v
		}
	}
	if api != APIVersion {
		return farSupervisor{}, errdefs.Errorf(errdefs.ErrUnavailable, "context %s: gondolin %s on %s speaks API %d, this one %d: install the same version on both", c.Name, termsafe.String(trim(version, 80)), t.Host, api, APIVersion)
	}
	if far.socket == "" || far.instance == "" {
		far = farSupervisor{}
	}
	return far, nil
}

// explain says in one line why ssh ended before the greeting.
func (c Context) explain(t Target, conn *sshConn) error {
	out := conn.stderr.String()
	code := -1
	if conn.cmd.ProcessState != nil {
		code = conn.cmd.ProcessState.ExitCode()
	}
	last := termsafe.String(trim(lastLine(out), 200))
	msg := ""
	// ssh's own failures exit 255; the far command's do not.
	switch {
	case code == 255 && strings.Contains(out, "Permission denied"):
		msg = fmt.Sprintf("ssh to %s: authentication failed (`ssh %s` must log in without a prompt: use a key or your agent)", t.Host, t.Host)
	case code == 255 && strings.Contains(out, "Host key verification failed"):
		msg = fmt.Sprintf("ssh to %s: its host key is not in known_hosts (log in once with ssh to check and add it)", t.Host)
	case code == 255:
		msg = fmt.Sprintf("%s is unreachable: %s", t.Host, last)
	case strings.Contains(out, `unknown command "dial-stdio"`) || strings.Contains(out, `got "dial-stdio"`):
		msg = fmt.Sprintf("gondolin on %s is too old for contexts (it has no supervisor dial-stdio): update it", t.Host)
	case code == 126:
		msg = fmt.Sprintf("%s on %s cannot be run: %s", c.gondolin(), t.Host, last)
	case code == 127 || strings.Contains(out, "command not found") || strings.Contains(out, "No such file or directory"):
		msg = fmt.Sprintf("%s has no %s (install gondolin there, or name it: gondolin context create %s --host %s --gondolin PATH)", t.Host, c.gondolin(), c.Name, c.Host)
	case last != "":
		msg = fmt.Sprintf("on %s: %s", t.Host, last)
	default:
		msg = fmt.Sprintf("ssh to %s ended (exit status %d) before gondolin answered", t.Host, code)
	}
	return errdefs.Errorf(errdefs.ErrUnavailable, "context %s: %s", c.Name, msg)
}

var errGreetingTooLong = errors.New("greeting too long")

func readLine(r *bufio.Reader, limit int) (string, error) {
	var b []byte
	for len(b) < limit {
		c, err := r.ReadByte()
		if err != nil {
			return "", err
		}
		if c == '\n' {
			return string(b), nil
		}
		b = append(b, c)
	}
	return "", errGreetingTooLong
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func trim(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// tailBuffer keeps the last 4 KiB written to it: ssh's stderr, for the
// reason a connection failed.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 4096 {
		t.buf = t.buf[len(t.buf)-4096:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// sshProcAttr is how a context's ssh runs: in a process group of its
// own, so that a Ctrl-C meant for the command in the VM (forwarded by
// exec) does not kill the connection carrying it; and killed when this
// process dies however it dies (Ctrl-C during a slow login, a kill), so
// that no ssh goes on to log in and start a far supervisor for nobody.
// A shared connection's master, which ssh forks, outlives it by design:
// a fork does not inherit the death signal.
func sshProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// CloseGrace is how long the far end of a closed connection has to
// finish: the client kills ssh after it, and dial-stdio stops waiting
// for its supervisor's answer after it.
const CloseGrace = 2 * time.Second

// sshConn is one API connection: the stdin and stdout of an ssh process.
type sshConn struct {
	cmd    *exec.Cmd
	w      io.WriteCloser
	r      *bufio.Reader
	stderr *tailBuffer
	addr   sshAddr
	once   sync.Once
}

func (s *sshConn) Read(p []byte) (int, error)  { return s.r.Read(p) }
func (s *sshConn) Write(p []byte) (int, error) { return s.w.Write(p) }

// Close ends the connection: the far side sees EOF and exits, and ssh
// with it; one that lingers is killed.
func (s *sshConn) Close() error {
	s.once.Do(func() {
		s.w.Close()
		done := make(chan struct{})
		go func() { s.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(CloseGrace):
			s.killGroup()
			<-done
		}
	})
	return nil
}

// kill ends a connection that never got going.
func (s *sshConn) kill() {
	s.once.Do(func() {
		s.w.Close()
		s.killGroup()
		s.cmd.Wait()
	})
}

// killGroup kills ssh and whatever it started (its own process group).
func (s *sshConn) killGroup() {
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
}

func (s *sshConn) LocalAddr() net.Addr  { return s.addr }
func (s *sshConn) RemoteAddr() net.Addr { return s.addr }

// Deadlines are not supported: the HTTP client needs none, and ssh's
// ServerAlive probes end a connection whose host went away.
func (s *sshConn) SetDeadline(time.Time) error      { return nil }
func (s *sshConn) SetReadDeadline(time.Time) error  { return nil }
func (s *sshConn) SetWriteDeadline(time.Time) error { return nil }

type sshAddr string

func (a sshAddr) Network() string { return "ssh" }
func (a sshAddr) String() string  { return string(a) }
