package netpolicy

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/testutil"
	"github.com/gondolin/gondolin/netpolicy/ca"
	"github.com/gondolin/gondolin/netpolicy/netpolicytest"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// fakePack is what the fake upstream's git-upload-pack answers.
const fakePack = "0008NAK\nPACK-fake-pack-data\n"

// sshUpstream is an SSH server standing in for github.com: it logs in
// the keys it is given, answers a git-like exec, and records what reached
// it, so a test can tell what the proxy let through.
type sshUpstream struct {
	t       testing.TB
	ln      net.Listener
	hostKey ssh.Signer
	// serve, when set, handles an exec instead of the fixed answers
	// (the real-git test runs git-upload-pack with it).
	serve func(cmd string, env []string, ch ssh.Channel) int

	mu         sync.Mutex
	authorized []ssh.PublicKey
	logins     []string // "user SHA256:..."
	requests   []string // every channel request type and global request
	execs      []string
	env        []string
	channels   []string
}

func newSSHUpstream(t testing.TB, authorized ...ssh.PublicKey) *sshUpstream {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	hk, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	u := &sshUpstream{t: t, ln: testutil.Listen(t, "tcp", "127.0.0.1:0"), hostKey: hk, authorized: authorized}
	testutil.Serve(t, u.ln, u.handle)
	return u
}

func (u *sshUpstream) port() uint16 { return uint16(u.ln.Addr().(*net.TCPAddr).Port) }

// addr is host at the upstream's port.
func (u *sshUpstream) addr(host string) string {
	return net.JoinHostPort(host, strconv.Itoa(int(u.port())))
}

func (u *sshUpstream) record(list *[]string, s string) {
	u.mu.Lock()
	*list = append(*list, s)
	u.mu.Unlock()
}

func (u *sshUpstream) seen() (logins, requests, execs, env, channels []string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.logins...), append([]string(nil), u.requests...),
		append([]string(nil), u.execs...), append([]string(nil), u.env...), append([]string(nil), u.channels...)
}

// knownHostsLine is the upstream's key as ssh-keyscan would list it for
// name.
func (u *sshUpstream) knownHostsLine(name string) string {
	return knownhosts.Line([]string{knownhosts.Normalize(u.addr(name))}, u.hostKey.PublicKey())
}

// policy is sshTestPolicy with the upstream's key known as github.test's.
func (u *sshUpstream) policy(t testing.TB) Policy {
	return sshTestPolicy(u, writeFile(t, u.knownHostsLine("github.test")+"\n"))
}

func (u *sshUpstream) handle(c net.Conn) {
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			u.mu.Lock()
			defer u.mu.Unlock()
			for _, k := range u.authorized {
				if bytes.Equal(k.Marshal(), key.Marshal()) {
					return &ssh.Permissions{Extensions: map[string]string{"fp": ssh.FingerprintSHA256(key)}}, nil
				}
			}
			return nil, errors.New("unknown key")
		},
	}
	cfg.AddHostKey(u.hostKey)
	sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		c.Close()
		return
	}
	defer sc.Close()
	u.record(&u.logins, sc.User()+" "+sc.Permissions.Extensions["fp"])
	go func() {
		for r := range reqs {
			u.record(&u.requests, "global "+r.Type)
			r.Reply(false, nil)
		}
	}()
	for nc := range chans {
		u.record(&u.channels, nc.ChannelType())
		if nc.ChannelType() != "session" {
			// Accepting would show a leak; refusing quietly keeps the
			// test about what the proxy did.
			nc.Reject(ssh.Prohibited, "upstream says no")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go u.session(ch, creqs)
	}
}

func (u *sshUpstream) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	var env []string
	for r := range reqs {
		u.record(&u.requests, r.Type)
		switch r.Type {
		case "env":
			var m struct{ Name, Value string }
			ssh.Unmarshal(r.Payload, &m)
			env = append(env, m.Name+"="+m.Value)
			u.record(&u.env, m.Name+"="+m.Value)
			r.Reply(true, nil)
		case "exec":
			var m struct{ Command string }
			ssh.Unmarshal(r.Payload, &m)
			u.record(&u.execs, m.Command)
			r.Reply(true, nil)
			code := u.exec(m.Command, env, ch)
			ch.CloseWrite()
			ch.SendRequest("exit-status", false, ssh.Marshal(struct{ C uint32 }{uint32(code)}))
			return
		default:
			// A shell, pty or subsystem reaching here is a leak the
			// tests look for in requests; say yes so it would show.
			r.Reply(r.WantReply, nil)
		}
	}
}

