package sshaccess

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/testreq"
	"github.com/gondolin/gondolin/internal/testutil"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// fakeBackend stands in for the guest agent: a few commands, and a
// record of every process it was asked to run.
type fakeBackend struct {
	mu    sync.Mutex
	procs []Process
}

func (b *fakeBackend) Exec(ctx context.Context, p *Process) (Exit, error) {
	b.mu.Lock()
	b.procs = append(b.procs, *p)
	b.mu.Unlock()
	cmd, arg, _ := strings.Cut(p.Command, " ")
	switch {
	case p.Argv == nil: // a "shell": echoes lines until EOF
		io.WriteString(p.Stdout, "$ ")
		io.Copy(p.Stdout, p.Stdin)
		return Exit{}, nil
	case len(p.Argv) > 0 && p.Argv[0] == "/usr/lib/openssh/sftp-server":
		io.WriteString(p.Stdout, "sftp here")
		return Exit{}, nil
	case cmd == "echo":
		fmt.Fprintln(p.Stdout, arg)
		fmt.Fprintln(p.Stderr, "to stderr")
	case cmd == "cat":
		io.Copy(p.Stdout, p.Stdin)
	case cmd == "env":
		fmt.Fprintln(p.Stdout, strings.Join(p.Env, " "))
	case cmd == "tty":
		if p.TTY == nil {
			return Exit{Code: 1}, nil
		}
		fmt.Fprintf(p.Stdout, "%s %dx%d\n", p.TTY.Term, p.TTY.Cols, p.TTY.Rows)
		select {
		case ws := <-p.TTY.Resize:
			fmt.Fprintf(p.Stdout, "resized %dx%d\n", ws.Cols, ws.Rows)
		case <-ctx.Done():
		}
	case cmd == "sleep":
		select {
		case sig := <-p.Signals:
			return Exit{Signal: sig}, nil
		case <-ctx.Done():
			return Exit{Signal: syscall.SIGKILL}, nil
		}
	case cmd == "fail":
		return Exit{}, errors.New("the guest agent is not connected")
	case cmd == "exit":
		n, _ := strconv.Atoi(arg)
		return Exit{Code: n}, nil
	default:
		fmt.Fprintf(p.Stderr, "%s: not found\n", cmd)
		return Exit{Code: 127}, nil
	}
	return Exit{}, nil
}

// forwardingBackend can also open connections "inside the guest".
type forwardingBackend struct {
	fakeBackend
	target string
}

func (b *forwardingBackend) Forward(ctx context.Context, host string, port uint16) (net.Conn, error) {
	if host != "localhost" || port != 8000 {
		return nil, fmt.Errorf("nothing at %s:%d", host, port)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", b.target)
}

func newServer(t testing.TB, opts Options) *Server {
	if opts.Dir == "" {
		opts.Dir = filepath.Join(t.TempDir(), "ssh")
	}
	if opts.Backend == nil {
		opts.Backend = &fakeBackend{}
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// login connects as the printed command would: the generated key, the
// host key checked against the generated known_hosts.
func login(t testing.TB, s *Server, user string) (*ssh.Client, error) {
	pem, err := os.ReadFile(s.KeyPath())
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		t.Fatal(err)
	}
	return dial(t, s, user, signer)
}

// mustLogin is login for a test that cannot go on without it.
func mustLogin(t testing.TB, s *Server, user string) *ssh.Client {
	t.Helper()
	cl, err := login(t, s, user)
	if err != nil {
		t.Fatalf("login as %s: %v", user, err)
	}
	return cl
}

func dial(t testing.TB, s *Server, user string, signer ssh.Signer) (*ssh.Client, error) {
	hk, err := knownhosts.New(s.KnownHostsPath())
	if err != nil {
		t.Fatal(err)
	}
	cl, err := ssh.Dial("tcp", net.JoinHostPort(s.host, strconv.Itoa(s.Port())), &ssh.ClientConfig{
		User: user, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)}, HostKeyCallback: hk, Timeout: 10 * time.Second,
	})
	if err == nil {
		t.Cleanup(func() { cl.Close() })
	}
	return cl, err
}

func run(t testing.TB, cl *ssh.Client, cmd string, stdin string) (stdout, stderr string, code int) {
	t.Helper()
	sess, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	var out, errOut bytes.Buffer
	sess.Stdout, sess.Stderr = &out, &errOut
	if stdin != "" {
		sess.Stdin = strings.NewReader(stdin)
	}
	err = sess.Run(cmd)
	var ee *ssh.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitStatus()
	default:
		t.Fatalf("%s: %v", cmd, err)
	}
	return out.String(), errOut.String(), code
}

