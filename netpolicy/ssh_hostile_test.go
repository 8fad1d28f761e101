package netpolicy

import (
	"crypto/ed25519"
	"crypto/rand"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// TestSSHEgressHostile is written from the guest's side: a root guest
// that may reach git.corp over SSH for git tries to turn the proxy into
// a shell on the upstream, a pivot into the upstream's network, or a
// login as another user with the host's keys. Each attempt must end at
// the proxy, with nothing but git's commands and the rule's login name
// reaching the upstream.
func TestSSHEgressHostile(t *testing.T) {
	keyPath, _, pub := sshKeyFile(t, "")
	_, agentPriv, _ := ed25519.GenerateKey(rand.Reader)
	agentPub, _ := ssh.NewPublicKey(agentPriv.Public())
	up := newSSHUpstream(t, pub, agentPub)
	addr := up.addr("github.test")

	p := up.policy(t)
	p.SSHCredentials = []SSHCredential{{User: "git", Host: "github.test", Port: up.port(), Key: keyPath}}
	n := newTestNetwork(t, p)
	g := newTestGuest(t, n)
	cl, err := guestSSH(t, g, n, addr, "git")
	if err != nil {
		t.Fatal(err)
	}

	t.Run("commands", func(t *testing.T) {
		for _, cmd := range []string{
			"sh -i",
			"sh -c id",
			"nc 10.0.0.5 5432",
			"git-upload-pack 'org/repo'; sh",
			"git-upload-pack 'org/repo' && sh",
			"git-upload-pack 'org/repo'\nsh",
			"git-upload-pack 'org/repo'|sh",
			"git-upload-pack `sh`",
			"git-upload-pack $(sh)",
			"git-upload-pack --upload-pack=x repo",
			"git-upload-pack '--upload-pack=x'",
			"git-upload-pack 'org/repo' extra",
			"git-upload-pack 'org/repo\x00'",
			"git-upload-pack",
			"git upload-pack 'org/repo'",
			"/usr/bin/git-upload-pack 'org/repo'",
			"GIT_DIR=/ git-upload-pack 'org/repo'",
		} {
			t.Run(strconv.Quote(cmd), func(t *testing.T) {
				_, _, before, _, _ := up.seen()
				out, stderr, code, err := run(cl, cmd)
				if err != nil || code == 0 || out != "" || !strings.Contains(stderr, "gondolin: ") {
					t.Errorf("out %q stderr %q code %d err %v; want a refusal from the proxy", out, stderr, code, err)
				}
				if _, _, after, _, _ := up.seen(); len(after) != len(before) {
					t.Errorf("the upstream ran %q", after[len(before):])
				}
				ev, ok := findEvent(n, func(e Event) bool { return e.Proto == "ssh" && e.Method == "exec" })
				if !ok || ev.Action != Blocked || ev.User != "git" {
					t.Errorf("event %+v", ev)
				}
			})
		}
	})
	t.Run("git still passes", func(t *testing.T) {
		out, _, code, err := run(cl, "git-upload-pack 'org/repo'")
		if err != nil || code != 0 || out != fakePack {
			t.Fatalf("out %q code %d err %v", out, code, err)
		}
	})
	t.Run("another login name", func(t *testing.T) {
		for _, user := range []string{"root", "admin", "git\x00", "git ", "Git", ""} {
			t.Run(strconv.Quote(user), func(t *testing.T) {
				before, _, _, _, _ := up.seen()
				cl2, err := guestSSH(t, g, n, addr, user)
				if err != nil {
					t.Fatal(err)
				}
				if _, _, _, err := run(cl2, "git-upload-pack 'org/repo'"); err == nil || !strings.Contains(err.Error(), "as git") {
					t.Errorf("session: %v, want a refusal naming the login git", err)
				}
				if after, _, _, _, _ := up.seen(); len(after) != len(before) {
					t.Errorf("upstream logins %q", after[len(before):])
				}
			})
		}
	})
}

// With only the host's agent to log in with, a guest that asks for
// another user must not get the agent's keys offered as that user.
func TestSSHEgressHostileAgentUser(t *testing.T) {
	_, agentPriv, _ := ed25519.GenerateKey(rand.Reader)
	agentPub, _ := ssh.NewPublicKey(agentPriv.Public())
	up := newSSHUpstream(t, agentPub)
	p := up.policy(t)
	p.SSHAgent = testAgent(t, agentPriv)
	n := newTestNetwork(t, p)
	g := newTestGuest(t, n)
	addr := up.addr("github.test")

	for _, user := range []string{"deploy", "root", "ubuntu"} {
		cl, err := guestSSH(t, g, n, addr, user)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := run(cl, "git-upload-pack 'org/repo'"); err == nil {
			t.Errorf("%s: session opened", user)
		}
		ev, ok := findEvent(n, func(e Event) bool { return e.Proto == "ssh" && e.Method == "connect" })
		if !ok || ev.Action != Blocked {
			t.Errorf("%s: event %+v", user, ev)
		}
	}
	logins, _, _, _, _ := up.seen()
	if len(logins) != 0 {
		t.Fatalf("the agent's key was offered upstream: %q", logins)
	}
	// The rule's own login name still gets the agent's keys.
	cl, err := guestSSH(t, g, n, addr, "git")
	if err != nil {
		t.Fatal(err)
	}
	if out, _, code, err := run(cl, "git-upload-pack 'org/repo'"); err != nil || code != 0 || out != fakePack {
		t.Fatalf("git login: %q %d %v", out, code, err)
	}
	logins, _, _, _, _ = up.seen()
	if !slices.Equal(logins, []string{"git " + ssh.FingerprintSHA256(agentPub)}) {
		t.Errorf("upstream logins %q", logins)
	}
}