func (u *sshUpstream) exec(cmd string, env []string, ch ssh.Channel) int {
	if u.serve != nil {
		return u.serve(cmd, env, ch)
	}
	switch {
	case cmd == "git-upload-pack 'org/repo'":
		io.WriteString(ch.Stderr(), "remote: counting objects\n")
		io.WriteString(ch, fakePack)
		return 0
	case cmd == "cat":
		io.Copy(ch, ch)
		return 0
	case strings.HasPrefix(cmd, "exit "):
		n, _ := strconv.Atoi(strings.TrimPrefix(cmd, "exit "))
		return n
	}
	fmt.Fprintf(ch.Stderr(), "%s: command not found\n", cmd)
	return 127
}

// sshKeyFile writes a fresh Ed25519 key in OpenSSH form (encrypted when
// passphrase is set) and returns its path, the raw private key and the
// public key.
func sshKeyFile(t testing.TB, passphrase string) (string, ed25519.PrivateKey, ssh.PublicKey) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	var (
		block *pem.Block
		err   error
	)
	if passphrase != "" {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(priv, "test", []byte(passphrase))
	} else {
		block, err = ssh.MarshalPrivateKey(priv, "test")
	}
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	pub, _ := ssh.NewPublicKey(priv.Public())
	return path, priv, pub
}

// testAgent serves an ssh-agent holding priv on a unix socket.
func testAgent(t testing.TB, priv ed25519.PrivateKey) string {
	keyring := agent.NewKeyring()
	if err := keyring.Add(agent.AddedKey{PrivateKey: priv}); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "agent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	testutil.Serve(t, testutil.Listen(t, "unix", sock), func(c net.Conn) { agent.ServeAgent(keyring, c); c.Close() })
	return sock
}

