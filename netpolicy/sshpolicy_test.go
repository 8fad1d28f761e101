package netpolicy

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gondolin/gondolin/internal/errdefs"
)

func TestParseSSHHost(t *testing.T) {
	for in, want := range map[string]SSHHost{
		"github.com":               {Host: "github.com", Port: 22},
		"GitHub.com.":              {Host: "github.com", Port: 22},
		"*.example.com:2222":       {Host: "*.example.com", Port: 2222},
		"ssh.github.com:443":       {Host: "ssh.github.com", Port: 443},
		"10.1.2.3":                 {Host: "10.1.2.3", Port: 22},
		"[::1]:2200":               {Host: "::1", Port: 2200},
		"2001:db8::1":              {Host: "2001:db8::1", Port: 22},
		"gitlab.internal.corp":     {Host: "gitlab.internal.corp", Port: 22},
		"git-server_1.lan:2022":    {Host: "git-server_1.lan", Port: 2022},
		"deploy@git.corp":          {User: "deploy", Host: "git.corp", Port: 22},
		"git@[::1]:2200":           {User: "git", Host: "::1", Port: 2200},
		"svc.ci@*.corp.example:22": {User: "svc.ci", Host: "*.corp.example", Port: 22},
	} {
		got, err := ParseSSHHost(in)
		if err != nil || got != want {
			t.Errorf("ParseSSHHost(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		want.AnyCommand = true
		if got, err := ParseSSHExecHost(in); err != nil || got != want {
			t.Errorf("ParseSSHExecHost(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "a b", "host:0", "host:x", "host:70000", "ssh://host", "host/path", ":22",
		"@host", "a b@host", "a@b@host", "us:er@host", "user\x00@host", "user@", strings.Repeat("u", 65) + "@host"} {
		if _, err := ParseSSHHost(bad); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "--ssh-allow-host") {
			t.Errorf("ParseSSHHost(%q) err = %v", bad, err)
		}
		if h, err := ParseSSHExecHost(bad); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "--ssh-allow-exec") || h.AnyCommand {
			t.Errorf("ParseSSHExecHost(%q) = %+v, %v", bad, h, err)
		}
	}
}

func TestParseSSHCredential(t *testing.T) {
	env := map[string]string{"KP": "correct horse"}
	getenv := func(k string) string { return env[k] }
	home, _ := os.UserHomeDir()
	tests := []struct {
		in      string
		want    SSHCredential
		pass    string
		wantErr string
	}{
		{in: "git@github.com=/keys/id", want: SSHCredential{User: "git", Host: "github.com", Port: 22, Key: "/keys/id"}},
		{in: "*.corp:2222=~/.ssh/id_ed25519,passphrase-env=KP", want: SSHCredential{Host: "*.corp", Port: 2222, Key: filepath.Join(home, ".ssh/id_ed25519"), PassphraseEnv: "KP"}, pass: "correct horse"},
		{in: "h=/a,b/key", want: SSHCredential{Host: "h", Port: 22, Key: "/a,b/key"}},
		{in: "github.com", wantErr: "want [USER@]HOST"},
		{in: "github.com=", wantErr: "want [USER@]HOST"},
		{in: "a b@h=/k", wantErr: "bad user name"},
		{in: "@h=/k", wantErr: "bad user name"},
		{in: "h:0=/k", wantErr: "bad port"},
		{in: "h=/k,passphrase-env=NOPE", wantErr: "NOPE is not set"},
		{in: "h=/k,passphrase-env=1X", wantErr: "not a variable name"},
		{in: "h=,passphrase-env=KP", wantErr: "empty key path"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			c, err := ParseSSHCredential(tt.in, getenv)
			if tt.wantErr != "" {
				if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "correct horse") {
					t.Error("error holds the passphrase")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			pass := c.Passphrase.Reveal()
			c.Passphrase = SecretValue{}
			if c != tt.want || pass != tt.pass {
				t.Errorf("= %+v (passphrase %q), want %+v", c, pass, tt.want)
			}
		})
	}
}

func TestSSHFlagsPolicy(t *testing.T) {
	plainKey, _, _ := sshKeyFile(t, "")
	encKey, _, _ := sshKeyFile(t, "s3cret-passphrase")
	up := newSSHUpstream(t)
	kh := writeFile(t, up.knownHostsLine("github.com")+"\n")
	_, agentKey, _ := ed25519.GenerateKey(rand.Reader)
	sock := testAgent(t, agentKey)
	env := map[string]string{"SSH_AUTH_SOCK": sock, "KP": "s3cret-passphrase", "BAD": "wrong"}
	getenv := func(k string) string { return env[k] }

	f := Flags{
		SSHAllowHost:  []string{"github.com", "*.corp.example:2222", "github.com"},
		SSHAllowExec:  []string{"ci@build.example"},
		SSHAgent:      SSHAgentFromEnv,
		SSHKnownHosts: []string{kh},
		SSHCredential: []string{"git@github.com=" + plainKey, "*.corp.example:2222=" + encKey + ",passphrase-env=KP"},
	}
	p, err := f.Policy(getenv)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(p.SSHAllow) != "[github.com:22 *.corp.example:2222 github.com:22 ci@build.example:22]" || !p.SSHAllow[3].AnyCommand || p.SSHAllow[0].AnyCommand || p.SSHAgent != sock || len(p.SSHCredentials) != 2 {
		t.Fatalf("policy %+v", p)
	}
	if got := p.sshCredentials("git", "a.corp.example", 2222); len(got) != 1 || got[0].Key != encKey {
		t.Errorf("credentials for a.corp.example: %+v", got)
	}
	if got := p.sshCredentials("root", "github.com", 22); len(got) != 0 {
		t.Errorf("git@ credential applies to root: %+v", got)
	}

	// The passphrase never serialises; it travels apart and comes back.
	b, _ := json.Marshal(p)
	if strings.Contains(string(b), "s3cret-passphrase") || !strings.Contains(string(b), `"passphrase_env":"KP"`) {
		t.Fatalf("JSON %s", b)
	}
	var q Policy
	if err := json.Unmarshal(b, &q); err != nil {
		t.Fatal(err)
	}
	if err := q.Validate(); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(q.MissingSSHPassphrases()) != "[*.corp.example:2222]" {
		t.Errorf("missing %v", q.MissingSSHPassphrases())
	}
	if err := q.CheckSSHFiles(); err == nil || !strings.Contains(err.Error(), "passphrase (from $KP) is not known") {
		t.Errorf("CheckSSHFiles without passphrase: %v", err)
	}
	if err := q.SetSSHPassphrases(p.SSHPassphrases()); err != nil {
		t.Fatal(err)
	}
	if len(q.MissingSSHPassphrases()) != 0 || q.CheckSSHFiles() != nil {
		t.Errorf("after SetSSHPassphrases: %v %v", q.MissingSSHPassphrases(), q.CheckSSHFiles())
	}
	if err := q.SetSSHPassphrases(map[string]string{"nope:22": "x"}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("passphrase for an unknown credential: %v", err)
	}
	for _, s := range []string{fmt.Sprint(p), fmt.Sprintf("%+v", p), fmt.Sprintf("%#v", p), p.SSHCredentials[1].String()} {
		if strings.Contains(s, "s3cret-passphrase") {
			t.Errorf("passphrase printed: %s", s)
		}
	}

	base := Flags{SSHAllowHost: []string{"github.com"}, SSHKnownHosts: []string{kh}, SSHCredential: []string{"github.com=" + plainKey}}
	with := func(edit func(*Flags)) Flags {
		f := base
		edit(&f)
		return f
	}
	bad := []struct {
		f    Flags
		want string
	}{
		{with(func(f *Flags) { f.SSHKnownHosts = nil }), "needs --ssh-known-hosts"},
		{with(func(f *Flags) { f.SSHCredential = nil }), "needs --ssh-agent or --ssh-credential"},
		{with(func(f *Flags) { f.SSHKnownHosts = []string{"/nonexistent/known_hosts"} }), "--ssh-known-hosts"},
		{with(func(f *Flags) { f.SSHCredential = []string{"github.com=/nonexistent/key"} }), "github.com:22: read key: no such file"},
		{with(func(f *Flags) { f.SSHCredential = []string{"github.com=" + kh} }), "not a usable private key"},
		{with(func(f *Flags) { f.SSHCredential = []string{"github.com=" + encKey} }), "add ,passphrase-env=VAR"},
		{with(func(f *Flags) { f.SSHCredential = []string{"github.com=" + encKey + ",passphrase-env=BAD"} }), "wrong passphrase"},
		{with(func(f *Flags) { f.SSHCredential = []string{"h=" + plainKey, "h:22=" + encKey} }), "given twice"},
		{with(func(f *Flags) { f.SSHAgent = kh }), "no agent socket there"},
		{with(func(f *Flags) { f.SSHAllowHost = []string{"bad host"} }), "--ssh-allow-host"},
		{with(func(f *Flags) { f.SSHAllowExec = []string{"bad@user@host"} }), "--ssh-allow-exec"},
		{with(func(f *Flags) { f.SSHAllowExec = []string{"github.com"} }), "--ssh-allow-host github.com:22 and --ssh-allow-exec github.com:22 name the same destination"},
		{with(func(f *Flags) { f.SSHAllowHost = []string{"github.com", "me@github.com:22"} }), "name the same destination"},
	}
	for _, tt := range bad {
		_, err := tt.f.Policy(getenv)
		if err == nil || !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: err = %v, want %q", tt.f, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("error is not one line: %q", err)
		}
	}
	noSock := func(string) string { return "" }
	if _, err := with(func(f *Flags) { f.SSHAgent = SSHAgentFromEnv; f.SSHCredential = nil }).Policy(noSock); err == nil || !strings.Contains(err.Error(), "SSH_AUTH_SOCK is not set") {
		t.Errorf("agent without SSH_AUTH_SOCK: %v", err)
	}
}

func TestSSHRule(t *testing.T) {
	p := Policy{
		SSHAllow: []SSHHost{
			{Host: "github.com", Port: 22}, {Host: "*.corp.example", Port: 2222}, {Host: "*", Port: 22},
			{User: "ci", Host: "build.example", Port: 22, AnyCommand: true},
		},
		Deny: []string{"evil.example", "*.corp.example"},
	}
	for _, tt := range []struct {
		host string
		port uint16
		rule string
		ok   bool
	}{
		{"github.com", 22, "ssh-allow github.com:22", true},
		{"github.com", 443, "", false},
		{"git.corp.example", 2222, "deny *.corp.example", false}, // a tie: deny wins
		{"evil.example", 22, "deny evil.example", false},         // more specific than *
		{"other.example", 22, "ssh-allow *:22", true},
		{"build.example", 22, "ssh-allow-exec ci@build.example:22", true},
	} {
		h, rule, ok := p.sshRule(tt.host, tt.port)
		if rule != tt.rule || ok != tt.ok || (ok && !MatchHost(h.Host, tt.host)) {
			t.Errorf("sshRule(%s, %d) = %+v %q %v, want %q %v", tt.host, tt.port, h, rule, ok, tt.rule, tt.ok)
		}
	}
}

// The upstream login name is the host's choice: the rule's user, else the
// most specific matching credential's, else git.
func TestSSHLogin(t *testing.T) {
	p := Policy{SSHCredentials: []SSHCredential{
		{Host: "*", Port: 22, Key: "/k0"},
		{User: "alice", Host: "*.corp", Port: 22, Key: "/k1"},
		{User: "bob", Host: "git.corp", Port: 22, Key: "/k2"},
		{User: "carol", Host: "git.corp", Port: 22, Key: "/k3"},
		{User: "dave", Host: "git.corp", Port: 2222, Key: "/k4"},
	}}
	for _, tt := range []struct {
		rule SSHHost
		host string
		port uint16
		want string
	}{
		{SSHHost{Host: "github.com", Port: 22}, "github.com", 22, "git"},
		{SSHHost{Host: "*.corp", Port: 22}, "wiki.corp", 22, "alice"},
		{SSHHost{Host: "*.corp", Port: 22}, "git.corp", 22, "bob"}, // most specific, first on a tie
		{SSHHost{Host: "git.corp", Port: 2222}, "git.corp", 2222, "dave"},
		{SSHHost{User: "deploy", Host: "*.corp", Port: 22}, "git.corp", 22, "deploy"},
	} {
		if got := p.sshLogin(tt.rule, tt.host, tt.port); got != tt.want {
			t.Errorf("sshLogin(%+v, %s:%d) = %q, want %q", tt.rule, tt.host, tt.port, got, tt.want)
		}
	}
}
