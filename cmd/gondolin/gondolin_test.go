package main

// These tests run the real gondolin binary against real VMs, the way a
// user or a script does, and check what a user sees: output, exit codes,
// one-line errors, and that nothing is left behind.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gondolin/gondolin/contexts"
	"github.com/gondolin/gondolin/imagestore"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/qemuproc"
	"github.com/gondolin/gondolin/internal/syncbuf"
	"github.com/gondolin/gondolin/internal/testenv"
	"github.com/gondolin/gondolin/internal/testutil"
)

var gondolinBin string

func TestMain(m *testing.M) {
	// The supervisors these tests start keep no warm pool unless a test
	// asks for one (pool_test.go): pool VMs restoring beside every test
	// would only slow the others on two cores.
	os.Setenv(layout.EnvPool, "0")
	// The developer's own choice of machine and ssh is not the tests'.
	os.Unsetenv(contexts.EnvContext)
	os.Unsetenv(contexts.EnvSSHCommand)
	dir, err := os.MkdirTemp("", "gdbin")
	if err != nil {
		panic(err)
	}
	gondolinBin = filepath.Join(dir, "gondolin")
	if out, err := exec.Command("go", "build", "-o", gondolinBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build gondolin: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	testenv.Cleanup()
	if gitImage.cleanup != nil {
		gitImage.cleanup()
	}
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
	elapsed        time.Duration
}

func gondolin(t *testing.T, home layout.Home, stdin string, args ...string) result {
	t.Helper()
	return gondolinWithin(t, 0, home, stdin, args...)
}

// gondolinWithin runs gondolin with args in home, with stdin as its
// input; it fails the test, rather than hanging it, when the command
// does not finish within limit (when limit is not 0).
func gondolinWithin(t *testing.T, limit time.Duration, home layout.Home, stdin string, args ...string) result {
	t.Helper()
	return runGondolin(t, limit, home, nil, stdin, args...)
}

// gondolinEnv is gondolin with extra environment variables.
func gondolinEnv(t *testing.T, home layout.Home, env []string, stdin string, args ...string) result {
	t.Helper()
	return runGondolin(t, 0, home, env, stdin, args...)
}

func runGondolin(t *testing.T, limit time.Duration, home layout.Home, env []string, stdin string, args ...string) result {
	t.Helper()
	ctx := context.Background()
	if limit > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, limit)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, gondolinBin, args...)
	cmd.Env = append(append(os.Environ(), layout.EnvHome+"="+string(home)), env...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("gondolin %v hung (no answer in %v)", args, limit)
	}
	r := result{stdout: out.String(), stderr: errb.String(), elapsed: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestUsageErrors(t *testing.T) {
	home := layout.Home(t.TempDir())
	tests := []struct {
		args []string
		env  string
		want string
	}{
		{args: []string{"exec", "--bogus"}, want: "unknown flag: --bogus"},
		{args: []string{"exec"}, want: "exec needs a command"},
		{args: []string{"exec", "--memory", "12", "--", "true"}, want: "--memory"},
		{args: []string{"exec", "--memory", "lots", "--", "true"}, want: "--memory"},
		{args: []string{"exec", "--cpus", "0x", "--", "true"}, want: "--cpus"},
		{args: []string{"exec", "--env", "1BAD=x", "--", "true"}, want: "--env"},
		{args: []string{"exec", "--cwd", "relative", "--", "true"}, want: "--cwd"},
		{args: []string{"exec", "--allow-internal", "10.0.0.1:99999", "--", "true"}, want: "--allow-internal"},
		{args: []string{"exec", "--allow-internal", "fd00::/8:80", "--", "true"}, want: "[fd00::]/8:5432"},
		{args: []string{"exec", "--", "true"}, env: layout.EnvAccel + "=warp", want: "GONDOLIN_ACCEL"},
		{args: []string{"exec", "--", "true"}, env: layout.EnvPool + "=many", want: "GONDOLIN_POOL"},
		{args: []string{"exec", "--", "true"}, env: layout.EnvPoolMemory + "=lots", want: "GONDOLIN_POOL_MEMORY"},
		{args: []string{"exec", "--", "true"}, env: layout.EnvCPUs + "=two", want: "GONDOLIN_CPUS"},
		{args: []string{"bash", "--detach"}, env: layout.EnvMemory + "=8M", want: "GONDOLIN_MEMORY"},
		{args: []string{"supervisor", "--pool=-1"}, want: "--pool"},
		{args: []string{"supervisor", "--pool-memory", "lots"}, want: "--pool-memory"},
		{args: []string{"image", "inspect"}, want: "needs an image"},
		{args: []string{"image", "build", "--tag", "Bad/Ref"}, want: "--tag"},
		{args: []string{"image", "build", "--config", "/no/such/file"}, want: "--config"},
		{args: []string{"image", "build", "--init-config", "--tag", "x:y"}, want: "--init-config prints the default config"},
		{args: []string{"nosuchcommand"}, want: "unknown command"},
		{args: []string{"image", "frob"}, want: `unknown command "frob" for gondolin image`},
		{args: []string{"policy", "frob"}, want: `unknown command "frob" for gondolin policy`},
		{args: []string{"policy", "secret", "frob"}, want: `unknown command "frob" for gondolin policy secret`},
		{args: []string{"image", "tag"}, want: "gondolin: image tag needs"},
		{args: []string{"ui"}, want: "ui needs a terminal"},
		{args: []string{"attach"}, want: "attach needs a session"},
		{args: []string{"attach", "a", "b", "--", "top"}, want: "one session before --"},
		{args: []string{"attach", "a", "--env", "A=1"}, want: "--env and --cwd are for a new terminal"},
		{args: []string{"list", "--json", "-q"}, want: "--json, -q and --format do not go together"},
		{args: []string{"bash", "--ssh-agent", "/run/user/1000/ssh.sock"}, want: "--ssh-agent=/run/user/1000/ssh.sock"},
		{args: []string{"exec", "--ssh-agent", "/tmp/agent.sock", "--", "true"}, want: "--ssh-agent=/tmp/agent.sock"},
		{args: []string{"exec", "--session", "x", "--allow-host", "a.com", "--", "true"}, want: "--allow-host applies to new VMs"},
		{args: []string{"exec", "--session", "x", "--no-network", "--", "true"}, want: "--no-network applies to new VMs"},
		{args: []string{"exec", "--session", "x", "--image", "i", "--cpus", "2", "--memory", "1G", "--cold", "--", "true"},
			want: "--cold, --cpus, --image, --memory apply to new VMs"},
		{args: []string{"exec", "--session", "x", "--mount-hostfs", "/tmp:/w", "--host-secret", "A@h=v", "--", "true"},
			want: "--host-secret, --mount-hostfs apply to new VMs"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			if tt.env != "" {
				k, v, _ := strings.Cut(tt.env, "=")
				t.Setenv(k, v)
			}
			r := gondolin(t, home, "", tt.args...)
			if r.code != 2 {
				t.Errorf("exit code %d, want 2 (stderr %q)", r.code, r.stderr)
			}
			if lines := strings.Count(r.stderr, "\n"); lines != 1 || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("stderr %q: want one line mentioning %q", r.stderr, tt.want)
			}
		})
	}
	if entries, _ := os.ReadDir(filepath.Join(string(home), "sessions")); len(entries) > 0 {
		t.Errorf("bad input changed state: %v", entries)
	}
}

