package netpolicy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/gondolin/gondolin/internal/testreq"
	"github.com/gondolin/gondolin/internal/testutil"
	"golang.org/x/crypto/ssh"
)

// TestSSHEgressOpenSSHGit runs the host's real OpenSSH client and git
// through the SSH proxy, as a guest's git would use them: the client
// reaches the guest stack through a ProxyCommand, so it believes it talks
// to github.test and checks the proxy's host certificate against the
// known_hosts line the guest gets. The upstream runs the real
// git-upload-pack and git-receive-pack on a bare repository.
func TestSSHEgressOpenSSHGit(t *testing.T) {
	if testing.Short() {
		t.Skip("runs ssh and git")
	}
	for _, tool := range []string{"ssh", "git", "git-upload-pack", "busybox"} {
		testreq.Tool(t, tool)
	}
	keyPath, _, pub := sshKeyFile(t, "")
	up := newSSHUpstream(t, pub)
	root := t.TempDir()
	up.serve = func(cmd string, env []string, ch ssh.Channel) int {
		prog, arg, _ := strings.Cut(cmd, " ")
		if prog != "git-upload-pack" && prog != "git-receive-pack" {
			fmt.Fprintf(ch.Stderr(), "%s: not allowed here\n", prog)
			return 127
		}
		c := exec.Command(prog, filepath.Join(root, strings.Trim(arg, "'")))
		c.Env = append(os.Environ(), env...)
		c.Stdin, c.Stdout, c.Stderr = ch, ch, ch.Stderr()
		if err := c.Run(); err != nil {
			fmt.Fprintln(ch.Stderr(), err)
			return 1
		}
		return 0
	}
	home := t.TempDir()
	gitEnv := []string{"HOME=" + home, "GIT_CONFIG_NOSYSTEM=1", "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@t",
		"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@t", "GIT_TERMINAL_PROMPT=0"}
	git := func(dir string, args ...string) (string, error) {
		c := exec.Command("git", args...)
		c.Dir = dir
		c.Env = append(os.Environ(), gitEnv...)
		out, err := c.CombinedOutput()
		return string(out), err
	}
	bare := filepath.Join(root, "org", "repo.git")
	seed := t.TempDir()
	for _, args := range [][]string{
		{"init", "-q", "--bare", bare},
		{"init", "-q", "-b", "main", seed},
		{"-C", seed, "commit", "-q", "--allow-empty", "-m", "first"},
		{"-C", seed, "push", "-q", bare, "main"},
	} {
		if out, err := git(root, args...); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	os.WriteFile(filepath.Join(seed, "README"), []byte("hello from upstream\n"), 0o644)
	if out, err := git(seed, "add", "README"); err != nil {
		t.Fatal(out)
	}
	if out, err := git(seed, "commit", "-q", "-m", "readme"); err != nil {
		t.Fatal(out)
	}
	if out, err := git(seed, "push", "-q", bare, "main"); err != nil {
		t.Fatal(out)
	}
	git(bare, "symbolic-ref", "HEAD", "refs/heads/main")

	p := up.policy(t)
	p.SSHCredentials = []SSHCredential{{User: "git", Host: "github.test", Port: up.port(), Key: keyPath}}
	n := newTestNetwork(t, p)
	g := newTestGuest(t, n)
	port := strconv.Itoa(int(up.port()))

	// The bridge: each ProxyCommand connection becomes a guest
	// connection to github.test:PORT.
	bridge := testutil.Listen(t, "tcp", "127.0.0.1:0")
	testutil.Serve(t, bridge, func(c net.Conn) {
		defer c.Close()
		gc, err := g.Dial(context.Background(), "github.test:"+port)
		if err != nil {
			return
		}
		defer gc.Close()
		go func() { io.Copy(gc, c); gc.Close() }()
		io.Copy(c, gc)
	})
	guestKnownHosts := writeFile(t, string(n.SSHKnownHosts()))
	sshCmd := fmt.Sprintf("ssh -F /dev/null -o UserKnownHostsFile=%s -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentityAgent=none -o \"ProxyCommand=busybox nc %s\"",
		guestKnownHosts, strings.Replace(bridge.Addr().String(), ":", " ", 1))
	gitEnv = append(gitEnv, "GIT_SSH_COMMAND="+sshCmd)
	url := "ssh://git@github.test:" + port + "/org/repo.git"
	work := filepath.Join(t.TempDir(), "clone")

	t.Run("clone", func(t *testing.T) {
		if out, err := git("/", "clone", "-q", url, work); err != nil {
			t.Fatalf("git clone: %v\n%s", err, out)
		}
		b, err := os.ReadFile(filepath.Join(work, "README"))
		if err != nil || string(b) != "hello from upstream\n" {
			t.Fatalf("README %q %v", b, err)
		}
	})
	t.Run("push", func(t *testing.T) {
		os.WriteFile(filepath.Join(work, "NEW"), []byte("from the guest\n"), 0o644)
		for _, args := range [][]string{{"add", "NEW"}, {"commit", "-q", "-m", "guest change"}, {"push", "-q", "origin", "main"}} {
			if out, err := git(work, args...); err != nil {
				t.Fatalf("git %v: %v\n%s", args, err, out)
			}
		}
		if out, err := git(bare, "log", "-1", "--format=%s", "main"); err != nil || strings.TrimSpace(out) != "guest change" {
			t.Fatalf("upstream head %q %v", out, err)
		}
		_, _, execs, env, _ := up.seen()
		if !strings.Contains(strings.Join(execs, "\n"), "git-receive-pack '/org/repo.git'") {
			t.Errorf("upstream execs %q", execs)
		}
		if !strings.Contains(strings.Join(env, " "), "GIT_PROTOCOL=version=2") {
			t.Errorf("git protocol v2 not passed: env %q", env)
		}
	})
	sshRun := func(args ...string) (string, int) {
		c := exec.Command("sh", append([]string{"-c", sshCmd + ` "$@"`, "ssh"}, args...)...)
		c.Env = append(os.Environ(), "HOME="+home)
		var stderr bytes.Buffer
		c.Stderr = &stderr
		err := c.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return stderr.String(), code
	}
	t.Run("interactive shell refused", func(t *testing.T) {
		stderr, code := sshRun("-p", port, "git@github.test")
		if code != 1 || !strings.Contains(stderr, "gondolin: interactive shells are not allowed") {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("port forwarding refused", func(t *testing.T) {
		stderr, code := sshRun("-p", port, "-o", "ExitOnForwardFailure=yes", "-W", "127.0.0.1:22", "git@github.test")
		if code == 0 || !strings.Contains(stderr, "port forwarding is not allowed") {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("commands other than git's refused", func(t *testing.T) {
		for _, cmd := range []string{"sh -c id", "nc 10.0.0.5 5432", "git-upload-pack '/org/repo.git'; id", "git-upload-pack --upload-pack=id /org/repo.git"} {
			_, _, before, _, _ := up.seen()
			stderr, code := sshRun("-p", port, "git@github.test", cmd)
			if code != 1 || !strings.Contains(stderr, "gondolin: command refused") {
				t.Errorf("%q: exit %d, stderr %q", cmd, code, stderr)
			}
			if _, _, after, _, _ := up.seen(); len(after) != len(before) {
				t.Errorf("%q: the upstream ran %q", cmd, after[len(before):])
			}
		}
	})
	t.Run("another login name refused", func(t *testing.T) {
		before, _, _, _, _ := up.seen()
		stderr, code := sshRun("-p", port, "root@github.test", "git-upload-pack", "'/org/repo.git'")
		if code != 255 || !strings.Contains(stderr, "logs in to github.test:"+port+" as git only") {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
		if after, _, _, _, _ := up.seen(); len(after) != len(before) {
			t.Errorf("upstream logins %q", after[len(before):])
		}
	})
	t.Run("a host not allowed is explained", func(t *testing.T) {
		if err := n.UpdatePolicy(func(p *Policy) error { p.SSHAllow[0].Host = "gitlab.test"; return nil }); err != nil {
			t.Fatal(err)
		}
		stderr, code := sshRun("-p", port, "git@github.test", "git-upload-pack", "'/org/repo.git'")
		if code != 255 || !strings.Contains(stderr, "SSH to github.test:"+port+" is not allowed") {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
	})
}
