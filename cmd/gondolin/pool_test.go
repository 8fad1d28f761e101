package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gondolin/gondolin/imagestore"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testenv"
	"github.com/gondolin/gondolin/internal/testutil"
	"github.com/gondolin/gondolin/sessions"
)

// poolEnv gives a home's supervisor a warm pool of two VMs (TestMain
// turns the pool off for every other test).
var poolEnv = []string{layout.EnvPool + "=2"}

// defaultShape is the pool's part for the default VM shape.
func defaultShape(st sessions.SupervisorStatus) sessions.PoolShape {
	for _, sh := range st.Pool.Shapes {
		if sh.Image == "" {
			return sh
		}
	}
	return sessions.PoolShape{}
}

// waitPoolReady waits until the pool holds n ready VMs of the default
// shape.
func waitPoolReady(t *testing.T, home layout.Home, n int) sessions.SupervisorStatus {
	t.Helper()
	var st sessions.SupervisorStatus
	testutil.WaitFor(t, 90*time.Second, fmt.Sprintf("%d ready pool VMs", n), func() bool {
		st = supervisorStatus(t, home)
		return defaultShape(st).Ready >= n
	})
	return st
}

// TestPoolClaimsAreFresh checks what a claimer gets: a VM no other
// command touched (a file written by one exec is not there for the
// next), its own randomness, hostname and environment, and exec's usual
// stdio, exit codes, stdin and timeout; each exec is served by the pool.
func TestPoolClaimsAreFresh(t *testing.T) {
	home := testenv.Home(t)
	gondolinEnv(t, home, poolEnv, "", "list") // starts the supervisor
	t.Cleanup(func() { stopSupervisor(t, home) })

	// Written from the guest's side: each exec looks for what an earlier
	// one could have left (a file on the disk, a process still running),
	// then leaves both behind.
	probe := `hostname; echo "env=$CLAIM"; od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; echo; ` +
		`if [ -e /var/tmp/left-behind ]; then echo SEEN file; fi; touch /var/tmp/left-behind; ` +
		`for c in /proc/[0-9]*/comm; do [ "$(cat $c 2>/dev/null)" = lurker ] && echo SEEN process; done; ` +
		`cp /bin/sleep /var/tmp/lurker; (setsid /var/tmp/lurker 1000 </dev/null >/dev/null 2>&1 &)`
	type claim struct{ hostname, env, random string }
	var claims []claim
	for _, who := range []string{"first", "second"} {
		before := waitPoolReady(t, home, 2).Pool.Claims
		r := gondolinEnv(t, home, poolEnv, "", "exec", "--env", "CLAIM="+who, "--", "sh", "-c", probe)
		if r.code != 0 {
			t.Fatalf("exec: %+v", r)
		}
		if strings.Contains(r.stdout, "SEEN") {
			t.Fatalf("the %s claim found what an earlier exec left: %q", who, r.stdout)
		}
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if len(lines) != 3 {
			t.Fatalf("exec output %q", r.stdout)
		}
		c := claim{lines[0], lines[1], lines[2]}
		if c.env != "env="+who || !strings.HasPrefix(c.hostname, "gondolin-") || c.hostname == "gondolin-pool" || len(c.random) != 32 {
			t.Fatalf("the %s claim got %+v", who, c)
		}
		if got := supervisorStatus(t, home).Pool.Claims; got != before+1 {
			t.Fatalf("claims went from %d to %d: the exec was not served by the pool", before, got)
		}
		claims = append(claims, c)
	}
	if claims[0].hostname == claims[1].hostname || claims[0].random == claims[1].random {
		t.Fatalf("two claims share a hostname or a random stream: %+v", claims)
	}

	cases := []struct {
		name           string
		stdin          string
		args           []string
		code           int
		stdout, stderr string
	}{
		{"exit code and both streams", "", []string{"--", "sh", "-c", "echo out; echo err >&2; exit 7"}, 7, "out\n", "err\n"},
		{"stdin", "piped\n", []string{"--", "cat"}, 0, "piped\n", ""},
		{"command not found", "", []string{"--", "no-such-command"}, 127, "", "command not found"},
		{"timeout", "", []string{"--timeout", "1s", "--", "sleep", "30"}, 128 + int(syscall.SIGTERM), "", ""},
		{"cwd", "", []string{"--cwd", "/tmp", "--", "pwd"}, 0, "/tmp\n", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := waitPoolReady(t, home, 1).Pool.Claims
			r := gondolinEnv(t, home, poolEnv, tc.stdin, append([]string{"exec"}, tc.args...)...)
			if r.code != tc.code || r.stdout != tc.stdout || !strings.Contains(r.stderr, tc.stderr) {
				t.Fatalf("got exit %d, stdout %q, stderr %q; want %d, %q, %q", r.code, r.stdout, r.stderr, tc.code, tc.stdout, tc.stderr)
			}
			if got := supervisorStatus(t, home).Pool.Claims; got != before+1 {
				t.Fatalf("claims went from %d to %d: not served by the pool", before, got)
			}
		})
	}
	// Nothing of the claimed VMs is left: only the pool's own.
	testutil.WaitFor(t, 20*time.Second, "the claimed VMs gone", func() bool {
		st := supervisorStatus(t, home)
		sh := defaultShape(st)
		return len(qemuProcesses(home)) == sh.Ready+sh.Warming
	})
}

