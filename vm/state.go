package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Saving a VM's state: why the guest is stopped first.
//
// QEMU 7.2 (Debian 12's) loses guest writes when it migrates a running
// guest under TCG: the fast path that syncs the migration dirty bitmap
// clears a page's dirty bit without resetting the TCG TLB entries that
// let stores to that page skip dirty tracking, so a page the guest keeps
// writing after the first pass is never sent again (fixed upstream in
// QEMU 9.0, commit 03bfc2188f "physmem: Fix migration dirty bitmap
// coherency with TCG memory access"). The saved RAM then matches no
// instant of the guest: its restored copies die with "fatal error: unlock
// of unlocked lock" or "too many pages allocated in chunk?" in the Go
// runtime, or a silent kernel panic, in a varying share of saves
// depending on what the guest was doing during the copy. A guest whose
// vCPUs are stopped writes nothing, so every save stops them first
// (QMP stop) and the whole state is copied from one instant.

// saveFD names the pipe QEMU writes a saved state into.
const saveFD = "gondolin-save"

// migrateBandwidth lifts QEMU's default bandwidth cap (32 MiB/s), which
// would make a save take ~0.5 s.
const migrateBandwidth = 10_000_000_000

// SaveState stops the guest's vCPUs and writes its RAM and device state
// to path, compressed with zstd, from that one instant (see above for
// why not while it runs). The VM is left stopped: call Resume to
// continue it, also when SaveState fails. Start resumes a VM restored
// from the file by itself.
func (m *Machine) SaveState(ctx context.Context, path string) error {
	zstd, err := LookTool("zstd")
	if err != nil {
		return err
	}
	mon, err := m.monitor(ctx)
	if err != nil {
		return m.qmpError(err)
	}
	if err := mon.run(ctx, "stop", nil, nil); err != nil {
		return m.qmpError(err)
	}
	if err := mon.run(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(migrateBandwidth)}, nil); err != nil {
		return m.qmpError(err)
	}
	tmp := path + ".partial"
	os.Remove(tmp)
	// The compressor is this process's child, not QEMU's: its exit says
	// when the file is complete, which QEMU's "completed" does not (QEMU
	// reports it before it closes the stream).
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	var zerr bytes.Buffer
	z := exec.Command(zstd, "-1", "-q", "-f", "-o", tmp)
	z.Stdin, z.Stderr = r, &zerr
	z.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := z.Start(); err != nil {
		r.Close()
		w.Close()
		return fmt.Errorf("start zstd: %w", err)
	}
	r.Close()
	zdone := make(chan error, 1)
	go func() { zdone <- z.Wait() }()
	fail := func(err error) error {
		w.Close()
		z.Process.Kill()
		<-zdone
		os.Remove(tmp)
		if msg := bytes.TrimSpace(zerr.Bytes()); len(msg) > 0 {
			return fmt.Errorf("%w (zstd: %s)", err, msg)
		}
		return err
	}
	if err := mon.runWithFile(ctx, "getfd", map[string]any{"fdname": saveFD}, w, nil); err != nil {
		return fail(m.qmpError(err))
	}
	w.Close() // QEMU holds its own copy; the compressor sees EOF when QEMU closes it
	if err := mon.run(ctx, "migrate", map[string]any{"uri": "fd:" + saveFD}, nil); err != nil {
		m.cleanupQMP(func(c context.Context, mon *monitor) { mon.run(c, "closefd", map[string]any{"fdname": saveFD}, nil) })
		return fail(m.qmpError(err))
	}
	if err := m.waitMigration(ctx, mon); err != nil {
		return fail(err)
	}
	select {
	case err := <-zdone:
		if err != nil {
			os.Remove(tmp)
			return fmt.Errorf("save vm state: zstd: %v: %s", err, bytes.TrimSpace(zerr.Bytes()))
		}
	case <-m.exited:
		return fail(m.exitErr)
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	if err := syncFile(tmp); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// cleanupTimeout bounds what is undone after a failure, when the
// caller's own context may have ended already.
const cleanupTimeout = 5 * time.Second

// cleanupQMP runs f on a monitor (the machine's, redialled if a cut-off
// call broke it) within cleanupTimeout.
func (m *Machine) cleanupQMP(f func(context.Context, *monitor)) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if mon, err := m.monitor(ctx); err == nil {
		f(ctx, mon)
	}
}