// TestQuietAnswers: commands a script runs where there is nothing to act
// on answer in one line (or an empty listing), with a code it can test.
func TestQuietAnswers(t *testing.T) {
	home := layout.Home(t.TempDir())
	tests := []struct {
		args               []string
		wantCode           int
		wantOut, wantErrln string
	}{
		{args: []string{"image", "ls", "--json"}, wantOut: "[]\n"},
		{args: []string{"supervisor", "status"}, wantCode: 3, wantOut: "no supervisor is running for " + string(home) + "\n"},
		{args: []string{"supervisor", "stop"}, wantErrln: "no supervisor is running"},
		{args: []string{"supervisor", "stop"}, wantErrln: "no supervisor is running"}, // again: still fine
		{args: []string{"image", "rm", "nope"}, wantCode: 4, wantErrln: "no image nope to remove (see: gondolin image ls)"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := gondolin(t, home, "", tt.args...)
			if r.code != tt.wantCode || r.stdout != tt.wantOut {
				t.Errorf("code %d stdout %q, want %d %q (stderr %q)", r.code, r.stdout, tt.wantCode, tt.wantOut, r.stderr)
			}
			if tt.wantErrln != "" && (strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, tt.wantErrln)) {
				t.Errorf("stderr %q, want one line with %q", r.stderr, tt.wantErrln)
			}
		})
	}
	for _, args := range [][]string{{"--version"}, {"version"}} {
		if r := gondolin(t, home, "", args...); r.code != 0 || !strings.HasPrefix(r.stdout, "gondolin ") || !strings.Contains(r.stdout, runtime.Version()) {
			t.Errorf("%v: code %d, %q", args, r.code, r.stdout)
		}
	}
	var v map[string]any
	if r := gondolin(t, home, "", "version", "--json"); json.Unmarshal([]byte(r.stdout), &v) != nil || v["go"] != runtime.Version() {
		t.Errorf("version --json: %q", r.stdout)
	}
	// The default build config, printed, reads back as what a build
	// without one uses.
	r := gondolin(t, home, "", "image", "build", "--init-config")
	cfg, err := imagestore.ParseConfig(strings.NewReader(r.stdout))
	want, _ := imagestore.BuildConfig{}.Resolve()
	if r.code != 0 || err != nil || !reflect.DeepEqual(cfg, want) {
		t.Errorf("image build --init-config: code %d %q: %v; want %+v", r.code, r.stdout, err, want)
	}
	// The help of the commands that make VMs: flags by group, examples
	// and the environment.
	for _, cmd := range []string{"exec", "bash"} {
		r := gondolin(t, home, "", cmd, "--help")
		for _, want := range []string{"Examples:", "VM flags:", "Mount flags:", "Network flags:", "Secret flags:", "SSH flags:", "Environment:", "GONDOLIN_CPUS", "GONDOLIN_MEMORY", "GONDOLIN_HOME"} {
			if r.code != 0 || !strings.Contains(r.stdout, want) {
				t.Errorf("%s --help: code %d, no %q in %q", cmd, r.code, want, r.stdout)
			}
		}
		if strings.Contains(r.stdout, "Other flags:\n      --") {
			t.Errorf("%s --help has ungrouped flags: %q", cmd, r.stdout)
		}
	}
	var st map[string]any
	r = gondolin(t, home, "", "supervisor", "status", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || r.code != 3 || st["running"] != false {
		t.Errorf("status --json without a supervisor: code %d, %q", r.code, r.stdout)
	}
}

