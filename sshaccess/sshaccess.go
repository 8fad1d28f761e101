// Package sshaccess is the `--ssh` login into a VM: an SSH server on the
// host (loopback unless told otherwise) that runs commands, shells and
// terminals in the guest through a Backend, for tools that only speak
// SSH (editors' remote modes, scripts). It logs in one key pair, made per
// session and kept with the server's host key in a directory the caller
// gives under GONDOLIN_HOME: the keys never enter the guest.
package sshaccess

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/internal/atomicfile"
	"github.com/gondolin/gondolin/internal/contain"
	"github.com/gondolin/gondolin/internal/layout"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// File names inside Options.Dir.
const (
	ClientKeyFile  = "id_ed25519"     // the login key (private, 0600)
	ClientPubFile  = "id_ed25519.pub" // its public half
	HostKeyFile    = "host_ed25519"   // the server's host key (0600)
	KnownHostsFile = "known_hosts"    // the host key, for ssh -o UserKnownHostsFile
)

// Backend runs processes in the guest. The caller implements it (with
// the guest agent).
type Backend interface {
	// Exec runs p in the guest until it exits or ctx ends (the client
	// went away: kill the process). Output written to p.Stdout and
	// p.Stderr before Exec returns reaches the client before the exit
	// status. An error (the process could not start) is shown to the
	// client on stderr, and the session exits with status 255.
	Exec(ctx context.Context, p *Process) (Exit, error)
}

// Forwarder is implemented by a Backend that can open TCP connections
// inside the guest. With it, clients may forward local ports into the VM
// (ssh -L, direct-tcpip: how some editors' remote modes reach the server
// they start in the VM); without it such requests are refused.
type Forwarder interface {
	Forward(ctx context.Context, host string, port uint16) (net.Conn, error)
}

// Process is one command, shell or terminal session for the guest.
type Process struct {
	// User is the login name (Options.User).
	User string
	// Argv is what to run: ["/bin/sh", "-c", COMMAND] for an exec,
	// Options.SFTPServer for the sftp subsystem, or nil for an
	// interactive login shell (the Backend picks the shell).
	Argv []string
	// Command is the exec command as the client sent it ("" for a
	// shell or subsystem).
	Command string
	// Env holds the client's env requests and, with a terminal,
	// TERM, as KEY=VALUE.
	Env []string
	// TTY is set when the client asked for a terminal: run the process
	// on one (its stderr then arrives on Stdout).
	TTY *TTY
	// Stdin ends (EOF) when the client closes its input.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Signals carries the signals the client sends (ssh's "signal"
	// request). It is closed after Exec returns: do not wait for that.
	Signals <-chan syscall.Signal
}

// TTY is the terminal a client asked for.
type TTY struct {
	Term string
	WindowSize
	// Resize carries later sizes (the newest wins when the reader is
	// slow). It is closed after Exec returns.
	Resize <-chan WindowSize
}

// WindowSize is a terminal size in characters.
type WindowSize struct {
	Rows, Cols uint16
}

// Exit is how a guest process ended: its exit code, or the signal that
// killed it.
type Exit struct {
	Code   int
	Signal syscall.Signal
}

// Options configure a Server. Dir and Backend are required.
type Options struct {
	// Dir holds the keys and known_hosts (created 0700 if missing).
	// Keys already there are used again, so the printed command keeps
	// working after a supervisor restart.
	Dir string
	// Listen is the address to listen on (default 127.0.0.1; another
	// address only when the user names one). IP or localhost.
	Listen string
	// Port to listen on; 0 picks a free one. After a restart pass the
	// port Addr reported, so the command stays the same.
	Port int
	// User is the only login name accepted (default root).
	User    string
	Backend Backend
	Logger  *slog.Logger
	// MaxConns bounds client connections at once (default 16).
	MaxConns int
	// SFTPServer is the guest command that serves the sftp subsystem
	// (e.g. /usr/lib/openssh/sftp-server, when the image has it); sftp
	// is refused when it is empty. The server does not speak sftp
	// itself: a guest program does, over the session's stdin/stdout.
	SFTPServer []string
	// HandshakeTimeout bounds a client's handshake and login
	// (default 10 s).
	HandshakeTimeout time.Duration
}

