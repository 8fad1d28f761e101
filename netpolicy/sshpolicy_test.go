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
)

func TestParseSSHHost(t *testing.T) {
	for in, want := range map[string]SSHHost{
		"github.com":            {"github.com", 22},
		"GitHub.com.":           {"github.com", 22},
		"*.example.com:2222":    {"*.example.com", 2222},
		"ssh.github.com:443":    {"ssh.github.com", 443},
		"10.1.2.3":              {"10.1.2.3", 22},
		"[::1]:2200":            {"::1", 2200},
		"2001:db8::1":           {"2001:db8::1", 22},
		"gitlab.internal.corp":  {"gitlab.internal.corp", 22},
		"git-server_1.lan:2022": {"git-server_1.lan", 2022},
	} {
		got, err := ParseSSHHost(in)
		if err != nil || got != want {
			t.Errorf("ParseSSHHost(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "a b", "host:0", "host:x", "host:70000", "ssh://host", "host/path", ":22", "user@host"} {
		if _, err := ParseSSHHost(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseSSHHost(%q) err = %v", bad, err)
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
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
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
		SSHAllowHost:  []string{"github.com", "*.corp.example:2222"},
		SSHAgent:      SSHAgentFromEnv,
		SSHKnownHosts: []string{kh},
		SSHCredential: []string{"git@github.com=" + plainKey, "*.corp.example:2222=" + encKey + ",passphrase-env=KP"},
	}
	p, err := f.Policy(getenv)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(p.SSHAllow) != "[github.com:22 *.corp.example:2222]" || p.SSHAgent != sock || len(p.SSHCredentials) != 2 {
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
	if err := q.SetSSHPassphrases(map[string]string{"nope:22": "x"}); !errors.Is(err, ErrInvalid) {
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
	}
	for _, tt := range bad {
		_, err := tt.f.Policy(getenv)
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
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
		SSHAllow: []SSHHost{{"github.com", 22}, {"*.corp.example", 2222}, {"*", 22}},
		Deny:     []string{"evil.example", "*.corp.example"},
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
	} {
		rule, ok := p.sshRule(tt.host, tt.port)
		if rule != tt.rule || ok != tt.ok {
			t.Errorf("sshRule(%s, %d) = %q %v, want %q %v", tt.host, tt.port, rule, ok, tt.rule, tt.ok)
		}
	}
}
