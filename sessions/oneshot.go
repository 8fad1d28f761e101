package sessions

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/vm"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// ExecIO connects a guest command to the caller's side.
type ExecIO struct {
	Stdin          io.Reader // nil: the command reads /dev/null
	Stdout, Stderr io.Writer
	TTY            bool
	Rows, Cols     uint16
	// Signals are forwarded to the guest command's process group.
	Signals <-chan syscall.Signal
	// Resizes carry new terminal sizes for a TTY command.
	Resizes <-chan [2]uint16
	// Timeout, when set, sends SIGTERM after it and SIGKILL KillAfter later.
	Timeout   time.Duration
	KillAfter time.Duration
	// Resume runs the command in a VM resumed from this snapshot instead
	// of a fresh one.
	Resume string
	// Exited, when set, hears the command's outcome as soon as it is
	// known, before the VM is destroyed: a client need not wait for that.
	Exited func(code int, err error)
}

// Exec runs argv in a fresh VM made from spec, which is destroyed
// afterwards, and returns the command's exit code.
func (r *Runtime) Exec(ctx context.Context, spec *Spec, argv []string, eio ExecIO) (int, error) {
	if err := spec.Validate(); err != nil {
		return 0, err
	}
	if eio.Resume != "" {
		return r.execResumed(ctx, spec, argv, eio)
	}
	img, err := r.ResolveImage(spec)
	if err != nil {
		return 0, err
	}
	cfg, err := r.MachineConfig(ctx, spec, img, "")
	if err != nil {
		return 0, err
	}
	var w *warmVM
	booted := func() {}
	if !spec.Cold {
		w, booted = r.Pool.claim(cfg, spec)
	}
	defer booted()
	var dir string
	var release func()
	switch {
	case w != nil:
		// A claimed VM is detached (it could have become a session) and
		// its directory marked: a supervisor that dies now leaves it to
		// the next one's sweep.
		dir, release = w.dir, func() { os.RemoveAll(w.dir) }
		cfg.Detached = true
	case r.Pool != nil:
		// In the supervisor, a VM the pool could not give is made the
		// same way, so that the same sweep finds it.
		if _, dir, err = r.Pool.newDir(); err != nil {
			return 0, err
		}
		release = func() { os.RemoveAll(dir) }
		cfg.Detached = true
	default:
		// In exec's own process, the VM dies with it (see NewRunDir).
		if dir, release, err = r.NewRunDir(); err != nil {
			return 0, err
		}
	}
	defer release()
	if r.Debug {
		defer dumpConsole(dir)
	}
	applyImageConfig(spec, img)
	in, err := r.bootConfig(ctx, spec, withRunDir(cfg, dir), strings.Join(img.Refs, ","), w)
	booted()
	if err != nil {
		return 0, err
	}
	defer in.Kill() // disposable: no graceful shutdown needed
	return eio.run(ctx, in.Agent, spec, argv)
}

// execResumed is Exec in a VM resumed from the snapshot eio names.
func (r *Runtime) execResumed(ctx context.Context, spec *Spec, argv []string, eio ExecIO) (int, error) {
	dir, release, err := r.NewRunDir()
	if err != nil {
		return 0, err
	}
	defer release()
	if r.Debug {
		defer dumpConsole(dir)
	}
	plan, err := r.planResume(ctx, eio.Resume, dir)
	if err != nil {
		return 0, err
	}
	// A snapshot this home made keeps its recorded spec; a foreign one
	// gets the command line's (mounts and policy included).
	rs, err := plan.resumeSpec(*spec, spec.SecretValues())
	if err != nil {
		return 0, err
	}
	if plan.note != "" {
		r.notice(ctx, "gondolin: "+plan.note)
	}
	if !plan.foreign {
		rs.Env = append(rs.Env, spec.Env...)
	}
	rs.Cwd = spec.Cwd
	in, err := r.BootConfig(ctx, &rs, plan.cfg, "snapshot "+eio.Resume)
	if err != nil {
		return 0, err
	}
	defer in.Kill()
	return eio.run(ctx, in.Agent, &rs, argv)
}

// run is RunCommand, telling Exited.
func (eio ExecIO) run(ctx context.Context, a *vm.Agent, spec *Spec, argv []string) (int, error) {
	code, err := RunCommand(ctx, a, spec, argv, eio)
	if eio.Exited != nil {
		eio.Exited(code, err)
	}
	return code, err
}

// dumpConsole copies a VM's serial console to stderr (GONDOLIN_DEBUG).
func dumpConsole(dir string) {
	if b := vm.ConsoleTail(dir, 64<<10); len(b) > 0 {
		fmt.Fprintf(os.Stderr, "--- console %s ---\n%s--- end of console ---\n", dir, b)
	}
}

// RunCommand runs argv through a connected agent, forwarding signals and
// resizes, and returns its exit code (128+N when signal N killed it).
func RunCommand(ctx context.Context, a *vm.Agent, spec *Spec, argv []string, eio ExecIO) (int, error) {
	cmd := vm.Command{
		Exec: agentproto.Exec{
			Argv: argv, Env: spec.Env, Cwd: spec.Cwd,
			TTY: eio.TTY, Rows: eio.Rows, Cols: eio.Cols,
		},
		Stdin: eio.Stdin, Stdout: eio.Stdout, Stderr: eio.Stderr,
	}
	p, err := a.Start(ctx, cmd)
	if err != nil {
		if code, ok := vm.StartError(err); ok {
			return code, err
		}
		return 0, err
	}
	var timeout, kill <-chan time.Time
	if eio.Timeout > 0 {
		timeout = time.After(eio.Timeout)
	}
	for {
		select {
		case <-p.Done():
			exit, err := p.Wait()
			if err != nil {
				return 0, fmt.Errorf("guest command: %w", err)
			}
			return exit.Code, nil
		case sig := <-eio.Signals:
			p.Signal(ctx, int(sig))
		case size := <-eio.Resizes:
			p.Resize(ctx, size[0], size[1])
		case <-timeout:
			p.Signal(ctx, int(syscall.SIGTERM))
			grace := eio.KillAfter
			if grace <= 0 {
				grace = 2 * time.Second
			}
			kill = time.After(grace)
		case <-kill:
			p.Signal(ctx, int(syscall.SIGKILL))
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}
