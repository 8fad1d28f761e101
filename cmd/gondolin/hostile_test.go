package main

// The hostile-guest suite: each test is an attack, written as a script
// the guest runs as root, and checks what the host keeps (its secrets,
// its files, its other sessions, its availability, its user's terminal).
// `make hostile` runs every TestHostile* test; `make test` runs them too.

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testenv"
	"github.com/gondolin/gondolin/internal/testutil"
)

// hangLimit is how long a command may take before the test calls it hung.
// It is no timing check: a working command answers in a second or two,
// and a hung one never does.
const hangLimit = 90 * time.Second

// gondolinBounded runs gondolin like gondolin() but fails the test, rather
// than hanging it, when the command does not finish within hangLimit.
func gondolinBounded(t *testing.T, home layout.Home, args ...string) result {
	t.Helper()
	return gondolinWithin(t, hangLimit, home, "", args...)
}

// TestHostileSecretEcho (issue 12, item 1): an upstream that echoes the
// request (here: the path and the Authorization header, in its body)
// must not hand the secret's real value to the guest, in any form the
// host wrote it; and the value never goes into a URL.
func TestHostileSecretEcho(t *testing.T) {
	home := testenv.Home(t)
	up := newUpstream(t)
	withEnv(t, "SSL_CERT_FILE", up.caFile, "TOKEN", realToken)
	url := fmt.Sprintf("https://api.test:%d", up.port)
	script := `curl -sS -H "Authorization: Bearer $TOKEN" ` + url + `/bearer; ` +
		`curl -sS -u "me:$TOKEN" ` + url + `/basic; ` +
		`curl -sS -o /dev/null -w 'url:%{http_code}\n' "` + url + `/path-$TOKEN"`
	r := gondolin(t, home, "", "exec", "--allow-host", "api.test", "--host-secret", "TOKEN@api.test",
		"--resolve", "api.test=127.0.0.1", "--allow-internal", "127.0.0.1/32", "--", "sh", "-c", script)
	basicReal := base64.StdEncoding.EncodeToString([]byte("me:" + realToken))
	for _, leak := range []string{realToken, basicReal} {
		if strings.Contains(r.stdout+r.stderr, leak) {
			t.Fatalf("the guest read %q: %+v", leak, r)
		}
	}
	if !strings.Contains(r.stdout, "/bearer auth=Bearer GONDOLIN_SECRET_") || !strings.Contains(r.stdout, "/basic auth=Basic ") ||
		!strings.Contains(r.stdout, "url:403") {
		t.Fatalf("want both echoes with the placeholder and the URL refused: %+v", r)
	}
	// The upstream did get the real value, in the headers.
	seen := strings.Join(up.requests(), "\n")
	if !strings.Contains(seen, "/bearer Bearer "+realToken) || !strings.Contains(seen, "/basic Basic "+basicReal) {
		t.Fatalf("upstream saw %q", seen)
	}
	if strings.Contains(seen, "/path-") {
		t.Fatalf("a URL with the placeholder left the host: %q", seen)
	}
}

