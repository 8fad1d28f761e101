package contexts

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"go.uber.org/goleak"
)

func TestParseHost(t *testing.T) {
	tests := []struct {
		in   string
		want Target
		bad  bool
	}{
		{in: "ssh://build.example.com", want: Target{Host: "build.example.com"}},
		{in: "ssh://me@build:2222", want: Target{User: "me", Host: "build", Port: 2222}},
		{in: "ssh://me@[::1]:22", want: Target{User: "me", Host: "::1", Port: 22}},
		{in: "ssh://build/", want: Target{Host: "build"}},
		{in: "ssh://-oProxyCommand=touch%20x", bad: true},
		{in: "ssh://-host", bad: true},
		{in: "ssh://h;x", bad: true},
		{in: "ssh://ho$t", bad: true},
		{in: "ssh://ho%C2%A0st", bad: true},
		{in: "ssh://-l@host", bad: true},
		{in: "ssh://me:secret@host", bad: true},
		{in: "ssh://host:0", bad: true},
		{in: "ssh://host:99999", bad: true},
		{in: "ssh://host/path", bad: true},
		{in: "ssh://host?x=1", bad: true},
		{in: "http://host", bad: true},
		{in: "host", bad: true},
		{in: "", bad: true},
	}
	for _, tt := range tests {
		got, err := ParseHost(tt.in)
		if tt.bad {
			if err == nil || !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("ParseHost(%q) = %+v, %v; want an invalid error", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseHost(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestStore(t *testing.T) {
	home := layout.Home(t.TempDir())
	s := Open(home)
	sel := func(flag, env string) string {
		c, err := s.Selected(flag, func(string) string { return env })
		if err != nil {
			return "error: " + err.Error()
		}
		return c.Name
	}
	if got := sel("", ""); got != Default {
		t.Fatalf("an empty store selects %q", got)
	}
	if err := s.Create(Context{Name: "far", Host: "ssh://far"}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Context{{Name: "far", Host: "ssh://other"}, {Name: Default, Host: "ssh://x"}, {Name: "a/b", Host: "ssh://x"},
		{Name: "x", Host: "ftp://x"}, {Name: "x", Host: "ssh://x", Gondolin: "a\nb"}} {
		if err := s.Create(bad); err == nil {
			t.Errorf("Create(%+v) passed", bad)
		}
	}
	if err := s.Use("far"); err != nil {
		t.Fatal(err)
	}
	if got := sel("", ""); got != "far" {
		t.Errorf("after use far: %q", got)
	}
	if got := sel("", Default); got != Default {
		t.Errorf("the environment over the stored choice: %q", got)
	}
	if got := sel(Default, "far"); got != Default {
		t.Errorf("the flag over the environment: %q", got)
	}
	if got := sel("nope", ""); !strings.HasPrefix(got, "error: no context") {
		t.Errorf("an unknown context: %q", got)
	}
	if st, err := os.Stat(filepath.Join(string(home), "contexts.json")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("contexts.json: %v %v", st, err)
	}
	if err := s.Remove("far"); err != nil {
		t.Fatal(err)
	}
	if got := sel("", ""); got != Default {
		t.Errorf("removing the current context leaves %q", got)
	}
	if err := s.Remove(Default); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Remove(default): %v", err)
	}
	if err := s.Remove("far"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Remove of a removed one: %v", err)
	}
	// A damaged file is refused in one line, and left for the user.
	os.WriteFile(filepath.Join(string(home), "contexts.json"), []byte("{"), 0o600)
	if _, _, err := s.List(); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("a damaged file: %v", err)
	}
}

func TestCommand(t *testing.T) {
	t.Setenv(EnvSSHCommand, "")
	c := Context{Name: "far", Host: "ssh://me@far:2222", Gondolin: "/opt/my gondolin/bin/gondolin"}
	tgt, _ := ParseHost(c.Host)
	name, args := c.command(tgt, true)
	line := strings.Join(args, " ")
	if name != "ssh" || !strings.Contains(line, "-p 2222 -l me -- far '/opt/my gondolin/bin/gondolin' supervisor dial-stdio --no-start") {
		t.Errorf("%s %s", name, line)
	}
	t.Setenv(EnvSSHCommand, "ssh -i key")
	name, args = c.command(tgt, false)
	if name != "sh" || args[0] != "-c" || args[1] != `exec ssh -i key "$@"` || args[len(args)-1] != "'/opt/my gondolin/bin/gondolin' supervisor dial-stdio" {
		t.Errorf("with %s: %s %q", EnvSSHCommand, name, args)
	}
}

func TestShellLine(t *testing.T) {
	tests := []struct{ cmd, want string }{
		{"ssh -i key", `exec ssh -i key "$@"`},
		{"/usr/bin/ssh -F /dev/null", `exec /usr/bin/ssh -F /dev/null "$@"`},
		{"SSH_AUTH_SOCK=/a ssh", `SSH_AUTH_SOCK=/a ssh "$@"`},
		{"  X=1 ssh", `  X=1 ssh "$@"`},
		{"ssh -o User=me", `exec ssh -o User=me "$@"`},
	}
	for _, tt := range tests {
		if got := shellLine(tt.cmd); got != tt.want {
			t.Errorf("shellLine(%q) = %q, want %q", tt.cmd, got, tt.want)
		}
	}
}

func TestGreeting(t *testing.T) {
	c, tgt := Context{Name: "far"}, Target{Host: "far"}
	const sock, inst = "/home/me/.local/share/gondolin/supervisor.sock", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	tests := []struct {
		line, want string
		far        farSupervisor
	}{
		{strings.TrimSuffix(Greeting("v1.2.3", sock, inst), "\n"), "", farSupervisor{sock, inst}},
		{strings.TrimSuffix(Greeting("v1.2.3", "/odd:path/s.sock", inst), "\n"), "", farSupervisor{}},
		{strings.TrimSuffix(Greeting("v1.2.3", sock, ""), "\n"), "", farSupervisor{}},
		{"gondolin dial-stdio api=1 version=v socket=relative/s.sock instance=" + inst, "", farSupervisor{}},
		{"gondolin dial-stdio api=1 version=v socket=/a:b instance=" + inst, "", farSupervisor{}},
		{"gondolin dial-stdio api=1 version=v socket=" + sock + " instance=a\x1b]", "", farSupervisor{}},
		{"gondolin dial-stdio api=1 version=v", "", farSupervisor{}},
		{strings.TrimSuffix(GreetingError(errors.New("no supervisor is running")), "\n"), "on far: no supervisor is running", farSupervisor{}},
		{"gondolin dial-stdio api=9 version=v9", "speaks API 9", farSupervisor{}},
		{"Welcome to the far host!\x1b]52;c;eA==\x07", `answered "Welcome to the far host!\x1b]52;c;eA==\x07"`, farSupervisor{}},
	}
	for _, tt := range tests {
		far, err := checkGreeting(c, tgt, tt.line)
		if (err == nil) != (tt.want == "") || err != nil && !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: %v, want %q", tt.line, err, tt.want)
		}
		if far != tt.far {
			t.Errorf("%q: far %+v, want %+v", tt.line, far, tt.far)
		}
		if err != nil && strings.ContainsRune(err.Error(), 0x1b) {
			t.Errorf("%q: the error holds an escape", tt.line)
		}
	}
}

// TestDial runs Dial against stand-ins for ssh (GONDOLIN_SSH_COMMAND):
// one that carries bytes after its greeting, and ones that fail as ssh
// does, each told in one line.
func TestDial(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir := t.TempDir()
	t.Setenv("TMPDIR", shortDir(t)) // its control directory, not the machine's
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755)
		return p
	}
	c := Context{Name: "far", Host: "ssh://far"}

	t.Setenv(EnvSSHCommand, script("echo", `echo "gondolin dial-stdio api=1 version=t"; exec cat`))
	conn, err := c.Dial(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("read %q, %v", buf, err)
	}
	conn.Close()

	tests := []struct{ body, want string }{
		{`echo "Permission denied (publickey)." >&2; exit 255`, "authentication failed"},
		{`echo "ssh: connect to host far port 22: Connection refused" >&2; exit 255`, "far is unreachable: ssh: connect to host far port 22: Connection refused"},
		{`echo "sh: 1: gondolin: not found" >&2; exit 127`, "far has no gondolin"},
		{`echo 'gondolin: unknown command "dial-stdio" for gondolin supervisor' >&2; exit 2`, "too old for contexts"},
		{`echo "gondolin dial-stdio error: the supervisor did not start" ; exit 125`, "on far: the supervisor did not start"},
		{`exit 0`, "before gondolin answered"},
		{`echo "sh: 1: /opt/gondolin: Permission denied" >&2; exit 126`, "cannot be run"},
		{`echo "Warning: Identity file k not accessible: No such file or directory." >&2; echo "ssh: connect to host far port 22: Connection refused" >&2; exit 255`, "far is unreachable"},
		{`echo 'gondolin: supervisor takes no arguments, got "dial-stdio"' >&2; exit 2`, "too old for contexts"},
	}
	for i, tt := range tests {
		t.Setenv(EnvSSHCommand, script("fail"+strconv.Itoa(i), tt.body))
		_, err := c.Dial(context.Background(), false)
		if err == nil || !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want one line with %q", tt.body, err, tt.want)
		}
	}

	// A host that never answers is bounded by the caller's context, and
	// by the dial's own bound.
	t.Setenv(EnvSSHCommand, script("hang", "exec sleep 60"))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := c.Dial(ctx, false); err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Errorf("a host that hangs: %v", err)
	}
	func() {
		defer func(old time.Duration) { dialTimeout = old }(dialTimeout)
		dialTimeout = 200 * time.Millisecond
		if _, err := c.Dial(context.Background(), false); err == nil || !strings.Contains(err.Error(), "far did not answer in 200ms") {
			t.Errorf("a host that hangs, past the dial's bound: %v", err)
		}
	}()

	// Failures the lines above do not cover: an unknown host key, and a
	// greeting that never ends.
	for _, tt := range []struct{ body, want string }{
		{`echo "Host key verification failed." >&2; exit 255`, "not in known_hosts"},
		{`head -c 10000 /dev/zero | tr '\0' x; exec sleep 60`, "a line of over 4 KiB"},
	} {
		t.Setenv(EnvSSHCommand, script("more", tt.body))
		if _, err := c.Dial(context.Background(), false); err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want one line with %q", tt.body, err, tt.want)
		}
	}
}

// TestStoreConcurrent: contexts created at once all land.
func TestStoreConcurrent(t *testing.T) {
	s := Open(layout.Home(t.TempDir()))
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Create(Context{Name: "c" + strconv.Itoa(i), Host: "ssh://h"}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if list, _, _ := s.List(); len(list) != 21 {
		t.Errorf("%d contexts after 20 creates (and the default)", len(list))
	}
}
