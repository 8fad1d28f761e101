package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// runtimeFiles are what a running QEMU makes in its run directory.
var runtimeFiles = []string{layout.AgentSocket, layout.QMPSocket, layout.FSSocket, layout.NetSocket, layout.QEMUPid}

// RemoveRuntimeFiles removes a gone QEMU's sockets and pid file from its
// run directory (its disk and logs stay).
func RemoveRuntimeFiles(dir string) {
	for _, name := range runtimeFiles {
		os.Remove(filepath.Join(dir, name))
	}
}

// Machine is one running QEMU process.
type Machine struct {
	cfg Config
	pid int
	// consoleMu guards consoleFrom: where the next wait for the guest
	// starts to read its console. The first wait reads everything since
	// QEMU started (or, for a VM taken over, since adoption); later ones
	// read only what comes after they start, so that old output (a
	// warning, something a program printed) never ends a new wait.
	consoleMu   sync.Mutex
	consoleFrom int64
	consoleUsed bool

	exited  chan struct{}
	exitErr error

	qmpMu sync.Mutex
	qmp   *monitor
}

// ErrExited means QEMU is no longer running.
var ErrExited = errors.New("vm exited")

// Start launches QEMU for cfg and returns once its sockets accept
// connections. The guest is still booting (or restoring) then; use
// ConnectAgent to wait for it.
func Start(ctx context.Context, cfg Config) (*Machine, error) {
	cfg.fill()
	m, err := start(ctx, cfg)
	if err != nil && cfg.MachineType == MicroVM && strings.Contains(err.Error(), "machine type") {
		// A QEMU built without microvm: the same VM on q35 boots slower
		// but works.
		cfg.MachineType = Q35
		return start(ctx, cfg)
	}
	return m, err
}

func start(ctx context.Context, cfg Config) (*Machine, error) {
	cmd, logFile, err := prepare(ctx, cfg)
	if err != nil {
		return nil, &HostError{Err: err}
	}
	err = cmd.Start()
	logFile.Close()
	if err != nil {
		return nil, &HostError{Err: fmt.Errorf("start qemu: %w", err)}
	}
	m := &Machine{cfg: cfg, pid: cmd.Process.Pid, exited: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		m.exitErr = m.describeExit(err)
		close(m.exited)
	}()
	go m.capConsole()
	if err := m.waitSockets(ctx); err != nil {
		m.Kill()
		return nil, err
	}
	if cfg.Restore != "" {
		if err := m.finishRestore(ctx); err != nil {
			m.Kill()
			return nil, err
		}
	}
	return m, nil
}

// HostError is a failure on the host before QEMU ran (a missing tool, a
// full disk, no more processes): nothing the guest or a saved state did.
type HostError struct{ Err error }

func (e *HostError) Error() string { return e.Err.Error() }
func (e *HostError) Unwrap() error { return e.Err }