// TestHostileTerminal shares one session among attacks on the
// supervisor's availability and on the user's terminal.
func TestHostileTerminal(t *testing.T) {
	home := testenv.Home(t)
	t.Cleanup(func() { stopSupervisor(t, home) })
	r := gondolin(t, home, "", "bash", "--detach", "--keep", "--name", "hostile", "--allow-host", "api.test")
	if r.code != 0 {
		t.Fatalf("bash --detach: %+v", r)
	}
	inGuest := func(t *testing.T, script string) result {
		t.Helper()
		return gondolinBounded(t, home, "exec", "--session", "hostile", "--", "sh", "-c", script)
	}

	// Issue 12, item 7: a counted escape sequence that x/vt would run in
	// an unbounded loop, written to the session's own terminal, must not
	// stall the supervisor for anyone.
	t.Run("a counted escape sequence does not hang the supervisor", func(t *testing.T) {
		r := inGuest(t, `for p in /dev/pts/[0-9]*; do printf 'A\033[999999999b\033[999999999@\033[999999999L' > $p; done; echo sent`)
		if r.stdout != "sent\n" {
			t.Fatalf("attack: %+v", r)
		}
		for _, args := range [][]string{{"list"}, {"supervisor", "status"}, {"exec", "--session", "hostile", "--", "echo", "alive"}} {
			if r := gondolinBounded(t, home, args...); r.code != 0 {
				t.Fatalf("%v after the attack: %+v", args, r)
			}
		}
	})

	// Issue 12, item 9: the guest owns its serial console; the log of it
	// on the host is capped however much the guest writes.
	t.Run("the console log is capped", func(t *testing.T) {
		const written = 3 << 20
		r := inGuest(t, fmt.Sprintf(`head -c %d /dev/zero | tr '\0' x > /dev/ttyS0; echo done`, written))
		if r.stdout != "done\n" {
			t.Fatalf("attack: %+v", r)
		}
		id := listSessions(t, home)["hostile"].ID
		dir := home.Session(id)
		// The cap is checked once a second: give it time to act, and
		// to finish (the guest's serial port drains slowly).
		size := func(name string) int64 {
			st, err := os.Stat(filepath.Join(dir, name))
			if err != nil {
				return -1
			}
			return st.Size()
		}
		testutil.WaitFor(t, 60*time.Second, "the console log rotated, both parts under 1 MiB", func() bool {
			return size(layout.ConsoleLog) <= 1<<20 && size(layout.ConsoleLogOld) > 0 && size(layout.ConsoleLogOld) <= 1<<20
		})
		if _, err := os.Stat(filepath.Join(dir, layout.ConsoleLogOld)); err != nil {
			t.Fatalf("never rotated: %v", err)
		}
		if r := gondolinBounded(t, home, "logs", "hostile"); r.code != 0 || len(r.stdout) > 2<<20 || !strings.HasSuffix(strings.TrimRight(r.stdout, "\r\n"), "xxxx") {
			t.Fatalf("logs: code %d, %d bytes, stderr %q", r.code, len(r.stdout), r.stderr)
		}
	})

	// Issue 12, item 17: bytes the guest chose (a URL, a host name, its
	// console) reach the user's terminal escaped: an OSC 52 sequence
	// would write the user's clipboard, others retitle or repaint it.
	t.Run("guest bytes reach the user's terminal escaped", func(t *testing.T) {
		const osc52 = "\033]52;c;cHduZWQ=\007"
		hello := base64.StdEncoding.EncodeToString(clientHello("evil\033]52;c;cHduZWQ=\007.test"))
		r := inGuest(t, `echo `+hello+` | base64 -d | nc -w 3 evil.test 443 >/dev/null; `+
			`printf '\033]52;c;cHduZWQ=\007 console\n' > /dev/ttyS0; echo sent`)
		if r.stdout != "sent\n" {
			t.Fatalf("attack: %+v", r)
		}
		ev := gondolinBounded(t, home, "events", "hostile")
		if ev.code != 0 || !strings.Contains(ev.stdout, "evil") {
			t.Fatalf("events: %+v", ev)
		}
		if strings.ContainsAny(ev.stdout, "\033\007") {
			t.Fatalf("events printed raw control characters: %q", ev.stdout)
		}
		// logs on a terminal escapes; piped it is the raw log.
		testutil.WaitFor(t, 60*time.Second, "the console line in the logs", func() bool {
			return strings.Contains(gondolinBounded(t, home, "logs", "hostile").stdout, osc52+" console")
		})
		tm := startTerm(t, home, "logs", "hostile")
		tm.exit()
		var raw string
		// The terminal's reader may still be catching up.
		testutil.WaitFor(t, 30*time.Second, "the console line on the terminal", func() bool {
			tm.mu.Lock()
			defer tm.mu.Unlock()
			raw = tm.raw.String()
			return strings.Contains(raw, " console")
		})
		if strings.Contains(raw, osc52) || strings.Contains(raw, "\033]52") {
			t.Fatalf("logs on a terminal: %q", raw[max(0, len(raw)-300):])
		}
		if r := gondolinBounded(t, home, "list"); strings.ContainsAny(r.stdout, "\033\007") {
			t.Fatalf("list printed raw control characters: %q", r.stdout)
		}
	})
}

