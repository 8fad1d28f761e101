package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// TestHostileSSHEgress (issue 12, item 10): a root guest allowed git over
// SSH to git.test tries to run a shell command there, open a pivot into
// the upstream's network, and log in as root with the host's key (the
// credential names no user, so only the proxy stands between the guest's
// choice of name and the upstream). Each must end at the proxy with its
// explanation, and only git's command, as git, may reach the upstream.
// git clone itself is TestSSHAndIngress's; a git ls-remote here shows the
// same VM and policy still pass git.
func TestHostileSSHEgress(t *testing.T) {
	home := gitHome(t)
	t.Cleanup(func() { stopSupervisor(t, home) })

	repo := filepath.Join(t.TempDir(), "repo.git")
	if out, err := exec.Command("git", "init", "-q", "--bare", repo).CombinedOutput(); err != nil {
		t.Fatalf("git init: %v: %s", err, out)
	}
	srv := newGitServer(t, repo)
	knownHosts := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(knownHosts, []byte(fmt.Sprintf("[git.test]:%d %s", srv.port, ssh.MarshalAuthorizedKey(srv.hostKey))), 0o644)

	guestSSH := fmt.Sprintf("ssh -o BatchMode=yes -p %d", srv.port)
	script := strings.Join([]string{
		guestSSH + " git@git.test 'sh -c id'; echo rc-sh=$?",
		guestSSH + " git@git.test 'nc 10.0.0.5 5432'; echo rc-nc=$?",
		guestSSH + ` git@git.test "git-upload-pack '/org/repo.git'; id"; echo rc-semicolon=$?`,
		guestSSH + " git@git.test git-upload-pack --upload-pack=id /org/repo.git; echo rc-option=$?",
		guestSSH + ` root@git.test "git-upload-pack '/org/repo.git'"; echo rc-root=$?`,
		fmt.Sprintf("GIT_SSH_COMMAND='ssh -o BatchMode=yes' git ls-remote ssh://git@git.test:%d/org/repo.git; echo rc-git=$?", srv.port),
	}, "\n")
	r := gondolin(t, home, "", "exec", "--image", "gitssh:latest",
		"--ssh-allow-host", fmt.Sprintf("git.test:%d", srv.port), "--ssh-known-hosts", knownHosts,
		"--ssh-credential", fmt.Sprintf("git.test:%d=%s", srv.port, srv.keyFile),
		"--resolve", "git.test=127.0.0.1", "--allow-internal", "127.0.0.1/32",
		"--", "sh", "-c", script)
	t.Logf("guest stdout:\n%s\nguest stderr:\n%s", r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("exec: %+v", r)
	}
	for _, want := range []string{"rc-sh=1", "rc-nc=1", "rc-semicolon=1", "rc-option=1", "rc-root=255", "rc-git=0"} {
		if !strings.Contains(r.stdout, want+"\n") {
			t.Errorf("want %s in the guest's output", want)
		}
	}
	if n := strings.Count(r.stderr, "gondolin: command refused"); n != 4 {
		t.Errorf("%d commands refused by the proxy, want 4", n)
	}
	if !strings.Contains(r.stderr, fmt.Sprintf("logs in to git.test:%d as git only", srv.port)) {
		t.Error("the root login was not refused by the proxy")
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.users) == 0 || slices.ContainsFunc(srv.users, func(u string) bool { return u != "git" }) {
		t.Errorf("logins upstream %q, want git only", srv.users)
	}
	if !slices.Equal(srv.commands, []string{"git-upload-pack '/org/repo.git'"}) {
		t.Errorf("commands upstream %q, want only the ls-remote's", srv.commands)
	}
}