// prepare checks cfg, makes the disk overlay and the log, and returns
// the QEMU command to start.
func prepare(ctx context.Context, cfg Config) (*exec.Cmd, *os.File, error) {
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	qemu, err := LookTool("qemu-system-x86_64")
	if err != nil {
		return nil, nil, err
	}
	if cfg.Restore != "" {
		if _, err := LookTool("zstd"); err != nil {
			return nil, nil, err
		}
	}
	if cfg.Backing != "" {
		if err := createOverlay(ctx, cfg.path(layout.Disk), cfg.Backing, cfg.BackingFormat); err != nil {
			return nil, nil, err
		}
	}
	// A reused run directory may hold a previous QEMU's sockets: waiting
	// for them to appear must not find the stale ones. Its console log
	// is appended to: each QEMU starts a new one.
	RemoveRuntimeFiles(cfg.Dir)
	os.Remove(cfg.path(layout.ConsoleLog))
	os.Remove(cfg.path(layout.ConsoleLogOld))
	logFile, err := os.OpenFile(cfg.path(layout.QEMULog), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(qemu, qemuArgs(cfg, hostTSCKHz())...)
	// A session's QEMU outlives the command that made it: only PATH (its
	// exec: migrations run zstd) and TMPDIR of that environment go along.
	cmd.Env = qemuEnv(os.Environ())
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own session: a Ctrl-C meant for the user's command must not
	// reach QEMU, and a detached VM has no controlling terminal to lose.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if !cfg.Detached {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	return cmd, logFile, nil
}

// qemuEnv is QEMU's environment: PATH and TMPDIR of environ, nothing
// else (a secret exported for the command that starts it included).
func qemuEnv(environ []string) []string {
	var env []string
	for _, kv := range environ {
		if strings.HasPrefix(kv, "PATH=") || strings.HasPrefix(kv, "TMPDIR=") {
			env = append(env, kv)
		}
	}
	return env
}

func createOverlay(ctx context.Context, path, backing, format string) error {
	qemuImg, err := LookTool("qemu-img")
	if err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, qemuImg, "create", "-q", "-f", "qcow2", "-F", format, "-b", backing, path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("create disk overlay: %v: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

func (m *Machine) waitSockets(ctx context.Context) error {
	for _, name := range []string{layout.AgentSocket, layout.QMPSocket} {
		for {
			if _, err := os.Stat(m.cfg.path(name)); err == nil {
				break
			}
			select {
			case <-m.exited:
				return m.exitErr
			case <-ctx.Done():
				return fmt.Errorf("qemu did not start: %w", ctx.Err())
			case <-time.After(2 * time.Millisecond):
			}
		}
	}
	return nil
}

// describeExit turns QEMU's exit into an error that carries the last
// thing QEMU said.
func (m *Machine) describeExit(waitErr error) error {
	msg := "qemu exited"
	if waitErr != nil {
		msg = "qemu exited: " + waitErr.Error()
	}
	if b, err := os.ReadFile(m.cfg.path(layout.QEMULog)); err == nil {
		if last := lastLine(b); last != "" {
			msg += ": " + last
		}
	}
	return fmt.Errorf("%w (%s)", ErrExited, msg)
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// PID is QEMU's process ID.
func (m *Machine) PID() int { return m.pid }

// Config returns the machine's configuration.
func (m *Machine) Config() Config { return m.cfg }

// Exited is closed when QEMU has exited.
func (m *Machine) Exited() <-chan struct{} { return m.exited }

// ExitErr says why QEMU exited; valid after Exited is closed.
func (m *Machine) ExitErr() error { return m.exitErr }

// ConnectAgent waits for the guest agent, handshakes and sends the guest
// its setup (time, entropy, hostname). A VM that exits or whose console
// shows a crash meanwhile fails at once with the reason, and a guest that
// never answers fails when ctx ends, with the end of its console log.
func (m *Machine) ConnectAgent(ctx context.Context, setup agentproto.Setup) (*Agent, error) {
	gctx, cancel := m.guard(ctx)
	defer cancel()
	a, err := DialAgent(gctx, m.cfg.path(layout.AgentSocket))
	if err == nil {
		err = a.Setup(gctx, setup)
		if err != nil {
			a.Close()
		}
	}
	if err != nil {
		if gerr := m.guestError(gctx, err); gerr != err {
			return nil, gerr
		}
		return nil, fmt.Errorf("guest agent did not answer: %w%s", err, m.consoleHint())
	}
	return a, nil
}

// consoleHint quotes the end of the serial console, where a kernel panic
// or an agent's complaint would be: its last lines, made safe to print.
func (m *Machine) consoleHint() string {
	tail := ConsoleTail(m.cfg.Dir, 4<<10)
	var lines []string
	for _, l := range strings.Split(string(tail), "\n") {
		if p := printable([]byte(l)); p != "" {
			lines = append(lines, p)
		}
	}
	if len(lines) == 0 {
		return ""
	}
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return "; console: " + strings.Join(lines, " | ")
}

// Kill stops QEMU at once and waits for it to exit.
func (m *Machine) Kill() error {
	select {
	case <-m.exited: // reaped already: its pid may be another process's now
	default:
		syscall.Kill(m.pid, syscall.SIGKILL)
	}
	<-m.exited
	m.closeQMP()
	return nil
}

// Stop shuts the guest down through its agent (when given) and waits up
// to grace for QEMU to exit, then asks QMP to quit, then kills it.
func (m *Machine) Stop(ctx context.Context, a *Agent, grace time.Duration) error {
	if a != nil {
		sctx, cancel := context.WithTimeout(ctx, grace)
		a.Shutdown(sctx)
		cancel()
		select {
		case <-m.exited:
			return nil
		case <-time.After(grace):
		}
	}
	qctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if mon, err := m.monitor(qctx); err == nil {
		mon.run(qctx, "quit", nil, nil)
	}
	select {
	case <-m.exited:
		m.closeQMP()
		return nil
	case <-time.After(time.Second):
	}
	return m.Kill()
}

func (m *Machine) monitor(ctx context.Context) (*monitor, error) {
	m.qmpMu.Lock()
	defer m.qmpMu.Unlock()
	if m.qmp != nil && !m.qmp.broken.Load() {
		return m.qmp, nil
	}
	if m.qmp != nil {
		m.qmp.close() // a call was cut off: start afresh
		m.qmp = nil
	}
	mon, err := dialQMP(ctx, m.cfg.path(layout.QMPSocket))
	if err != nil {
		return nil, err
	}
	m.qmp = mon
	return mon, nil
}

func (m *Machine) closeQMP() {
	m.qmpMu.Lock()
	defer m.qmpMu.Unlock()
	if m.qmp != nil {
		m.qmp.close()
		m.qmp = nil
	}
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
