package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testenv"
	"github.com/gondolin/gondolin/internal/testutil"
	"github.com/gondolin/gondolin/sessions"
)

func mustRun(t *testing.T, home layout.Home, args ...string) string {
	t.Helper()
	r := gondolin(t, home, "", args...)
	if r.code != 0 {
		t.Fatalf("gondolin %s: %+v", strings.Join(args, " "), r)
	}
	return strings.TrimSpace(r.stdout)
}

func counter(t *testing.T, home layout.Home, session string) int {
	t.Helper()
	n, err := strconv.Atoi(mustRun(t, home, "exec", "--session", session, "--", "cat", "/tmp/counter"))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSnapshots takes live and disk snapshots of a running session and
// resumes them, twice, from the store and from moved files.
func TestSnapshots(t *testing.T) {
	home := testenv.Home(t)
	t.Cleanup(func() { stopSupervisor(t, home) })
	loop := `i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done`
	mustRun(t, home, "bash", "--detach", "--keep", "--name", "src", "--", "sh", "-c", loop)
	testutil.WaitFor(t, 30*time.Second, "the counter in the guest", func() bool {
		r := gondolin(t, home, "", "exec", "--session", "src", "--", "cat", "/tmp/counter")
		return r.code == 0
	})
	mustRun(t, home, "exec", "--session", "src", "--", "sh", "-c", "echo kept > /root/before-snap; echo tmp > /tmp/in-tmpfs")

	mustRun(t, home, "snapshot", "src", "--live", "--name", "live")
	atSnap := counter(t, home, "src")
	mustRun(t, home, "snapshot", "src", "--name", "disk")
	out := filepath.Join(t.TempDir(), "exported.qcow2")
	mustRun(t, home, "snapshot", "src", "--live", "--output", out)
	mustRun(t, home, "exec", "--session", "src", "--", "sh", "-c", "echo later > /root/after-snap")
	if n := counter(t, home, "src"); n < atSnap {
		t.Fatalf("the source stopped counting after the snapshot: %d < %d", n, atSnap)
	}

	t.Run("live resume continues the loop, tmpfs included", func(t *testing.T) {
		mustRun(t, home, "bash", "--detach", "--resume", "live", "--name", "r1")
		first := counter(t, home, "r1")
		time.Sleep(time.Second)
		second := counter(t, home, "r1")
		if second <= first {
			t.Fatalf("the loop is not counting: %d then %d", first, second)
		}
		files := mustRun(t, home, "exec", "--session", "r1", "--", "sh", "-c", "cat /tmp/in-tmpfs; ls /root")
		if files != "tmp\nbefore-snap" {
			t.Fatalf("resumed files: %q", files)
		}
	})
	t.Run("two resumes are isolated", func(t *testing.T) {
		mustRun(t, home, "bash", "--detach", "--resume", "live", "--name", "r2")
		mustRun(t, home, "exec", "--session", "r2", "--", "sh", "-c", "echo only-r2 > /root/r2-file")
		if got := mustRun(t, home, "exec", "--session", "r1", "--", "ls", "/root"); got != "before-snap" {
			t.Fatalf("r1 sees r2's writes: %q", got)
		}
	})
	t.Run("a disk checkpoint keeps what was written before it only", func(t *testing.T) {
		got := mustRun(t, home, "exec", "--resume", "disk", "--", "sh", "-c", "ls /root; ls /tmp/in-tmpfs 2>&1 | grep -c 'No such'")
		if got != "before-snap\n1" {
			t.Fatalf("disk resume sees %q", got)
		}
	})
	t.Run("an edited snapshot resumes as a disk checkpoint, without the mount added", func(t *testing.T) {
		// A copy of the --output snapshot whose sidecar was edited to
		// mount a host directory, as anyone without this home's key can.
		edited := filepath.Join(t.TempDir(), "edited.qcow2")
		for _, suffix := range []string{"", ".json", ".state.zst"} {
			b, err := os.ReadFile(out + suffix)
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(edited+suffix, b, 0o600)
		}
		var meta map[string]any
		b, _ := os.ReadFile(edited + ".json")
		if err := json.Unmarshal(b, &meta); err != nil {
			t.Fatal(err)
		}
		spec := meta["session"].(map[string]any)["spec"].(map[string]any)
		spec["mounts"] = []any{map[string]any{"host_path": t.TempDir(), "guest_path": "/stolen"}}
		b, _ = json.Marshal(meta)
		os.WriteFile(edited+".json", b, 0o600)
		r := gondolin(t, home, "", "exec", "--resume", edited, "--", "sh", "-c", "ls /root; ls -d /tmp/in-tmpfs /stolen 2>&1 | grep -c 'No such'")
		if r.code != 0 || r.stdout != "before-snap\n2\n" || !strings.Contains(r.stderr, "not made by this home") {
			t.Fatalf("edited snapshot: %+v; want its disk alone, without its live state or the mount, and a note", r)
		}
	})
	t.Run("a moved --output snapshot resumes", func(t *testing.T) {
		moved := filepath.Join(t.TempDir(), "moved.qcow2")
		for _, suffix := range []string{"", ".json", ".state.zst"} {
			if err := os.Rename(out+suffix, moved+suffix); err != nil {
				t.Fatal(err)
			}
		}
		if got := mustRun(t, home, "exec", "--resume", moved, "--", "ls", "/root"); got != "before-snap" {
			t.Fatalf("moved live snapshot: %q", got)
		}
		// The disk alone still resumes, as a disk checkpoint.
		alone := filepath.Join(t.TempDir(), "alone.qcow2")
		os.Rename(moved, alone)
		if got := mustRun(t, home, "exec", "--resume", alone, "--", "ls", "/root"); got != "before-snap" {
			t.Fatalf("bare disk: %q", got)
		}
	})
	t.Run("a truncated snapshot gives a clear error", func(t *testing.T) {
		id := mustRun(t, home, "snapshot", "src", "--live", "--name", "broken")
		state := filepath.Join(home.Snapshots(), id, "state.zst")
		st, _ := os.Stat(state)
		os.Truncate(state, st.Size()/2)
		r := gondolin(t, home, "", "bash", "--detach", "--resume", "broken")
		if r.code != 2 || !strings.Contains(r.stderr, "truncated") || strings.Count(r.stderr, "\n") != 1 {
			t.Fatalf("resume of a truncated snapshot: %+v", r)
		}
	})
	ls := mustRun(t, home, "snapshot", "ls")
	for _, want := range []string{"live", "disk", "broken"} {
		if !strings.Contains(ls, want) {
			t.Errorf("snapshot ls lacks %s:\n%s", want, ls)
		}
	}
	mustRun(t, home, "snapshot", "rm", "broken")
	if strings.Contains(mustRun(t, home, "snapshot", "ls"), "broken") {
		t.Error("snapshot rm left it listed")
	}
}

// TestSnapshotMissingImage checks the message when a snapshot's image is
// gone from the store.
func TestSnapshotMissingImage(t *testing.T) {
	home := testenv.Home(t)
	t.Cleanup(func() { stopSupervisor(t, home) })
	mustRun(t, home, "bash", "--detach", "--keep", "--name", "s", "--", "sleep", "1000")
	mustRun(t, home, "snapshot", "s", "--name", "orphan", "--stop") // as Gondolin's snapshot: taken, then stopped
	if st := listSessions(t, home)["s"].State; st != sessions.Stopped {
		t.Errorf("snapshot --stop left the session %s", st)
	}
	stopSupervisor(t, home)
	os.RemoveAll(home.Images())
	r := gondolin(t, home, "", "exec", "--resume", "orphan", "--", "true")
	if r.code == 0 || !strings.Contains(r.stderr, "default:latest") || !strings.Contains(r.stderr, "gondolin image build") {
		t.Fatalf("%+v", r)
	}
}

// buildMemwriter builds testdata/memwriter for the guest (static).
func buildMemwriter(t *testing.T) []byte {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "memwriter")
	cmd := exec.Command("go", "build", "-o", bin, "./testdata/memwriter")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build memwriter: %v\n%s", err, out)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// memwriterGen reads how many passes memwriter has finished in session
// (ok false: no pass yet), failing the test if it found a word it did not
// write.
func memwriterGen(t *testing.T, home layout.Home, session string) (gen int, ok bool) {
	t.Helper()
	r := gondolin(t, home, "", "exec", "--session", session, "--", "cat", "/tmp/memwriter.status")
	if r.code != 0 {
		return 0, false
	}
	if _, err := fmt.Sscanf(r.stdout, "gen %d ok", &gen); err != nil {
		t.Fatalf("%s: memwriter says %q", session, r.stdout)
	}
	return gen, true
}

// TestLiveSnapshotIsConsistent takes live snapshots of a guest that keeps
// rewriting 64 KiB of memory with a changing pattern (checking each word
// before it overwrites it) and appending each pass to a file, resumes
// each several times, and checks in every copy that no word was lost and
// that the file on disk matches the memory it was saved with.
func TestLiveSnapshotIsConsistent(t *testing.T) {
	home := testenv.Home(t)
	t.Cleanup(func() { stopSupervisor(t, home) })
	mw := buildMemwriter(t)
	wait := `while [ ! -x /tmp/mw ]; do sleep 0.1; done; exec /tmp/mw 64 churn`
	mustRun(t, home, "bash", "--detach", "--keep", "--name", "mw", "--", "sh", "-c", wait)
	if r := gondolin(t, home, string(mw), "exec", "--session", "mw", "--", "sh", "-c",
		"cat > /tmp/mw.part && chmod +x /tmp/mw.part && mv /tmp/mw.part /tmp/mw"); r.code != 0 {
		t.Fatalf("copy memwriter: %+v", r)
	}
	passes := func(session string, n int) int {
		t.Helper()
		start, gen := -1, 0
		testutil.WaitFor(t, 60*time.Second, "memwriter passes in "+session, func() bool {
			g, ok := memwriterGen(t, home, session)
			if !ok {
				return false
			}
			if start < 0 {
				start = g
			}
			gen = g
			return gen >= start+n
		})
		return gen
	}
	checkLog := func(session string) {
		t.Helper()
		gen, _ := memwriterGen(t, home, session)
		lines := strings.Fields(strings.ReplaceAll(mustRun(t, home, "exec", "--session", session, "--", "cat", "/root/memwriter.log"), "gen", ""))
		for i, l := range lines {
			if l != strconv.Itoa(i+1) {
				t.Fatalf("%s: log line %d says gen %s: the disk does not match the memory it was saved with", session, i+1, l)
			}
		}
		if len(lines) < gen {
			t.Fatalf("%s: %d passes in memory but %d in the log", session, gen, len(lines))
		}
	}
	passes("mw", 2)
	for snap := range 2 {
		name := fmt.Sprintf("mw%d", snap)
		mustRun(t, home, "snapshot", "mw", "--live", "--name", name)
		for copy := range 3 {
			session := fmt.Sprintf("%s-%d", name, copy)
			mustRun(t, home, "bash", "--detach", "--resume", name, "--name", session)
			passes(session, 2)
			checkLog(session)
			mustRun(t, home, "rm", "-f", session)
		}
	}
	passes("mw", 1) // the source went on unharmed
	checkLog("mw")
}