func TestExec(t *testing.T) {
	home := testenv.Home(t)
	tests := []struct {
		name       string
		args       []string
		stdin      string
		env        []string
		wantOut    string
		wantErr    string // substring of stderr
		wantCode   int
		maxElapsed time.Duration
	}{
		{name: "streams and exit code", args: []string{"sh", "-c", "echo out; echo err >&2; exit 7"}, wantOut: "out\n", wantErr: "err\n", wantCode: 7},
		{name: "stdin piped", args: []string{"cat"}, stdin: "hi\n", wantOut: "hi\n"},
		{name: "curl with TLS", args: []string{"sh", "-c", "curl --version | head -1 | cut -d' ' -f1"}, wantOut: "curl\n"},
		{name: "bash", args: []string{"bash", "-c", "echo $BASH_VERSION | cut -c1"}, wantOut: "5\n"},
		{name: "signal exit", args: []string{"sh", "-c", "kill -TERM $$"}, wantCode: 143},
		{name: "not found", args: []string{"no-such-command"}, wantErr: "command not found", wantCode: 127},
		{name: "env and cwd", args: []string{"--env", "A=1", "--cwd", "/tmp", "--", "sh", "-c", "echo $A; pwd"}, wantOut: "1\n/tmp\n"},
		{name: "tty without a terminal", args: []string{"-t", "--", "stty", "size"}, wantOut: "24 80\r\n"},
		{name: "shape, flag over env and env alone", args: []string{"--cpus", "2", "--", "sh", "-c", "nproc; awk '/MemTotal/{print ($2 > 300000)}' /proc/meminfo"},
			env: []string{layout.EnvCPUs + "=1", layout.EnvMemory + "=384M"}, wantOut: "2\n1\n"},
		{name: "cold boot", args: []string{"--cold", "--", "echo", "cold"}, wantOut: "cold\n"},
		{name: "missing image", args: []string{"--image", "nope", "--", "true"}, wantErr: "gondolin image build", wantCode: 125}, // not 4: exec's codes are the guest's
		{name: "timeout kills a command that ignores SIGTERM", args: []string{"--timeout", "1s", "--", "sh", "-c", "trap '' TERM; echo started; sleep 60"},
			wantOut: "started\n", wantCode: 137, maxElapsed: 15 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"exec"}, tt.args...)
			r := gondolinEnv(t, home, tt.env, tt.stdin, args...)
			if r.stdout != tt.wantOut || !strings.Contains(r.stderr, tt.wantErr) || r.code != tt.wantCode {
				t.Fatalf("got stdout %q stderr %q code %d; want stdout %q stderr ~%q code %d",
					r.stdout, r.stderr, r.code, tt.wantOut, tt.wantErr, tt.wantCode)
			}
			if tt.maxElapsed > 0 && r.elapsed > tt.maxElapsed {
				t.Fatalf("took %v", r.elapsed)
			}
		})
	}
	assertNothingLeft(t, home)
}