// Server is a running SSH login server for one VM.
type Server struct {
	opts      Options
	log       *slog.Logger
	ln        net.Listener
	hostKey   ssh.Signer
	clientPub ssh.PublicKey
	config    *ssh.ServerConfig
	host      string // what clients connect to (Command)
	slots     chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// New loads or makes the keys in opts.Dir, listens, writes known_hosts
// for the bound address and starts serving.
func New(opts Options) (*Server, error) {
	if opts.Dir == "" || opts.Backend == nil {
		return nil, errors.New("sshaccess: Options needs a Dir and a Backend")
	}
	if opts.Listen == "" || opts.Listen == "localhost" {
		opts.Listen = "127.0.0.1"
	}
	listenIP, err := netip.ParseAddr(opts.Listen)
	if err != nil || listenIP.Zone() != "" {
		return nil, fmt.Errorf("sshaccess: --ssh-listen %q: want an IP address or localhost", opts.Listen)
	}
	if opts.Port < 0 || opts.Port > 65535 {
		return nil, fmt.Errorf("sshaccess: --ssh-port %d: want 0-65535", opts.Port)
	}
	if opts.User == "" {
		opts.User = "root"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = 16
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = 10 * time.Second
	}
	if err := layout.MkdirPrivate(opts.Dir); err != nil {
		return nil, fmt.Errorf("sshaccess: %w", err)
	}
	hostKey, err := loadOrCreateKey(filepath.Join(opts.Dir, HostKeyFile), "gondolin host key")
	if err != nil {
		return nil, err
	}
	clientKey, err := loadOrCreateKey(filepath.Join(opts.Dir, ClientKeyFile), "gondolin login key")
	if err != nil {
		return nil, err
	}
	clientPub := clientKey.PublicKey()
	if err := atomicfile.WriteFile(filepath.Join(opts.Dir, ClientPubFile), ssh.MarshalAuthorizedKey(clientPub), 0o600); err != nil {
		return nil, fmt.Errorf("sshaccess: %w", err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(listenIP.String(), strconv.Itoa(opts.Port)))
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("sshaccess: port %d on %s is in use; choose another --ssh-port, or 0 for any", opts.Port, listenIP)
		}
		return nil, fmt.Errorf("sshaccess: %w", err)
	}
	s := &Server{
		opts:      opts,
		log:       opts.Logger,
		ln:        ln,
		hostKey:   hostKey,
		clientPub: clientPub,
		slots:     make(chan struct{}, opts.MaxConns),
		conns:     map[net.Conn]struct{}{},
	}
	// A wildcard listener is reached at loopback from this host.
	s.host = listenIP.String()
	if listenIP.IsUnspecified() {
		s.host = "127.0.0.1"
		if listenIP.Is6() {
			s.host = "::1"
		}
	}
	line := knownhosts.Line([]string{knownhosts.Normalize(net.JoinHostPort(s.host, strconv.Itoa(s.Port())))}, hostKey.PublicKey())
	if err := atomicfile.WriteFile(filepath.Join(opts.Dir, KnownHostsFile), []byte(line+"\n"), 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("sshaccess: %w", err)
	}
	s.config = &ssh.ServerConfig{
		PublicKeyCallback: s.authorize,
		ServerVersion:     "SSH-2.0-gondolin",
	}
	s.config.AddHostKey(hostKey)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// loadOrCreateKey reads an Ed25519 key in OpenSSH form, or makes one and
// writes it (0600) the first time.
func loadOrCreateKey(path, comment string) (ssh.Signer, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		s, err := ssh.ParsePrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("sshaccess: %s: %w; remove it to make a new key", path, err)
		}
		return s, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("sshaccess: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, fmt.Errorf("sshaccess: %w", err)
	}
	return ssh.NewSignerFromKey(priv)
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Port is the port the server listens on.
func (s *Server) Port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// KeyPath is the login key's path; KnownHostsPath the known_hosts file
// that vouches for the server's host key.
func (s *Server) KeyPath() string        { return filepath.Join(s.opts.Dir, ClientKeyFile) }
func (s *Server) KnownHostsPath() string { return filepath.Join(s.opts.Dir, KnownHostsFile) }

// Command is the ssh command line that logs in, host key checked.
func (s *Server) Command() string {
	// ssh expands % tokens in both paths and splits UserKnownHostsFile
	// at spaces (it takes a list): % is doubled and such a path goes in
	// double quotes. -i checks its path before expanding it, so a key
	// path with % is given as an option instead.
	identity := "-i " + shellQuote(s.KeyPath())
	if strings.Contains(s.KeyPath(), "%") {
		identity = "-o " + shellQuote("IdentityFile="+sshConfigQuote(s.KeyPath()))
	}
	return fmt.Sprintf("ssh %s -p %d -o %s -o IdentitiesOnly=yes %s@%s",
		identity, s.Port(), shellQuote("UserKnownHostsFile="+sshConfigQuote(s.KnownHostsPath())), s.opts.User, s.host)
}

// sshConfigQuote writes a path as an ssh -o value.
func sshConfigQuote(p string) string {
	p = strings.ReplaceAll(p, "%", "%%")
	if strings.ContainsAny(p, " \t\"'") {
		p = `"` + p + `"`
	}
	return p
}

// shellQuote quotes a path for a POSIX shell when it needs it.
func shellQuote(p string) string {
	if p != "" && strings.Trim(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+=:,@") == "" {
		return p
	}
	return "'" + strings.ReplaceAll(p, "'", `'\''`) + "'"
}

// Close stops listening, closes every connection and cancels every
// process's context, and waits for the connection handlers.
func (s *Server) Close() error {
	err := s.ln.Close()
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Server) authorize(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
	if meta.User() != s.opts.User {
		return nil, fmt.Errorf("user %q: only %s may log in", meta.User(), s.opts.User)
	}
	if key.Type() != s.clientPub.Type() || string(key.Marshal()) != string(s.clientPub.Marshal()) {
		return nil, errors.New("not the session's key")
	}
	return nil, nil
}

func (s *Server) serve() {
	defer s.wg.Done()
	defer contain.Recover("the SSH access listener", s.onPanic(s.ln))
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Warn("ssh access: accept", "err", err)
			}
			return
		}
		select {
		case s.slots <- struct{}{}:
		default:
			s.log.Info("ssh access: too many connections", "limit", s.opts.MaxConns)
			c.Close()
			continue
		}
		s.mu.Lock()
		if s.ctx.Err() != nil {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() { <-s.slots }()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			}()
			defer contain.Recover("an SSH access connection", s.onPanic(c))
			s.handle(c)
		}()
	}
}