// TestHostileMounts (issue 12, items 4 and 5): the guest cannot make a
// mount serve another host directory, and cannot leave special files
// (a FIFO named Makefile hangs the host's make) in a read-write mount.
func TestHostileMounts(t *testing.T) {
	home := testenv.Home(t)
	t.Cleanup(func() { stopSupervisor(t, home) })
	src := t.TempDir()
	proj := filepath.Join(src, "proj")
	secret := t.TempDir()
	os.MkdirAll(proj, 0o755)
	os.WriteFile(filepath.Join(secret, "marker"), []byte("host-secret-file\n"), 0o600)

	// The attack of item 4 needs one host mount inside another: a guest
	// with /src read-write swaps proj for a symlink, and /workspace then
	// follows it. Overlapping mounts are refused.
	r := gondolin(t, home, "", "exec", "--mount-hostfs", src+":/src", "--mount-hostfs", proj+":/workspace:ro", "--", "true")
	if r.code != 2 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "overlap") {
		t.Fatalf("overlapping mounts: %+v", r)
	}

	r = gondolin(t, home, "", "bash", "--detach", "--keep", "--name", "m", "--mount-hostfs", proj+":/w")
	if r.code != 0 {
		t.Fatalf("bash --detach: %+v", r)
	}
	r = gondolinBounded(t, home, "exec", "--session", "m", "--", "sh", "-c",
		`mkfifo /w/Makefile 2>/dev/null && echo fifo; mknod /w/null c 1 3 2>/dev/null && echo dev; `+
			`mknod /w/blk b 8 0 2>/dev/null && echo blk; echo ok > /w/plain && echo plain`)
	if r.stdout != "plain\n" {
		t.Fatalf("special files: %+v", r)
	}
	entries, _ := os.ReadDir(proj)
	for _, e := range entries {
		if !e.Type().IsRegular() {
			t.Fatalf("the guest left %s (%v) in the host directory", e.Name(), e.Type())
		}
	}

	// Whatever replaces the root meanwhile (here: a symlink to another
	// directory, put there while the supervisor is down), a restarted
	// supervisor serves the directory the mount was made with or
	// nothing, and says so.
	if r := gondolin(t, home, "", "supervisor", "stop"); r.code != 0 {
		t.Fatalf("supervisor stop: %+v", r)
	}
	if err := os.Rename(proj, proj+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, proj); err != nil {
		t.Fatal(err)
	}
	s := listSessions(t, home)["m"]
	if !strings.Contains(strings.Join(s.Errors, " "), "mounts not served") {
		t.Fatalf("session errors %q, want a line about its mounts", s.Errors)
	}
	r = gondolinBounded(t, home, "list")
	if !strings.Contains(r.stderr, "mounts not served") {
		t.Fatalf("list does not say the mounts are not served: %+v", r)
	}
	r = gondolinBounded(t, home, "exec", "--session", "m", "--", "sh", "-c", "cat /w/marker 2>/dev/null; ls /w 2>/dev/null; echo end")
	if strings.Contains(r.stdout, "host-secret-file") || strings.Contains(r.stdout, "marker") || !strings.Contains(r.stdout, "end") {
		t.Fatalf("the guest read the directory the symlink names: %+v", r)
	}
}

// clientHello is a TLS ClientHello whose server name is sni, whatever
// bytes it holds: the guest writes its own TLS.
func clientHello(sni string) []byte {
	vec := func(n int, b []byte) []byte { // a length-prefixed vector
		out := make([]byte, n, n+len(b))
		for i := range n {
			out[n-1-i] = byte(len(b) >> (8 * i))
		}
		return append(out, b...)
	}
	name := append([]byte{0}, vec(2, []byte(sni))...)
	ext := append([]byte{0, 0}, vec(2, vec(2, name))...) // server_name
	body := append([]byte{3, 3}, make([]byte, 32)...)    // version, random
	body = append(body, 0)                               // session id
	body = append(body, vec(2, []byte{0x13, 0x01})...)   // cipher suites
	body = append(body, 1, 0)                            // compression
	body = append(body, vec(2, ext)...)
	hs := append([]byte{1}, vec(3, body)...)
	return append([]byte{0x16, 3, 1}, vec(2, hs)...)
}