// startReady starts `gondolin exec` of the shell script in home, and
// returns once the script has printed "ready": the VM is up.
func startReady(t *testing.T, home layout.Home, script string) (*exec.Cmd, *syncbuf.Buffer) {
	t.Helper()
	cmd := exec.Command(gondolinBin, "exec", "--", "sh", "-c", script)
	cmd.Env = append(os.Environ(), layout.EnvHome+"="+string(home))
	out := &syncbuf.Buffer{}
	cmd.Stdout = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 60*time.Second, "ready from the guest", func() bool { return strings.Contains(out.String(), "ready") })
	return cmd, out
}

// TestExecForwardsCtrlC checks that SIGINT to gondolin reaches the guest
// command (which decides what to do with it) instead of killing the VM.
func TestExecForwardsCtrlC(t *testing.T) {
	home := testenv.Home(t)
	cmd, out := startReady(t, home, `trap 'echo got INT; exit 3' INT; echo ready; sleep 60 & wait`)
	cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || !strings.Contains(out.String(), "got INT") {
		t.Fatalf("err %v, output %q; want exit 3 after 'got INT'", err, out.String())
	}
	assertNothingLeft(t, home)
}

// TestExecKilledLeavesNothing kills gondolin itself: its VM must die with
// it, and the next run sweeps its directory.
func TestExecKilledLeavesNothing(t *testing.T) {
	home := testenv.Home(t)
	cmd, _ := startReady(t, home, "echo ready; sleep 60")
	if len(qemuProcesses(home)) != 1 {
		t.Fatalf("expected one QEMU for this home, found %v", qemuProcesses(home))
	}
	cmd.Process.Kill()
	cmd.Wait()
	testutil.WaitFor(t, 10*time.Second, "no QEMU left for this home", func() bool { return len(qemuProcesses(home)) == 0 })
	if r := gondolin(t, home, "", "exec", "--", "true"); r.code != 0 {
		t.Fatalf("next exec: %+v", r)
	}
	assertNothingLeft(t, home)
}

// assertNothingLeft checks that no QEMU runs for home and that no
// one-shot run directory (sockets, overlays, logs) remains.
func assertNothingLeft(t *testing.T, home layout.Home) {
	t.Helper()
	// The supervisor answers an exec before it destroys the VM (the
	// client need not wait for that): give it a moment.
	var procs []string
	var entries, oneShot []os.DirEntry
	testutil.Poll(10*time.Second, func() bool {
		procs = qemuProcesses(home)
		entries, _ = os.ReadDir(home.Run())
		oneShot, _ = os.ReadDir(home.Sessions())
		return len(procs)+len(entries)+len(oneShot) == 0
	})
	if len(procs) > 0 {
		t.Errorf("QEMU still running: %v", procs)
	}
	if len(entries) > 0 {
		t.Errorf("run directories left behind: %v", entries)
	}
	if len(oneShot) > 0 {
		t.Errorf("one-shot VM directories left behind: %v", oneShot)
	}
	leftovers, _ := filepath.Glob(filepath.Join(string(home), "templates", "*.tmp*"))
	checks, _ := filepath.Glob(filepath.Join(string(home), "templates", "*.v*"))
	if leftovers = append(leftovers, checks...); len(leftovers) > 0 {
		t.Errorf("template scratch left behind: %v", leftovers)
	}
}

// qemuProcesses lists QEMU processes whose command line mentions home.
func qemuProcesses(home layout.Home) []string {
	var found []string
	for _, pid := range qemuproc.In(string(home)) {
		found = append(found, strconv.Itoa(pid))
	}
	return found
}