func TestLogin(t *testing.T) {
	fb := &forwardingBackend{}
	echo := testutil.Listen(t, "tcp", "127.0.0.1:0")
	testutil.Serve(t, echo, func(c net.Conn) { io.Copy(c, c); c.Close() })
	fb.target = echo.Addr().String()
	s := newServer(t, Options{Backend: fb, SFTPServer: []string{"/usr/lib/openssh/sftp-server"}})

	t.Run("files", func(t *testing.T) {
		for path, want := range map[string]os.FileMode{
			s.opts.Dir: 0o700 | os.ModeDir, s.KeyPath(): 0o600, filepath.Join(s.opts.Dir, HostKeyFile): 0o600,
		} {
			fi, err := os.Stat(path)
			if err != nil || fi.Mode() != want {
				t.Errorf("%s: %v %v, want %v", path, fi.Mode(), err, want)
			}
		}
		want := fmt.Sprintf("ssh -i %s -p %d -o UserKnownHostsFile=%s -o IdentitiesOnly=yes root@127.0.0.1", s.KeyPath(), s.Port(), s.KnownHostsPath())
		if s.Command() != want {
			t.Errorf("Command() = %q\nwant %q", s.Command(), want)
		}
		if a := s.Addr().String(); a != "127.0.0.1:"+strconv.Itoa(s.Port()) {
			t.Errorf("Addr = %s", a)
		}
	})
	cl := mustLogin(t, s, "root")
	t.Run("exec", func(t *testing.T) {
		out, errOut, code := run(t, cl, "echo hello", "")
		if out != "hello\n" || errOut != "to stderr\n" || code != 0 {
			t.Errorf("%q %q %d", out, errOut, code)
		}
		if _, _, code := run(t, cl, "exit 42", ""); code != 42 {
			t.Errorf("exit status %d", code)
		}
		if out, _, _ := run(t, cl, "cat", "stdin through ssh"); out != "stdin through ssh" {
			t.Errorf("cat: %q", out)
		}
		_, errOut, code = run(t, cl, "fail", "")
		if code != 255 || !strings.Contains(errOut, "gondolin: the guest agent is not connected") {
			t.Errorf("backend error: %q %d", errOut, code)
		}
		fb.mu.Lock()
		p := fb.procs[0]
		fb.mu.Unlock()
		if p.User != "root" || strings.Join(p.Argv, "|") != "/bin/sh|-c|echo hello" || p.TTY != nil {
			t.Errorf("process %+v", p)
		}
	})
	t.Run("env", func(t *testing.T) {
		sess, _ := cl.NewSession()
		defer sess.Close()
		sess.Setenv("LANG", "C.UTF-8")
		if err := sess.Setenv("BAD NAME", "x"); err == nil {
			t.Error("bad env name accepted")
		}
		out, err := sess.Output("env")
		if err != nil || strings.TrimSpace(string(out)) != "LANG=C.UTF-8" {
			t.Errorf("%q %v", out, err)
		}
	})
	t.Run("terminal", func(t *testing.T) {
		sess, _ := cl.NewSession()
		defer sess.Close()
		if err := sess.RequestPty("xterm-256color", 40, 120, nil); err != nil {
			t.Fatal(err)
		}
		out, _ := sess.StdoutPipe()
		if err := sess.Start("tty"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 100)
		k, _ := out.Read(buf)
		if got := string(buf[:k]); got != "xterm-256color 120x40\n" {
			t.Errorf("first size %q", got)
		}
		sess.WindowChange(50, 132)
		k, _ = io.ReadFull(out, buf[:len("resized 132x50\n")])
		if got := string(buf[:k]); got != "resized 132x50\n" {
			t.Errorf("after resize %q", got)
		}
		if err := sess.Wait(); err != nil {
			t.Error(err)
		}
		fb.mu.Lock()
		p := fb.procs[len(fb.procs)-1]
		fb.mu.Unlock()
		if strings.Join(p.Env, " ") != "TERM=xterm-256color" {
			t.Errorf("env %q", p.Env)
		}
	})
	t.Run("shell", func(t *testing.T) {
		sess, _ := cl.NewSession()
		defer sess.Close()
		var out bytes.Buffer
		sess.Stdout = &out
		sess.Stdin = strings.NewReader("ls\n")
		if err := sess.Shell(); err != nil {
			t.Fatal(err)
		}
		if err := sess.Wait(); err != nil || out.String() != "$ ls\n" {
			t.Errorf("%q %v", out.String(), err)
		}
	})
	t.Run("signal", func(t *testing.T) {
		sess, _ := cl.NewSession()
		defer sess.Close()
		if err := sess.Start("sleep"); err != nil {
			t.Fatal(err)
		}
		// Start returned after the exec was answered: the process
		// is running and the signal is queued for it.
		sess.Signal(ssh.SIGTERM)
		var ee *ssh.ExitError
		if err := sess.Wait(); !errors.As(err, &ee) || ee.Signal() != "TERM" {
			t.Errorf("wait: %v", err)
		}
	})
	t.Run("sftp runs the guest's sftp server", func(t *testing.T) {
		sess, _ := cl.NewSession()
		defer sess.Close()
		out, _ := sess.StdoutPipe()
		if err := sess.RequestSubsystem("sftp"); err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(out)
		if string(b) != "sftp here" {
			t.Errorf("%q", b)
		}
	})
	t.Run("forwarding", func(t *testing.T) {
		c, err := cl.Dial("tcp", "localhost:8000")
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "ping")
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Errorf("%q %v", buf, err)
		}
		c.Close()
		if _, err := cl.Dial("tcp", "localhost:9"); err == nil || !strings.Contains(err.Error(), "nothing at localhost:9") {
			t.Errorf("bad target: %v", err)
		}
		if _, err := cl.Listen("tcp", "127.0.0.1:0"); err == nil {
			t.Error("remote forwarding accepted")
		}
	})
}