// waitMigration polls an outgoing migration until it ends. A migration
// the caller gives up on is cancelled, and waited for, so that the VM
// can be resumed afterwards.
func (m *Machine) waitMigration(ctx context.Context, mon *monitor) error {
	for {
		st, err := m.migrationStatus(ctx, mon)
		if err != nil {
			if ctx.Err() != nil {
				m.cancelMigration()
			}
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("save vm state: migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			m.cancelMigration()
			return ctx.Err()
		case <-m.exited:
			return m.exitErr
		case <-time.After(5 * time.Millisecond):
		}
	}
}

type migrationState struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
}

func (m *Machine) migrationStatus(ctx context.Context, mon *monitor) (migrationState, error) {
	var st migrationState
	if err := mon.run(ctx, "query-migrate", nil, &st); err != nil {
		return st, m.qmpError(err)
	}
	return st, nil
}

// cancelMigration cancels an outgoing migration and waits, within
// cleanupTimeout, for it to stop.
func (m *Machine) cancelMigration() {
	m.cleanupQMP(func(ctx context.Context, mon *monitor) {
		mon.run(ctx, "migrate_cancel", nil, nil)
		for ctx.Err() == nil {
			st, err := m.migrationStatus(ctx, mon)
			if err != nil {
				return
			}
			switch st.Status {
			case "completed", "failed", "cancelled", "none":
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

// finishRestore waits for an incoming state to be loaded and starts the
// guest: a state saved from a stopped guest (all of ours) loads stopped.
func (m *Machine) finishRestore(ctx context.Context) error {
	mon, err := m.monitor(ctx)
	if err != nil {
		return m.qmpError(err)
	}
	for {
		status, err := m.runState(ctx, mon)
		if err != nil {
			return err
		}
		switch status {
		case "inmigrate":
		case "paused", "postmigrate":
			return mon.run(ctx, "cont", nil, nil)
		case "running":
			return nil // saved by an older gondolin from a running guest
		default:
			return fmt.Errorf("restore vm state: qemu is %q", status)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("restore vm state: %w", ctx.Err())
		case <-m.exited:
			return m.exitErr
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// qmpError explains a failed QMP call: QEMU closing its monitor usually
// means it is exiting (a state that does not load), and its exit says why.
// A call the caller cut off is just that.
func (m *Machine) qmpError(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	select {
	case <-m.exited:
		return m.exitErr
	case <-time.After(time.Second):
		return err
	}
}

// runState is QEMU's run state ("running", "paused", "inmigrate"...).
func (m *Machine) runState(ctx context.Context, mon *monitor) (string, error) {
	var st struct {
		Status string `json:"status"`
	}
	if err := mon.run(ctx, "query-status", nil, &st); err != nil {
		return "", m.qmpError(err)
	}
	if st.Status == "" {
		return "", errors.New("qmp query-status: no status")
	}
	return st.Status, nil
}

// Pause stops the guest's CPUs; QEMU flushes its disk caches to the image
// files before it returns, so they can be copied.
func (m *Machine) Pause(ctx context.Context) error {
	return m.runCommand(ctx, "stop")
}

// Resume continues a paused VM.
func (m *Machine) Resume(ctx context.Context) error {
	return m.runCommand(ctx, "cont")
}

// runCommand runs a QMP command that takes no arguments and returns
// nothing, reporting a failure as qmpError does.
func (m *Machine) runCommand(ctx context.Context, command string) error {
	mon, err := m.monitor(ctx)
	if err == nil {
		err = mon.run(ctx, command, nil, nil)
	}
	if err != nil {
		return m.qmpError(err)
	}
	return nil
}