// onPanic returns what to do about a panic contained in code serving a
// client: log it with its stack and close cs, that connection or channel
// only; the server and every other client go on. What the Backend
// returns comes from the guest, which is hostile.
func (s *Server) onPanic(cs ...io.Closer) func(*contain.PanicError) {
	return func(pe *contain.PanicError) {
		s.log.Error("ssh access: panic; the connection or channel was closed", "err", pe.Error(), "stack", string(pe.Stack))
		for _, c := range cs {
			c.Close()
		}
	}
}

func (s *Server) handle(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(s.opts.HandshakeTimeout))
	sc, chans, reqs, err := ssh.NewServerConn(c, s.config)
	if err != nil {
		s.log.Debug("ssh access: login failed", "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	c.SetDeadline(time.Time{})
	defer sc.Close()
	s.log.Info("ssh access: login", "remote", c.RemoteAddr().String(), "user", sc.User())
	// Remote forwarding (ssh -R) would open a port in the VM toward the
	// host: refused, like every other connection-level request.
	go ssh.DiscardRequests(reqs)
	var wg sync.WaitGroup
	defer wg.Wait()
	// Before waiting for the channels: close the connection that ends them.
	defer contain.Recover("an SSH access connection", s.onPanic(sc))
	for nc := range chans {
		switch nc.ChannelType() {
		case "session":
			ch, creqs, err := nc.Accept()
			if err != nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer contain.Recover("an SSH access session", s.onPanic(ch))
				s.session(sc.User(), ch, creqs)
			}()
		case "direct-tcpip":
			wg.Add(1)
			go func() {
				defer wg.Done()
				// The channel may not be accepted yet: the connection goes.
				defer contain.Recover("an SSH access forwarding", s.onPanic(sc))
				s.forward(nc)
			}()
		default:
			nc.Reject(ssh.UnknownChannelType, "gondolin: not supported: "+nc.ChannelType())
		}
	}
}

