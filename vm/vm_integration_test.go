package vm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gondolin/gondolin/imagestore"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testenv"
	"github.com/gondolin/gondolin/vm/agentproto"
	"go.uber.org/goleak"
)

// One VM serves every test that isolation allows; it is booted on first
// use and killed after the last test.
var shared struct {
	once    sync.Once
	home    layout.Home
	cleanup func()
	skip    string
	err     error
	m       *Machine
	a       *Agent
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.a != nil {
		shared.a.Close()
	}
	if shared.m != nil {
		shared.m.Kill()
	}
	if shared.cleanup != nil {
		shared.cleanup()
	}
	testenv.Cleanup()
	// Every goroutine the package starts (watching QEMU, the console, a
	// handshake, a call) must be gone once its VMs and connections are.
	// The in-process agent's SIGCHLD loop lives as long as the process.
	if err := goleak.Find(goleak.IgnoreTopFunction("os/signal.signal_recv"), goleak.IgnoreAnyFunction("github.com/gondolin/gondolin/vm/agent.newReaper.func1")); err != nil && code == 0 {
		fmt.Fprintf(os.Stderr, "goroutines left behind: %v\n", err)
		code = 1
	}
	os.Exit(code)
}

// testConfig returns a VM config for the default image in a test home.
func testConfig(t *testing.T, home layout.Home, name string) Config {
	t.Helper()
	store, err := imagestore.Open(home.Images())
	if err != nil {
		t.Fatal(err)
	}
	img, err := store.Resolve(layout.DefaultImage)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(string(home), name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return Config{Dir: dir, Kernel: img.KernelPath(), Initramfs: img.InitramfsPath(), Backing: img.RootfsPath(), Accel: TCG}
}

// testHome is one integration home for the package.
func testHome(t *testing.T) layout.Home {
	t.Helper()
	shared.once.Do(func() {
		shared.home, shared.cleanup, shared.skip, shared.err = testenv.NewHome()
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	if shared.skip != "" {
		t.Skip(shared.skip)
	}
	return shared.home
}

func sharedVMAgent(t *testing.T, fresh bool) *Agent {
	t.Helper()
	home := testHome(t)
	if shared.m == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		m, err := Start(ctx, testConfig(t, home, "shared"))
		if err != nil {
			t.Fatal(err)
		}
		shared.m = m
		logConsole(t, m)
	}
	if shared.a == nil || fresh {
		if shared.a != nil {
			shared.a.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		a, err := shared.m.ConnectAgent(ctx, agentproto.Setup{Hostname: "shared"})
		if err != nil {
			t.Fatal(err)
		}
		shared.a = a
	}
	return shared.a
}

// logConsole streams the end of a VM's serial console into the test log
// when the test fails.
func logConsole(t *testing.T, m *Machine) {
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(m.Config().Dir, layout.ConsoleLog))
			t.Logf("console:\n%s", b)
		}
	})
}