// TestPoolConcurrentClaims runs more execs at once than the pool holds,
// while it refills: every one must succeed with its own output, served
// by the pool or by a clone.
func TestPoolConcurrentClaims(t *testing.T) {
	home := testenv.Home(t)
	gondolinEnv(t, home, poolEnv, "", "list")
	t.Cleanup(func() { stopSupervisor(t, home) })
	before := waitPoolReady(t, home, 2).Pool
	const n = 5
	var wg sync.WaitGroup
	results := make([]result, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = gondolinEnv(t, home, poolEnv, "", "exec", "--", "echo", "exec-"+strconv.Itoa(i))
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.code != 0 || r.stdout != fmt.Sprintf("exec-%d\n", i) {
			t.Errorf("exec %d: %+v", i, r)
		}
	}
	after := supervisorStatus(t, home).Pool
	if after.Claims+after.Misses-before.Claims-before.Misses != n || after.Claims == before.Claims {
		t.Fatalf("claims %d→%d, misses %d→%d: want %d claims in all, some from the pool", before.Claims, after.Claims, before.Misses, after.Misses, n)
	}
	waitPoolReady(t, home, 2) // it refills
}

// TestPoolSurvivesSupervisorKill kills the supervisor with SIGKILL while
// it holds a pool and a session claimed from it: the next supervisor
// adopts the session and kills the pool's VMs (they are detached, so
// they outlive the supervisor that made them).
func TestPoolSurvivesSupervisorKill(t *testing.T) {
	home := testenv.Home(t)
	gondolinEnv(t, home, poolEnv, "", "list")
	t.Cleanup(func() { stopSupervisor(t, home) })
	waitPoolReady(t, home, 2)
	r := gondolinEnv(t, home, poolEnv, "", "bash", "--detach", "--keep", "--name", "claimed", "--", "sleep", "1000")
	if r.code != 0 {
		t.Fatalf("bash --detach: %+v", r)
	}
	st := waitPoolReady(t, home, 2)
	if st.Pool.Claims != 1 {
		t.Fatalf("the session was not made from the pool: %+v", st.Pool)
	}
	session := listSessions(t, home)["claimed"]
	var poolPIDs []string
	for _, pid := range qemuProcesses(home) {
		if pid != strconv.Itoa(session.PID) {
			poolPIDs = append(poolPIDs, pid)
		}
	}
	if len(poolPIDs) != 2 {
		t.Fatalf("want 2 pool QEMUs beside the session's %d, found %v", session.PID, qemuProcesses(home))
	}
	syscall.Kill(st.PID, syscall.SIGKILL)
	testutil.WaitFor(t, 10*time.Second, "the supervisor gone", func() bool { return syscall.Kill(st.PID, 0) != nil })
	if got := qemuProcesses(home); len(got) != 3 {
		t.Fatalf("after the supervisor's death want its 3 VMs still running, found %v", got)
	}
	// The next supervisor (with no pool of its own, so that what runs
	// afterwards is only what it kept).
	noPool := []string{layout.EnvPool + "=0"}
	if s := listSessionsEnv(t, home, noPool)["claimed"]; s.State != sessions.Live || s.PID != session.PID {
		t.Fatalf("the session claimed from the pool was not adopted: %+v", s)
	}
	testutil.WaitFor(t, 10*time.Second, "the dead supervisor's pool VMs killed", func() bool {
		return slices.Equal(qemuProcesses(home), []string{strconv.Itoa(session.PID)})
	})
	markers, _ := filepath.Glob(filepath.Join(home.Sessions(), "*", layout.PoolMarker))
	if len(markers) > 0 {
		t.Fatalf("pool directories left: %v", markers)
	}
	if r := gondolinEnv(t, home, noPool, "", "exec", "--session", "claimed", "--", "true"); r.code != 0 {
		t.Fatalf("exec in the adopted session: %+v", r)
	}
}