// forward serves ssh -L: a TCP connection inside the guest, when the
// Backend can open one.
func (s *Server) forward(nc ssh.NewChannel) {
	f, ok := s.opts.Backend.(Forwarder)
	if !ok {
		nc.Reject(ssh.Prohibited, "gondolin: port forwarding into this VM is not available")
		return
	}
	var m struct {
		Host  string
		Port  uint32
		OHost string
		OPort uint32
	}
	if err := ssh.Unmarshal(nc.ExtraData(), &m); err != nil || m.Port == 0 || m.Port > 65535 {
		nc.Reject(ssh.ConnectionFailed, "gondolin: bad forwarding request")
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.HandshakeTimeout)
	conn, err := f.Forward(ctx, m.Host, uint16(m.Port))
	cancel()
	if err != nil {
		nc.Reject(ssh.ConnectionFailed, "gondolin: "+err.Error())
		return
	}
	defer conn.Close()
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs)
	done := make(chan struct{})
	contain.Go("an SSH access forwarding", s.onPanic(ch, conn), func() {
		defer close(done)
		io.Copy(conn, ch)
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	})
	io.Copy(ch, conn)
	ch.CloseWrite()
	<-done
}

// maxEnv bounds a session's env requests.
const maxEnv = 64

// session serves one session channel: env and pty-req before the
// process, then one exec, shell or subsystem, with window changes and
// signals while it runs.
func (s *Server) session(user string, ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	var (
		env      []string
		tty      *TTY
		resize   chan WindowSize
		signals  = make(chan syscall.Signal, 8)
		started  bool
		execDone = make(chan struct{})
	)
	// On the way out: the process's context ends (the client is gone
	// or the server closing), the Backend is waited for, and only then
	// are its channels closed (this goroutine is their only sender).
	defer func() {
		cancel()
		if started {
			<-execDone
		}
		close(signals)
		if resize != nil {
			close(resize)
		}
	}()
	start := func(argv []string, command string) {
		started = true
		p := &Process{User: user, Argv: argv, Command: command, Env: env, TTY: tty,
			Stdin: ch, Stdout: ch, Stderr: ch.Stderr(), Signals: signals}
		if tty != nil && tty.Term != "" && !hasEnv(env, "TERM") {
			p.Env = append(p.Env, "TERM="+tty.Term)
		}
		go func() {
			defer close(execDone)
			defer contain.Recover("an SSH access command", s.onPanic(ch))
			exit, err := s.opts.Backend.Exec(ctx, p)
			if err != nil {
				fmt.Fprintf(ch.Stderr(), "gondolin: %v\r\n", err)
				exit = Exit{Code: 255}
			}
			ch.CloseWrite()
			if exit.Signal != 0 {
				ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
					Signal     string
					CoreDumped bool
					Msg, Lang  string
				}{signalName(exit.Signal), false, "", ""}))
			} else {
				ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(exit.Code)}))
			}
			ch.Close()
		}()
	}
	for r := range reqs {
		ok := false
		switch r.Type {
		case "env":
			var m struct{ Name, Value string }
			if !started && len(env) < maxEnv && ssh.Unmarshal(r.Payload, &m) == nil && validEnvName(m.Name) {
				env = append(env, m.Name+"="+m.Value)
				ok = true
			}
		case "pty-req":
			var m struct {
				Term                 string
				Cols, Rows, PxW, PxH uint32
				Modes                string
			}
			if !started && tty == nil && ssh.Unmarshal(r.Payload, &m) == nil {
				resize = make(chan WindowSize, 1)
				tty = &TTY{Term: m.Term, WindowSize: clampSize(m.Rows, m.Cols), Resize: resize}
				ok = true
			}
		case "window-change":
			var m struct{ Cols, Rows, PxW, PxH uint32 }
			if resize != nil && ssh.Unmarshal(r.Payload, &m) == nil {
				latest(resize, clampSize(m.Rows, m.Cols))
				ok = true
			}
		case "shell":
			if !started {
				start(nil, "")
				ok = true
			}
		case "exec":
			var m struct{ Command string }
			if !started && ssh.Unmarshal(r.Payload, &m) == nil {
				start([]string{"/bin/sh", "-c", m.Command}, m.Command)
				ok = true
			}
		case "subsystem":
			var m struct{ Name string }
			if started || ssh.Unmarshal(r.Payload, &m) != nil {
				break
			}
			if m.Name == "sftp" && len(s.opts.SFTPServer) > 0 {
				start(s.opts.SFTPServer, "")
				ok = true
			} else {
				fmt.Fprintf(ch.Stderr(), "gondolin: subsystem %q is not available in this VM\r\n", m.Name)
			}
		case "signal":
			var m struct{ Name string }
			if started && ssh.Unmarshal(r.Payload, &m) == nil {
				if sig, known := signalNumbers[m.Name]; known {
					select {
					case signals <- sig:
					default: // a client sending signals faster than they are delivered loses some
					}
					ok = true
				}
			}
		}
		// Everything else (agent and X11 forwarding, break, ...) is
		// refused.
		if r.WantReply {
			r.Reply(ok, nil)
		}
	}
}

