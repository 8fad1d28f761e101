package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testenv"
	"github.com/gondolin/gondolin/internal/testutil"
	"golang.org/x/crypto/ssh"
	"golang.org/x/net/websocket"
)

// gitServer is an SSH server on the host that plays a git hosting service:
// it accepts one user key and serves git-upload-pack and git-receive-pack
// by running the real commands on a bare repository. It records every
// request it gets, and the login names and commands that reach it.
type gitServer struct {
	port     int
	hostKey  ssh.PublicKey
	keyFile  string // the user's private key (host side only)
	keyBytes []byte
	mu       sync.Mutex
	seen     []string
	users    []string
	commands []string
}

func newGitServer(t *testing.T, repoDir string) *gitServer {
	t.Helper()
	_, hostPriv, _ := ed25519.GenerateKey(rand.Reader)
	hostSigner, _ := ssh.NewSignerFromKey(hostPriv)
	userPub, userPriv, _ := ed25519.GenerateKey(rand.Reader)
	userSSHPub, _ := ssh.NewPublicKey(userPub)
	block, err := ssh.MarshalPrivateKey(userPriv, "test")
	if err != nil {
		t.Fatal(err)
	}
	g := &gitServer{hostKey: hostSigner.PublicKey(), keyFile: filepath.Join(t.TempDir(), "id_ed25519")}
	g.keyBytes = pem.EncodeToMemory(block)
	os.WriteFile(g.keyFile, g.keyBytes, 0o600)

	cfg := &ssh.ServerConfig{PublicKeyCallback: func(c ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
		if string(k.Marshal()) == string(userSSHPub.Marshal()) {
			return nil, nil
		}
		return nil, fmt.Errorf("unknown key")
	}}
	cfg.AddHostKey(hostSigner)
	ln := testutil.Listen(t, "tcp", "127.0.0.1:0")
	g.port = ln.Addr().(*net.TCPAddr).Port
	testutil.Serve(t, ln, func(c net.Conn) { g.serve(c, cfg, repoDir) })
	return g
}

func (g *gitServer) serve(c net.Conn, cfg *ssh.ServerConfig, repoDir string) {
	sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	g.mu.Lock()
	g.users = append(g.users, sc.User())
	g.mu.Unlock()
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		ch, chReqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go func() {
			defer ch.Close()
			for req := range chReqs {
				g.mu.Lock()
				g.seen = append(g.seen, req.Type)
				g.mu.Unlock()
				if req.Type != "exec" {
					req.Reply(false, nil)
					continue
				}
				var payload struct{ Command string }
				ssh.Unmarshal(req.Payload, &payload)
				g.mu.Lock()
				g.commands = append(g.commands, payload.Command)
				g.mu.Unlock()
				fields := strings.Fields(payload.Command)
				if len(fields) != 2 || (fields[0] != "git-upload-pack" && fields[0] != "git-receive-pack") {
					req.Reply(false, nil)
					return
				}
				req.Reply(true, nil)
				cmd := exec.Command(fields[0], repoDir)
				cmd.Stdin, cmd.Stdout, cmd.Stderr = ch, ch, ch.Stderr()
				status := 0
				if err := cmd.Run(); err != nil {
					status = 1
				}
				ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(status)}))
				return
			}
		}()
	}
}

// gitImage is one home, for the whole package, holding an image with git
// and an ssh client (tagged gitssh:latest); the tests that need them share
// it (one after the other, each stopping its supervisor).
var gitImage struct {
	once    sync.Once
	home    layout.Home
	cleanup func()
	err     error
}

func gitHome(t *testing.T) layout.Home {
	t.Helper()
	gitImage.once.Do(func() {
		var skip string
		gitImage.home, gitImage.cleanup, skip, gitImage.err = testenv.NewPrivateHome()
		if skip != "" {
			gitImage.err = fmt.Errorf("skip: %s", skip)
			return
		}
		if gitImage.err == nil {
			gitImage.err = buildTestImage(gitImage.home, "gitssh:latest")
		}
	})
	if gitImage.err != nil {
		if strings.HasPrefix(gitImage.err.Error(), "skip: ") {
			t.Skip(gitImage.err)
		}
		t.Fatal(gitImage.err)
	}
	return gitImage.home
}