// listSessionsEnv is listSessions with extra environment variables.
func listSessionsEnv(t *testing.T, home layout.Home, env []string) map[string]sessions.Session {
	t.Helper()
	r := gondolinEnv(t, home, env, "", "list", "--all", "--json")
	if r.code != 0 {
		t.Fatalf("list: %+v", r)
	}
	var list []sessions.Session
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatal(err)
	}
	byName := map[string]sessions.Session{}
	for _, s := range list {
		byName[s.Name] = s
	}
	return byName
}

// TestPoolDrainedByImageRebuild changes the default image (a rebuild
// that changed its initramfs) under a full pool: the pool's VMs of the
// old image are killed, and it refills with the new one.
func TestPoolDrainedByImageRebuild(t *testing.T) {
	home := testenv.PrivateHome(t) // its own images and templates
	gondolinEnv(t, home, poolEnv, "", "list")
	t.Cleanup(func() { stopSupervisor(t, home) })
	waitPoolReady(t, home, 2)
	old := qemuProcesses(home)
	if len(old) != 2 {
		t.Fatalf("want the 2 pool VMs, found %v", old)
	}
	store, err := imagestore.Open(home.Images())
	if err != nil {
		t.Fatal(err)
	}
	img, err := store.Resolve(layout.DefaultImage)
	if err != nil {
		t.Fatal(err)
	}
	// A new initramfs: the same archive with trailing padding, which the
	// kernel skips (another blob, so other paths and another template).
	b, err := os.ReadFile(img.InitramfsPath())
	if err != nil {
		t.Fatal(err)
	}
	padded := filepath.Join(t.TempDir(), "initramfs")
	if err := os.WriteFile(padded, append(b, make([]byte, 4096)...), 0o644); err != nil {
		t.Fatal(err)
	}
	m := img.Manifest
	if m.Initramfs, err = store.PutFile(padded); err != nil {
		t.Fatal(err)
	}
	m.Initramfs.Format = img.Manifest.Initramfs.Format
	m.Created = time.Now().UTC()
	ref, _ := imagestore.ParseRef(layout.DefaultImage)
	rebuilt, err := store.PutTagged(m, ref)
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 30*time.Second, "the old image's pool VMs drained", func() bool {
		now := qemuProcesses(home)
		return !slices.ContainsFunc(old, func(pid string) bool { return slices.Contains(now, pid) })
	})
	waitPoolReady(t, home, 2)
	for _, pid := range qemuProcesses(home) {
		cmdline, _ := os.ReadFile("/proc/" + pid + "/cmdline")
		if !bytes.Contains(cmdline, []byte(rebuilt.InitramfsPath())) {
			t.Errorf("pool QEMU %s does not boot the rebuilt image", pid)
		}
	}
	if r := gondolinEnv(t, home, poolEnv, "", "exec", "--", "true"); r.code != 0 {
		t.Fatalf("exec after the rebuild: %+v", r)
	}
}

// TestPoolSizeZero: with the pool off, exec still goes through the
// supervisor and works, and no VM waits in the background.
func TestPoolSizeZero(t *testing.T) {
	home := testenv.Home(t)
	off := []string{layout.EnvPool + "=0"}
	t.Cleanup(func() { stopSupervisor(t, home) })
	if r := gondolinEnv(t, home, off, "", "exec", "--", "echo", "ok"); r.code != 0 || r.stdout != "ok\n" {
		t.Fatalf("exec: %+v", r)
	}
	st := supervisorStatus(t, home)
	if st.Pool.Size != 0 || st.Pool.Claims != 0 || len(st.Pool.Shapes) != 0 {
		t.Fatalf("pool of size 0: %+v", st.Pool)
	}
	time.Sleep(poolSettle)
	if got := qemuProcesses(home); len(got) != 0 {
		t.Fatalf("VMs running with the pool off: %v", got)
	}
	if dirs, _ := os.ReadDir(home.Sessions()); len(dirs) != 0 {
		t.Fatalf("the exec's VM directory is left: %v", dirs)
	}
}

// poolSettle is longer than the pool's check interval: a pool that
// wanted to warm a VM would have started by then.
const poolSettle = 4 * time.Second

// TestExecWithoutSupervisor: GONDOLIN_NO_SUPERVISOR runs the VM in
// exec's own process, as before the pool, and starts no supervisor.
func TestExecWithoutSupervisor(t *testing.T) {
	home := testenv.Home(t)
	alone := []string{layout.EnvNoSupervisor + "=1"}
	r := gondolinEnv(t, home, alone, "in\n", "exec", "--", "sh", "-c", "cat; exit 3")
	if r.code != 3 || r.stdout != "in\n" {
		t.Fatalf("exec: %+v", r)
	}
	if _, err := os.Stat(home.SupervisorSocket()); err == nil {
		t.Fatal("exec started a supervisor")
	}
	assertNothingLeft(t, home)
}