// latest replaces any unread size in ch with ws.
func latest(ch chan WindowSize, ws WindowSize) {
	for {
		select {
		case ch <- ws:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}

func clampSize(rows, cols uint32) WindowSize {
	return WindowSize{Rows: uint16(min(rows, 0xffff)), Cols: uint16(min(cols, 0xffff))}
}

func hasEnv(env []string, name string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, name+"=") {
			return true
		}
	}
	return false
}

func validEnvName(n string) bool {
	if n == "" || len(n) > 256 {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// signalNumbers maps SSH signal names (RFC 4254 6.10) to Linux numbers.
var signalNumbers = map[string]syscall.Signal{
	"ABRT": syscall.SIGABRT, "ALRM": syscall.SIGALRM, "FPE": syscall.SIGFPE, "HUP": syscall.SIGHUP,
	"ILL": syscall.SIGILL, "INT": syscall.SIGINT, "KILL": syscall.SIGKILL, "PIPE": syscall.SIGPIPE,
	"QUIT": syscall.SIGQUIT, "SEGV": syscall.SIGSEGV, "TERM": syscall.SIGTERM, "USR1": syscall.SIGUSR1,
	"USR2": syscall.SIGUSR2,
}

func signalName(sig syscall.Signal) string {
	for name, n := range signalNumbers {
		if n == sig {
			return name
		}
	}
	return "KILL" // exit-signal needs a name from the list; the nearest truth
}