func writeFile(t testing.TB, content string) string {
	path := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// sshTestPolicy allows SSH to github.test at the upstream's port, which
// the host resolves to the loopback upstream.
func sshTestPolicy(u *sshUpstream, knownHosts string) Policy {
	p := localPolicy()
	for _, h := range []string{"github.test", "gitlab.test"} {
		p.Resolve = append(p.Resolve, ResolvePin{Host: h, IP: netip.MustParseAddr("127.0.0.1")})
	}
	p.SSHAllow = []SSHHost{{Host: "github.test", Port: u.port()}}
	p.SSHKnownHosts = []string{knownHosts}
	return p
}

// guestHostKeys checks host keys as the guest's OpenSSH does with
// Network.SSHKnownHosts in its system known_hosts: a host certificate for
// the name dialled, signed by the CA. (crypto/ssh's knownhosts cannot
// stand in here: unlike OpenSSH, its "*" never matches a host on a port
// other than 22.)
func guestHostKeys(t testing.TB, n *Network) ssh.HostKeyCallback {
	marker, hosts, caKey, _, _, err := ssh.ParseKnownHosts(n.SSHKnownHosts())
	if err != nil || marker != "cert-authority" || len(hosts) != 1 || hosts[0] != "*" {
		t.Fatalf("known_hosts line %q: %v", n.SSHKnownHosts(), err)
	}
	cc := &ssh.CertChecker{IsHostAuthority: func(auth ssh.PublicKey, _ string) bool {
		return bytes.Equal(auth.Marshal(), caKey.Marshal())
	}}
	return cc.CheckHostKey
}

// guestSSH logs in from the guest as user to addr, trusting what the
// guest's system known_hosts holds, with no key of its own.
func guestSSH(t testing.TB, g *netpolicytest.Guest, n *Network, addr, user string) (*ssh.Client, error) {
	conn, err := g.Dial(context.Background(), addr)
	if err != nil {
		return nil, err
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, &ssh.ClientConfig{User: user, HostKeyCallback: guestHostKeys(t, n), Timeout: 10 * time.Second})
	if err != nil {
		conn.Close()
		return nil, err
	}
	cl := ssh.NewClient(c, chans, reqs)
	t.Cleanup(func() { cl.Close() })
	return cl, nil
}

// run execs cmd in a new session and returns stdout, stderr and the exit
// code (-1 with err when the session could not run it).
func run(cl *ssh.Client, cmd string) (string, string, int, error) {
	s, err := cl.NewSession()
	if err != nil {
		return "", "", -1, err
	}
	defer s.Close()
	var out, errOut bytes.Buffer
	s.Stdout, s.Stderr = &out, &errOut
	err = s.Run(cmd)
	var ee *ssh.ExitError
	switch {
	case err == nil:
		return out.String(), errOut.String(), 0, nil
	case errors.As(err, &ee):
		return out.String(), errOut.String(), ee.ExitStatus(), nil
	}
	return out.String(), errOut.String(), -1, err
}

// findEvent returns the last event matching all of the given fields.
func findEvent(n *Network, match func(Event) bool) (Event, bool) {
	evs := n.Events()
	for i := len(evs) - 1; i >= 0; i-- {
		if match(evs[i]) {
			return evs[i], true
		}
	}
	return Event{}, false
}

func TestSSHEgress(t *testing.T) {
	keyPath, priv, pub := sshKeyFile(t, "")
	_, agentPriv, _ := ed25519.GenerateKey(rand.Reader)
	agentPub, _ := ssh.NewPublicKey(agentPriv.Public())
	up := newSSHUpstream(t, pub, agentPub)
	p := up.policy(t)
	p.SSHCredentials = []SSHCredential{{User: "git", Host: "github.test", Port: up.port(), Key: keyPath}}
	p.SSHAgent = testAgent(t, agentPriv)
	n := newTestNetwork(t, p)
	g := newTestGuest(t, n)
	g.Record()
	addr := up.addr("github.test")

	cl, err := guestSSH(t, g, n, addr, "git")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("exec passes with the host's key", func(t *testing.T) {
		out, errOut, code, err := run(cl, "git-upload-pack 'org/repo'")
		if err != nil || code != 0 || out != fakePack || errOut != "remote: counting objects\n" {
			t.Fatalf("out %q err %q code %d: %v", out, errOut, code, err)
		}
		logins, _, execs, _, _ := up.seen()
		if len(logins) != 1 || logins[0] != "git "+ssh.FingerprintSHA256(pub) {
			t.Errorf("upstream logins %q, want git with the credential's key", logins)
		}
		if len(execs) != 1 || execs[0] != "git-upload-pack 'org/repo'" {
			t.Errorf("upstream execs %q", execs)
		}
		ev, ok := findEvent(n, func(e Event) bool { return e.Proto == "ssh" && e.Method == "exec" })
		if !ok || ev.Action != Allowed || ev.Host != "github.test" || ev.User != "git" || ev.Command != "git-upload-pack 'org/repo'" {
			t.Errorf("exec event %+v", ev)
		}
		ev, ok = findEvent(n, func(e Event) bool { return e.Proto == "ssh" && e.Method == "connect" })
		if !ok || ev.Action != Allowed || ev.Rule != "ssh-allow "+addr {
			t.Errorf("connect event %+v", ev)
		}
	})
	t.Run("stdin, exit status and env with --ssh-allow-exec", func(t *testing.T) {
		// Commands other than git's pass only where the host says so;
		// the policy of a connection is the one it started under.
		setExec := func(on bool) {
			t.Helper()
			if err := n.UpdatePolicy(func(p *Policy) error { p.SSHAllow[0].AnyCommand = on; return nil }); err != nil {
				t.Fatal(err)
			}
		}
		setExec(true)
		defer setExec(false)
		cl, err := guestSSH(t, g, n, addr, "git")
		if err != nil {
			t.Fatal(err)
		}
		s, err := cl.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Setenv("GIT_PROTOCOL", "version=2"); err != nil {
			t.Errorf("GIT_PROTOCOL refused: %v", err)
		}
		if err := s.Setenv("LD_PRELOAD", "/tmp/evil.so"); err == nil {
			t.Error("LD_PRELOAD passed")
		}
		s.Stdin = strings.NewReader("through the proxy and back")
		out, err := s.Output("cat")
		if err != nil || string(out) != "through the proxy and back" {
			t.Fatalf("%q %v", out, err)
		}
		if _, _, code, err := run(cl, "exit 3"); err != nil || code != 3 {
			t.Errorf("exit status %d %v", code, err)
		}
		_, _, _, env, _ := up.seen()
		if strings.Join(env, " ") != "GIT_PROTOCOL=version=2" {
			t.Errorf("upstream env %q", env)
		}
		ev, ok := findEvent(n, func(e Event) bool { return e.Proto == "ssh" && e.Method == "connect" })
		if !ok || ev.Rule != "ssh-allow-exec "+addr {
			t.Errorf("connect event %+v", ev)
		}
	})
	t.Run("refused requests", func(t *testing.T) {
		for _, tt := range []struct {
			name string
			do   func(s *ssh.Session) error
			msg  string
		}{
			{"shell", func(s *ssh.Session) error { return s.Shell() }, "interactive shells are not allowed"},
			{"pty-req", func(s *ssh.Session) error { return s.RequestPty("xterm", 24, 80, nil) }, "terminals (pty) are not allowed"},
			{"subsystem", func(s *ssh.Session) error { return s.RequestSubsystem("sftp") }, "subsystems (sftp) are not allowed"},
			{"x11-req", func(s *ssh.Session) error {
				ok, err := s.SendRequest("x11-req", true, ssh.Marshal(struct {
					Single        bool
					Proto, Cookie string
					Screen        uint32
				}{false, "MIT-MAGIC-COOKIE-1", "00", 0}))
				if err == nil && !ok {
					err = errors.New("refused")
				}
				return err
			}, "X11 forwarding is not allowed"},
			{"auth-agent-req@openssh.com", func(s *ssh.Session) error { return agent.RequestAgentForwarding(s) }, "agent forwarding is not allowed"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				s, err := cl.NewSession()
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				stderr, _ := s.StderrPipe()
				err = tt.do(s)
				if tt.name == "shell" || tt.name == "subsystem" {
					// Taken, so that OpenSSH prints why, then
					// ended at once with status 1.
					var ee *ssh.ExitError
					if err != nil {
						t.Fatal(err)
					}
					// (crypto/ssh cannot Wait for a subsystem.)
					if err := s.Wait(); tt.name == "shell" && (!errors.As(err, &ee) || ee.ExitStatus() != 1) {
						t.Errorf("wait: %v, want exit status 1", err)
					}
				} else if err == nil {
					t.Fatal("request passed")
				}
				buf := make([]byte, 512)
				k, _ := stderr.Read(buf)
				if !strings.Contains(string(buf[:k]), tt.msg) {
					t.Errorf("guest told %q, want %q", buf[:k], tt.msg)
				}
				ev, ok := findEvent(n, func(e Event) bool { return e.Proto == "ssh" && e.Method == tt.name })
				if !ok || ev.Action != Blocked || ev.User != "git" {
					t.Errorf("event %+v", ev)
				}
			})
		}
		_, reqs, _, _, _ := up.seen()
		for _, r := range reqs {
			if r != "exec" && r != "env" {
				t.Errorf("upstream saw request %q", r)
			}
		}
	})
	t.Run("port forwarding", func(t *testing.T) {
		if c, err := cl.Dial("tcp", "127.0.0.1:80"); err == nil {
			c.Close()
			t.Fatal("direct-tcpip passed")
		} else if !strings.Contains(err.Error(), "port forwarding is not allowed") {
			t.Errorf("direct-tcpip: %v", err)
		}
		if ln, err := cl.Listen("tcp", "127.0.0.1:8080"); err == nil {
			ln.Close()
			t.Fatal("tcpip-forward passed")
		}
		for _, m := range []string{"direct-tcpip", "tcpip-forward"} {
			ev, ok := findEvent(n, func(e Event) bool { return e.Method == m })
			if !ok || ev.Action != Blocked {
				t.Errorf("%s event %+v", m, ev)
			}
		}
		_, reqs, _, _, chans := up.seen()
		for _, c := range chans {
			if c != "session" {
				t.Errorf("upstream saw channel %q", c)
			}
		}
		for _, r := range reqs {
			if strings.HasPrefix(r, "global tcpip") {
				t.Errorf("upstream saw %q", r)
			}
		}
	})
	t.Run("agent logs in when no credential matches", func(t *testing.T) {
		// The rule names the login; the git@ credential does not
		// apply to it.
		if err := n.UpdatePolicy(func(p *Policy) error { p.SSHAllow[0].User = "deploy"; return nil }); err != nil {
			t.Fatal(err)
		}
		defer n.UpdatePolicy(func(p *Policy) error { p.SSHAllow[0].User = ""; return nil })
		cl2, err := guestSSH(t, g, n, addr, "deploy")
		if err != nil {
			t.Fatal(err)
		}
		if out, _, code, err := run(cl2, "git-upload-pack 'org/repo'"); err != nil || code != 0 || out != fakePack {
			ev, _ := findEvent(n, func(e Event) bool { return e.Method == "connect" })
			t.Fatalf("%q %d %v; event %+v", out, code, err, ev)
		}
		logins, _, _, _, _ := up.seen()
		if last := logins[len(logins)-1]; last != "deploy "+ssh.FingerprintSHA256(agentPub) {
			t.Errorf("upstream login %q, want deploy with the agent's key", last)
		}
	})
	t.Run("key material never reaches the guest or the events", func(t *testing.T) {
		block, _ := ssh.MarshalPrivateKey(priv, "")
		keyPEM, _ := os.ReadFile(keyPath)
		evs, _ := json.Marshal(n.Events())
		pol, _ := json.Marshal(n.Policy())
		rx := g.Received()
		if len(rx) < 1000 {
			t.Fatalf("only %d bytes recorded", len(rx))
		}
		for what, secret := range map[string][]byte{
			"credential seed": priv.Seed(), "credential key blob": block.Bytes, "credential PEM": keyPEM,
			"agent seed": agentPriv.Seed(), "agent socket": []byte(p.SSHAgent),
		} {
			if bytes.Contains(rx, secret) {
				t.Errorf("%s reached the guest", what)
			}
			if bytes.Contains(evs, secret) {
				t.Errorf("%s is in the events", what)
			}
			if what != "agent socket" && bytes.Contains(pol, secret) {
				t.Errorf("%s is in the policy JSON", what)
			}
		}
	})
}