func TestRefused(t *testing.T) {
	s := newServer(t, Options{})
	t.Run("another key", func(t *testing.T) {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		signer, _ := ssh.NewSignerFromKey(priv)
		if _, err := dial(t, s, "root", signer); err == nil {
			t.Fatal("a stranger's key logged in")
		}
	})
	t.Run("another user", func(t *testing.T) {
		if _, err := login(t, s, "admin"); err == nil {
			t.Fatal("user admin logged in")
		}
	})
	t.Run("no sftp server", func(t *testing.T) {
		cl := mustLogin(t, s, "root")
		sess, _ := cl.NewSession()
		defer sess.Close()
		if err := sess.RequestSubsystem("sftp"); err == nil {
			t.Error("sftp accepted")
		}
		if _, err := cl.Dial("tcp", "localhost:8000"); err == nil || !strings.Contains(err.Error(), "not available") {
			t.Errorf("forwarding without a Forwarder: %v", err)
		}
	})
}

// A restarted supervisor passes the same directory and port: the keys and
// the printed command stay valid.
func TestRestartKeepsKeys(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ssh")
	s1 := newServer(t, Options{Dir: dir, User: "dev"})
	cmd, port := s1.Command(), s1.Port()
	key, _ := os.ReadFile(s1.KeyPath())
	s1.Close()
	s2 := newServer(t, Options{Dir: dir, User: "dev", Port: port})
	key2, _ := os.ReadFile(s2.KeyPath())
	if s2.Command() != cmd || !bytes.Equal(key, key2) {
		t.Fatalf("after restart: %q (key changed: %v), want %q", s2.Command(), !bytes.Equal(key, key2), cmd)
	}
	cl, err := login(t, s2, "dev")
	if err != nil {
		t.Fatal(err)
	}
	if out, _, _ := run(t, cl, "echo again", ""); out != "again\n" {
		t.Errorf("%q", out)
	}
	if _, err := New(Options{Dir: dir, Backend: &fakeBackend{}, Port: port}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("port taken: %v", err)
	}
}

func TestListenAddress(t *testing.T) {
	s := newServer(t, Options{Listen: "0.0.0.0"})
	if !strings.HasSuffix(s.Command(), "root@127.0.0.1") || !s.Addr().(*net.TCPAddr).IP.IsUnspecified() {
		t.Errorf("Command %q on %v", s.Command(), s.Addr())
	}
	if _, err := login(t, s, "root"); err != nil {
		t.Error(err)
	}
	for _, bad := range []string{"example.com", "fe80::1%eth0"} {
		if _, err := New(Options{Dir: t.TempDir(), Backend: &fakeBackend{}, Listen: bad}); err == nil {
			t.Errorf("listen %q accepted", bad)
		}
	}
	if q := shellQuote("/tmp/it's here"); q != `'/tmp/it'\''s here'` {
		t.Errorf("shellQuote = %s", q)
	}
}

// The printed command works with the host's real OpenSSH client, host
// key verified, in an ordinary directory and in an awkward one.
func TestOpenSSHCommand(t *testing.T) {
	testreq.Tool(t, "ssh")
	for _, dir := range []string{"ssh", "a dir with spaces, 100% odd"} {
		t.Run(dir, func(t *testing.T) {
			s := newServer(t, Options{Dir: filepath.Join(t.TempDir(), dir)})
			// Options go before the destination; the rest is the
			// command line exactly as printed.
			line := "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes " + strings.TrimPrefix(s.Command(), "ssh ") + " echo from-openssh"
			c := exec.Command("sh", "-c", line)
			c.Env = append(os.Environ(), "HOME="+t.TempDir())
			out, err := c.Output()
			if err != nil || string(out) != "from-openssh\n" {
				var stderr []byte
				if ee, ok := err.(*exec.ExitError); ok {
					stderr = ee.Stderr
				}
				t.Fatalf("%s: %q %v %s", line, out, err, stderr)
			}
		})
	}
}