func TestVMPersistentOutputSurvivesHost(t *testing.T) {
	a := sharedVMAgent(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	persistentOutputSurvivesHost(t, ctx, a, func() *Agent {
		return sharedVMAgent(t, true) // a new host takes over the channel
	})
}

// TestVMTemplateClones checks that clones of one saved template boot,
// are isolated, get their own entropy and the current time.
func TestVMTemplateClones(t *testing.T) {
	home := testHome(t)
	tmpl := &Templates{Dir: home.Templates()}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	var outs []string
	for i := range 2 {
		cfg := testConfig(t, home, fmt.Sprintf("clone%d", i))
		m, a, err := tmpl.Clone(ctx, cfg, agentproto.Setup{Hostname: fmt.Sprintf("clone%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		logConsole(t, m)
		// A restored clone runs under QEMU's seccomp filter (mode 2).
		if status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", m.PID())); err != nil || !strings.Contains(string(status), "\nSeccomp:\t2\n") {
			t.Errorf("clone %d: QEMU is not under a seccomp filter (%v)", i, err)
		}
		out, _, exit, err := run(t, a, sh("hostname; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s; ls /tmp/marker 2>&1; touch /tmp/marker /root/marker"))
		a.Close()
		m.Kill()
		if err != nil || exit.Code != 0 {
			t.Fatalf("clone %d: %+v %v", i, exit, err)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 4 || lines[0] != fmt.Sprintf("clone%d", i) || !strings.Contains(lines[3], "No such file") {
			t.Fatalf("clone %d output %q", i, out)
		}
		var guestTime int64
		fmt.Sscan(lines[2], &guestTime)
		if d := time.Now().Unix() - guestTime; d < -2 || d > 5 {
			t.Fatalf("clone %d clock is off by %ds", i, d)
		}
		outs = append(outs, lines[1])
	}
	if outs[0] == outs[1] {
		t.Fatalf("two clones read the same random bytes %s: RNG not reseeded", outs[0])
	}
	if !tmpl.Ready(testConfig(t, home, "clone0")) {
		t.Fatal("template not kept")
	}
}

// TestVMKilledGivesError checks that a dead QEMU or a crashed agent ends
// a running command with a clear error instead of a hang.
func TestVMKilledGivesError(t *testing.T) {
	home := testHome(t)
	for _, tt := range []struct {
		name string
		kill func(m *Machine, a *Agent)
		// console lists what the guest must have printed as it died.
		console []string
	}{
		{"qemu killed", func(m *Machine, a *Agent) { syscall.Kill(m.PID(), syscall.SIGKILL) }, nil},
		{"agent crashed", func(m *Machine, a *Agent) {
			// PID 1 dying panics the kernel; QEMU runs with -no-reboot.
			a.Start(context.Background(), Command{Exec: agentproto.Exec{Argv: []string{"/bin/sh", "-c", "kill -SEGV 1"}}})
		}, []string{"SIGSEGV: segmentation violation", "goroutine 1 ", "Kernel panic - not syncing"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			m, a, err := (&Templates{Dir: home.Templates()}).Clone(ctx, testConfig(t, home, "kill"), agentproto.Setup{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Kill()
			p, err := a.Start(ctx, Command{Exec: agentproto.Exec{Argv: []string{"sleep", "600"}}})
			if err != nil {
				t.Fatal(err)
			}
			tt.kill(m, a)
			select {
			case <-p.Done():
			case <-time.After(20 * time.Second):
				t.Fatal("command did not end after its VM died")
			}
			if _, err := p.Wait(); err == nil || !strings.Contains(err.Error(), "connection lost") {
				t.Fatalf("err = %v, want a lost-connection error", err)
			}
			select {
			case <-m.Exited():
			case <-time.After(20 * time.Second):
				t.Fatal("QEMU still running")
			}
			// A fatal error in the guest explains itself: the agent's
			// whole traceback and the kernel's panic are on the console.
			console, _ := os.ReadFile(filepath.Join(m.Config().Dir, layout.ConsoleLog))
			for _, want := range tt.console {
				if !strings.Contains(string(console), want) {
					t.Errorf("the console lacks %q:\n%s", want, console)
				}
			}
		})
	}
}

// TestVMBootTimeout checks that a guest that does not answer in time is
// killed and reported with its console.
func TestVMBootTimeout(t *testing.T) {
	home := testHome(t)
	cfg := testConfig(t, home, "timeout")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	_, err = m.ConnectAgent(short, agentproto.Setup{})
	if err == nil || !strings.Contains(err.Error(), "did not answer") {
		t.Fatalf("err = %v", err)
	}
	m.Kill()
	if err := syscall.Kill(m.PID(), 0); err == nil {
		t.Fatal("QEMU survived Kill")
	}
}

// TestVMQ35 boots the fallback machine type, used when QEMU lacks microvm.
func TestVMQ35(t *testing.T) {
	home := testHome(t)
	cfg := testConfig(t, home, "q35")
	cfg.MachineType = Q35
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	m, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Kill()
	logConsole(t, m)
	a, err := m.ConnectAgent(ctx, agentproto.Setup{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	out, _, exit, err := run(t, a, sh("cat /sys/bus/virtio/devices/*/modalias | sort | tr '\\n' ' '; ls /sys/bus/pci/devices | wc -l"))
	if err != nil || exit.Code != 0 || !strings.Contains(out, "virtio:d00000002") || !strings.Contains(out, "virtio:d00000003") {
		t.Fatalf("out %q exit %+v err %v", out, exit, err)
	}
}