// buildTestImage builds an image with git and an ssh client, tagged tag.
func buildTestImage(home layout.Home, tag string) error {
	dir, err := os.MkdirTemp("", "gdimg")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	agent := filepath.Join(dir, "gondolin-agent")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", agent, "../gondolin-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build agent: %v: %s", err, out)
	}
	cfg := filepath.Join(dir, "image.json")
	os.WriteFile(cfg, []byte(`{"packages": ["git", "openssh-client"]}`), 0o644)
	cmd := exec.Command(gondolinBin, "image", "build", "--config", cfg, "--tag", tag, "--agent", agent)
	cmd.Env = append(os.Environ(), layout.EnvHome+"="+string(home))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("image build: %v: %s", err, out)
	}
	return nil
}

// TestSSHAndIngress: git over SSH with the key on the host only, the
// refusals, ingress to a guest web and WebSocket server, and --ssh login.
func TestSSHAndIngress(t *testing.T) {
	home := gitHome(t)
	t.Cleanup(func() { stopSupervisor(t, home) })

	repo := filepath.Join(t.TempDir(), "repo.git")
	work := t.TempDir()
	for _, args := range [][]string{
		{"-c", "init.defaultBranch=main", "init", "-q", "--bare", repo},
		{"-C", work, "init", "-q"},
		{"-C", work, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "first"},
		{"-C", work, "push", "-q", repo, "HEAD:refs/heads/main"},
	} {
		if out, err := exec.Command("git", args...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v: %s", args, err, out)
		}
	}
	os.WriteFile(filepath.Join(work, "README"), []byte("cloned over ssh\n"), 0o644)
	exec.Command("git", "-C", work, "add", "README").Run()
	exec.Command("git", "-C", work, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "readme").Run()
	exec.Command("git", "-C", work, "push", "-q", repo, "HEAD:refs/heads/main").Run()

	srv := newGitServer(t, repo)
	knownHosts := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(knownHosts, []byte(fmt.Sprintf("[git.test]:%d %s", srv.port, ssh.MarshalAuthorizedKey(srv.hostKey))), 0o644)
	wrongKnown := filepath.Join(t.TempDir(), "wrong_known_hosts")
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	otherSigner, _ := ssh.NewSignerFromKey(otherPriv)
	os.WriteFile(wrongKnown, []byte(fmt.Sprintf("[git.test]:%d %s", srv.port, ssh.MarshalAuthorizedKey(otherSigner.PublicKey()))), 0o644)

	sshFlags := func(known string) []string {
		return []string{"--image", "gitssh:latest",
			"--ssh-allow-host", fmt.Sprintf("git.test:%d", srv.port), "--ssh-known-hosts", known,
			"--ssh-credential", fmt.Sprintf("git@git.test:%d=%s", srv.port, srv.keyFile),
			"--resolve", "git.test=127.0.0.1", "--resolve", "other.test=127.0.0.1", "--allow-internal", "127.0.0.1/32"}
	}
	url := fmt.Sprintf("ssh://git@git.test:%d/org/repo.git", srv.port)
	guestSSH := "ssh -o BatchMode=yes -p " + fmt.Sprint(srv.port)

	t.Run("git clone over ssh works with the key on the host", func(t *testing.T) {
		out := mustRun(t, home, append(append([]string{"exec"}, sshFlags(knownHosts)...), "--", "sh", "-c",
			"GIT_SSH_COMMAND='ssh -o BatchMode=yes' git clone -q "+url+" /tmp/repo && cat /tmp/repo/README && "+
				"grep -rlI -e 'OPENSSH PRIVATE KEY' -e 'PRIVATE KEY-----' /root /etc /tmp /home 2>/dev/null | wc -l")...)
		if out != "cloned over ssh\n0" {
			t.Fatalf("clone: %q", out)
		}
	})
	t.Run("refused: unknown host key, other host, shell", func(t *testing.T) {
		r := gondolin(t, home, "", append(append([]string{"exec"}, sshFlags(wrongKnown)...), "--", "sh", "-c",
			"GIT_SSH_COMMAND='ssh -o BatchMode=yes' git clone -q "+url+" /tmp/r2")...)
		if r.code == 0 || !strings.Contains(strings.ToLower(r.stderr), "host key") {
			t.Fatalf("unknown host key: %+v", r)
		}
		r = gondolin(t, home, "", append(append([]string{"exec"}, sshFlags(knownHosts)...), "--", "sh", "-c",
			guestSSH+" git@other.test git-upload-pack x; echo rc=$?")...)
		if !strings.Contains(r.stdout, "rc=255") {
			t.Fatalf("other host: %+v", r)
		}
		r = gondolin(t, home, "", append(append([]string{"exec"}, sshFlags(knownHosts)...), "--", "sh", "-c",
			guestSSH+" -tt git@git.test </dev/null; echo rc=$?")...)
		if strings.Contains(r.stdout, "rc=0") {
			t.Fatalf("interactive shell was allowed: %+v", r)
		}
		srv.mu.Lock()
		defer srv.mu.Unlock()
		for _, req := range srv.seen {
			if req == "shell" || req == "pty-req" {
				t.Fatalf("the upstream saw a %s request", req)
			}
		}
	})

	t.Run("ingress serves a guest web and WebSocket server", func(t *testing.T) {
		echo := filepath.Join(t.TempDir(), "wsecho")
		build := exec.Command("go", "build", "-o", echo, "./testdata/wsecho")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build wsecho: %v: %s", err, out)
		}
		mustRun(t, home, "bash", "--detach", "--keep", "--name", "web", "--listen", "127.0.0.1:0=8000", "--ssh", "--", "sleep", "100000")
		bin, _ := os.ReadFile(echo)
		if r := gondolin(t, home, string(bin), "exec", "--session", "web", "--", "sh", "-c",
			"cat > /tmp/wsecho && chmod +x /tmp/wsecho && (/tmp/wsecho 8000 >/tmp/ws.log 2>&1 &) && sleep 1"); r.code != 0 {
			t.Fatalf("start wsecho: %+v", r)
		}
		s := listSessions(t, home)["web"]
		if len(s.Ingress) != 1 {
			t.Fatalf("routes: %+v", s.Ingress)
		}
		base := strings.TrimSuffix(s.Ingress[0].URL(), "/")
		var body string
		testutil.WaitFor(t, 30*time.Second, "an answer through the ingress route", func() bool {
			resp, err := http.Get(base + "/hello")
			if err != nil {
				return false
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			return resp.StatusCode == 200
		})
		if !strings.Contains(body, "hello from the guest") {
			t.Fatalf("ingress body %q", body)
		}
		ws, err := websocket.Dial(strings.Replace(base, "http://", "ws://", 1)+"/echo", "", base)
		if err != nil {
			t.Fatalf("websocket through ingress: %v", err)
		}
		websocket.Message.Send(ws, "ping over ingress")
		var back string
		websocket.Message.Receive(ws, &back)
		ws.Close()
		if back != "ping over ingress" {
			t.Fatalf("echo %q", back)
		}

		// A route that refuses WebSockets still serves HTTP.
		noWS := strings.Fields(mustRun(t, home, "ingress", "web", "add", "--disable-websockets", "127.0.0.1:0=8000"))[0]
		noWSBase := strings.TrimSuffix(noWS, "/")
		if resp, err := http.Get(noWSBase + "/hello"); err != nil || resp.StatusCode != 200 {
			t.Fatalf("route without websockets: %v", err)
		}
		if _, err := websocket.Dial(strings.Replace(noWSBase, "http://", "ws://", 1)+"/echo", "", noWSBase); err == nil {
			t.Fatal("a WebSocket went through a route that disables them")
		}

		// A route added and removed on the running session.
		out := mustRun(t, home, "ingress", "web", "add", "127.0.0.1:0=8000")
		added := strings.Fields(out)[0]
		if resp, err := http.Get(strings.TrimSuffix(added, "/") + "/hello"); err != nil || resp.StatusCode != 200 {
			t.Fatalf("live route: %v", err)
		}
		listen := strings.TrimSuffix(strings.TrimPrefix(added, "http://"), "/")
		mustRun(t, home, "ingress", "web", "rm", listen)
		if _, err := http.Get(added + "hello"); err == nil {
			t.Fatal("removed route still answers")
		}

		// --ssh: log in with the printed command and run something.
		cmdline := listSessions(t, home)["web"].SSHCommand
		if cmdline == "" {
			t.Fatal("no ssh command")
		}
		sshOut, err := exec.Command("sh", "-c", cmdline+` -o BatchMode=yes -- 'echo logged-in-as-$USER $(hostname)'`).CombinedOutput()
		if err != nil || !strings.Contains(string(sshOut), "logged-in-as-root web") {
			t.Fatalf("ssh login: %v: %s", err, sshOut)
		}
	})
}