func TestSSHEgressRefusals(t *testing.T) {
	keyPath, _, pub := sshKeyFile(t, "")
	up := newSSHUpstream(t, pub)
	other := newSSHUpstream(t, pub) // a key nobody listed
	otherKey, _, _ := sshKeyFile(t, "")
	encKey, _, _ := sshKeyFile(t, "hunter2hunter2")
	cases := []struct {
		name       string
		knownHosts string          // the --ssh-known-hosts line ("" = up's key as github.test's)
		tweak      func(p *Policy) // after the key file is set as the credential for *.test
		dial       string          // host:port the guest dials ("" = github.test:up)
		action     Action
		msg        string // in the guest's channel-open error and the event
	}{
		{
			name: "unknown host key", knownHosts: other.knownHostsLine("gitlab.test"),
			action: Blocked, msg: "is not in --ssh-known-hosts, and gondolin never trusts a key on first use",
		},
		{
			name: "changed host key", knownHosts: knownhosts.Line([]string{knownhosts.Normalize(up.addr("github.test"))}, other.hostKey.PublicKey()),
			action: Blocked, msg: "does not match --ssh-known-hosts",
		},
		{
			name: "host not allowed", knownHosts: up.knownHostsLine("gitlab.test"), dial: "gitlab.test",
			action: Blocked, msg: "is not allowed; allow it with --ssh-allow-host gitlab.test:",
		},
		{
			name:   "internal address not lifted",
			tweak:  func(p *Policy) { p.AllowInternal = nil },
			action: Blocked, msg: "127.0.0.1 is internal",
		},
		{
			name: "upstream refuses the key",
			tweak: func(p *Policy) {
				p.SSHCredentials = []SSHCredential{{Host: "github.test", Port: up.port(), Key: otherKey}}
			},
			action: Failed, msg: "refused the login as git with 1 key(s)",
		},
		{
			name: "encrypted key without its passphrase",
			tweak: func(p *Policy) {
				p.SSHCredentials = []SSHCredential{{Host: "github.test", Port: up.port(), Key: encKey, PassphraseEnv: "KEY_PASS"}}
			},
			action: Failed, msg: "passphrase (from $KEY_PASS) is not known",
		},
		{
			name:   "agent socket gone",
			tweak:  func(p *Policy) { p.SSHCredentials, p.SSHAgent = nil, "/nonexistent/agent.sock" },
			action: Failed, msg: "--ssh-agent: no such file or directory",
		},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			kh := tt.knownHosts
			if kh == "" {
				kh = up.knownHostsLine("github.test")
			}
			p := sshTestPolicy(up, writeFile(t, kh+"\n"))
			p.SSHCredentials = []SSHCredential{{Host: "*.test", Port: up.port(), Key: keyPath}}
			if tt.tweak != nil {
				tt.tweak(&p)
			}
			n := newTestNetwork(t, p)
			g := newTestGuest(t, n)
			host := tt.dial
			if host == "" {
				host = "github.test"
			}
			addr := up.addr(host)
			before, _, beforeExecs, _, _ := up.seen()
			cl, err := guestSSH(t, g, n, addr, "git")
			if err != nil {
				t.Fatal(err)
			}
			_, _, _, err = run(cl, "git-upload-pack 'org/repo'")
			if err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("guest got %v, want %q", err, tt.msg)
			}
			ev, ok := findEvent(n, func(e Event) bool { return e.Proto == "ssh" && e.Method == "connect" })
			if !ok || ev.Action != tt.action || !strings.Contains(ev.Reason, tt.msg) {
				t.Errorf("event %+v", ev)
			}
			if strings.Contains(ev.Reason, "/nonexistent") || strings.Contains(ev.Reason, keyPath) {
				t.Errorf("event names a host path: %q", ev.Reason)
			}
			after, _, afterExecs, _, _ := up.seen()
			if len(afterExecs) != len(beforeExecs) || (tt.action == Blocked && len(after) != len(before)) {
				t.Errorf("upstream reached: logins %q execs %q", after, afterExecs)
			}
		})
	}
}

// With no SSH host allowed, an SSH flow is reset like any unmediated
// protocol: nothing answers the handshake.
func TestSSHEgressOff(t *testing.T) {
	n := newTestNetwork(t, localPolicy())
	g := newTestGuest(t, n)
	if _, err := guestSSH(t, g, n, "github.test:22", "git"); err == nil || !isReset(err) && !errors.Is(err, io.EOF) {
		t.Fatalf("handshake: %v, want a reset", err)
	}
	ev, ok := findEvent(n, func(e Event) bool { return e.Proto == "ssh" })
	if !ok || ev.Action != Blocked || !strings.Contains(ev.Reason, "SSH egress is off") {
		t.Errorf("event %+v", ev)
	}
}

func TestSSHEgressLimits(t *testing.T) {
	keyPath, _, pub := sshKeyFile(t, "")
	up := newSSHUpstream(t, pub)
	p := up.policy(t)
	p.SSHCredentials = []SSHCredential{{Host: "github.test", Port: up.port(), Key: keyPath}}
	n := newTestNetwork(t, p, func(o *Options) {
		o.MaxSSHConns = 1
		o.SSHHandshakeTimeout = time.Second
	})
	g := newTestGuest(t, n)
	addr := up.addr("github.test")

	t.Run("a guest that stalls its handshake is cut off", func(t *testing.T) {
		c := g.MustDial(t, addr)
		io.WriteString(c, "SSH-2.0-stalling\r\n")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		_, err := io.Copy(io.Discard, c)
		if d := time.Since(start); err != nil || d > 3*time.Second {
			t.Fatalf("connection ended after %v with %v", d, err)
		}
	})
	// A slot frees when the handler of its connection has returned,
	// a moment after the guest saw the connection end.
	connectSoon := func() (*ssh.Client, error) {
		deadline := time.Now().Add(5 * time.Second)
		for {
			cl, err := guestSSH(t, g, n, addr, "git")
			if err == nil || time.Now().After(deadline) {
				return cl, err
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Run("one connection at a time", func(t *testing.T) {
		first, err := connectSoon()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := guestSSH(t, g, n, addr, "git"); err == nil {
			t.Fatal("second connection passed the limit of 1")
		}
		ev, ok := findEvent(n, func(e Event) bool { return strings.Contains(e.Reason, "too many SSH connections") })
		if !ok || ev.Action != Blocked {
			t.Errorf("event %+v", ev)
		}
		first.Close()
		cl, err := connectSoon()
		if err != nil {
			t.Fatalf("slot never freed: %v", err)
		}
		if out, _, _, err := run(cl, "git-upload-pack 'org/repo'"); err != nil || out != fakePack {
			t.Fatalf("%q %v", out, err)
		}
	})
}

// The known_hosts line the guest gets is stable for a CA (so guests keep
// trusting a restarted supervisor) and vouches for any host name and port.
func TestSSHKnownHosts(t *testing.T) {
	p := localPolicy()
	n1 := newTestNetwork(t, p)
	n2 := newTestNetwork(t, p)
	if !bytes.Equal(n1.SSHKnownHosts(), n2.SSHKnownHosts()) {
		t.Fatal("two Networks on one CA give different known_hosts lines")
	}
	line := string(n1.SSHKnownHosts())
	if !strings.HasPrefix(line, "@cert-authority * ssh-ed25519 ") || !strings.HasSuffix(line, "\n") {
		t.Fatalf("line %q", line)
	}
	// crypto/ssh's own known_hosts reader accepts it (on port 22; see
	// guestHostKeys), and a certificate is good for its name only.
	hk, err := knownhosts.New(writeFile(t, line))
	if err != nil {
		t.Fatal(err)
	}
	remote := &net.TCPAddr{IP: net.IPv4(198, 18, 0, 1), Port: 22}
	for _, name := range []string{"github.com", "gitlab.example.org", "93.184.216.34"} {
		signer, err := n1.ssh.hostSigner(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := hk(net.JoinHostPort(name, "22"), remote, signer.PublicKey()); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if err := guestHostKeys(t, n1)(net.JoinHostPort(name, "2222"), remote, signer.PublicKey()); err != nil {
			t.Errorf("%s:2222: %v", name, err)
		}
		if err := hk("evil.example:22", remote, signer.PublicKey()); err == nil {
			t.Errorf("certificate for %s accepted for evil.example", name)
		}
	}
	// A certificate from another CA is refused.
	other := newTestNetwork(t, p, func(o *Options) { o.CA = mustCA(t) })
	signer, _ := other.ssh.hostSigner("github.com")
	if err := hk("github.com:22", remote, signer.PublicKey()); err == nil {
		t.Error("certificate from another CA accepted")
	}
}

func mustCA(t testing.TB) *ca.CA {
	c, err := ca.New()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParseSSHBanner(t *testing.T) {
	for in, want := range map[string]string{
		"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u6\r\n": "OpenSSH_9.2p1",
		"SSH-2.0-Go\r\n":                      "Go",
		"SSH-2.0-JSCH-0.1.54\n":               "JSCH-0.1.54",
		"SSH-2.0-x\r\nmore bytes after":       "x",
		"SSH-2.0-\r\n":                        "",
		"SSH-2.0- comment\r\n":                "",
		"SSH-2.0-a\x00b\r\n":                  "",
		"SSH-2.0-a\x1b[31m\r\n":               "",
		"SSH-1.99-OpenSSH\r\n":                "",
		"SSH-2.0-no-newline":                  "",
		"SSH-2.0-" + strings.Repeat("a", 300): "",
	} {
		got, err := parseSSHBanner([]byte(in))
		if got != want || (want == "") != (err != nil) {
			t.Errorf("parseSSHBanner(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
