package vm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// Templates keeps, for each image and VM shape, a VM that was booted once
// and saved: restoring it takes a fraction of a cold boot. A clone gets
// its own disk overlay over the template's frozen disk and its own RNG
// seed and clock from the agent's setup.
type Templates struct {
	Dir string // e.g. GONDOLIN_HOME/templates
	// Prepare, when set, runs in a template VM after boot and before it
	// is saved: what it sets up (the network's address, a trusted CA) is
	// then in every clone.
	Prepare func(ctx context.Context, cfg Config, m *Machine, a *Agent) error
	// KeyExtra names what Prepare depends on beyond cfg (a CA's
	// fingerprint): a change makes a new template.
	KeyExtra func(cfg Config) string
}

// Template file names.
const (
	templateState = "state.zst"
	// templateDisk is the template VM's own overlay, kept where it was
	// made (layout.Disk) and frozen.
	templateDisk = layout.Disk
	templateLock = ".lock"
)

// templateFormat is bumped whenever QEMU's arguments or the template
// layout change, which invalidates every saved template.
const templateFormat = "5"

// ErrTemplateBusy means another process is building the template; the
// caller should boot cold instead of waiting.
var ErrTemplateBusy = errors.New("template is being built by another process")

// Key identifies the template for cfg: the image's files (blob paths are
// content addresses), the VM shape, the accelerator and the QEMU binary.
func (t *Templates) Key(cfg Config) string {
	cfg.fill()
	h := sha256.New()
	fmt.Fprintf(h, "format=%s\nkernel=%s\ninitramfs=%s\nbacking=%s:%s\ncpus=%d\nmem=%d\naccel=%s\nnet=%v\nqemu=%s\n",
		templateFormat, cfg.Kernel, cfg.Initramfs, cfg.Backing, cfg.BackingFormat,
		cfg.CPUs, cfg.MemoryMiB, cfg.Accel, cfg.Network, qemuIdentity())
	if t.KeyExtra != nil {
		fmt.Fprintf(h, "extra=%s\n", t.KeyExtra(cfg))
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// qemuIdentity changes when QEMU is upgraded, whose saved states need
// not load in a new version.
func qemuIdentity() string {
	p, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return "none"
	}
	st, err := os.Stat(p)
	if err != nil {
		return p
	}
	return fmt.Sprintf("%s:%d:%d", p, st.Size(), st.ModTime().UnixNano())
}

// Ready reports whether the template for cfg exists.
func (t *Templates) Ready(cfg Config) bool {
	_, err := os.Stat(filepath.Join(t.Dir, t.Key(cfg), templateState))
	return err == nil
}

// Clone starts a VM from the template for cfg, building the template
// first if there is none. cfg.Dir is the clone's run directory.
func (t *Templates) Clone(ctx context.Context, cfg Config, setup agentproto.Setup) (*Machine, *Agent, error) {
	if cfg.Restore != "" {
		return nil, nil, errors.New("vm: a clone cannot also restore another state")
	}
	dir := filepath.Join(t.Dir, t.Key(cfg))
	if _, err := os.Stat(filepath.Join(dir, templateState)); err != nil {
		if err := t.build(ctx, cfg, dir); err != nil {
			return nil, nil, err
		}
	}
	clone := cfg
	clone.Backing = filepath.Join(dir, templateDisk)
	clone.BackingFormat = "qcow2"
	clone.Restore = filepath.Join(dir, templateState)
	m, err := Start(ctx, clone)
	if err != nil {
		return nil, nil, err
	}
	a, err := m.ConnectAgent(ctx, setup)
	if err != nil {
		m.Kill()
		if ctx.Err() == nil {
			// A template that does not restore is broken (a QEMU
			// upgrade, a truncated file): drop it so the next run
			// rebuilds it.
			os.RemoveAll(dir)
		}
		return nil, nil, fmt.Errorf("restore template: %w", err)
	}
	return m, a, nil
}

// build boots cfg cold, lets the agent detach, saves the VM's state and
// publishes the directory with one rename.
func (t *Templates) build(ctx context.Context, cfg Config, dir string) (err error) {
	if err := layout.MkdirPrivate(t.Dir); err != nil {
		return err
	}
	lock, err := os.OpenFile(dir+templateLock, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return ErrTemplateBusy
	}
	defer os.Remove(dir + templateLock)
	if _, err := os.Stat(filepath.Join(dir, templateState)); err == nil {
		return nil // built by someone else while we looked
	}
	var rnd [4]byte
	rand.Read(rnd[:])
	tmp := dir + ".tmp" + hex.EncodeToString(rnd[:])
	if err := layout.MkdirPrivate(tmp); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	bootCfg := cfg
	bootCfg.Dir = tmp
	bootCfg.Restore = ""
	bootCfg.Detached = false
	m, err := Start(ctx, bootCfg)
	if err != nil {
		return fmt.Errorf("boot template: %w", err)
	}
	defer m.Kill()
	a, err := m.ConnectAgent(ctx, agentproto.Setup{})
	if err != nil {
		return fmt.Errorf("boot template: %w", err)
	}
	if t.Prepare != nil {
		if err := t.Prepare(ctx, bootCfg, m, a); err != nil {
			a.Close()
			return fmt.Errorf("prepare template: %w", err)
		}
	}
	// The saved guest must expect a new host: without this its agent
	// would resume in the middle of this connection's session.
	if err := a.Detach(ctx); err != nil {
		return fmt.Errorf("template detach: %w", err)
	}
	// Give the agent a moment to see the connection go, so that the
	// state is saved with it already waiting for the next handshake.
	time.Sleep(20 * time.Millisecond)
	if err := m.SaveState(ctx, filepath.Join(tmp, templateState)); err != nil {
		return fmt.Errorf("save template: %w", err)
	}
	m.Kill()
	RemoveRuntimeFiles(tmp)
	os.Remove(filepath.Join(tmp, layout.QEMULog))
	os.Remove(filepath.Join(tmp, layout.ConsoleLog))
	// The clones' overlays sit on this disk: it must never change.
	os.Chmod(filepath.Join(tmp, templateDisk), 0o400)
	if err := os.Rename(tmp, dir); err != nil {
		return err
	}
	return nil
}

// Remove deletes every template (they are rebuilt on demand).
func (t *Templates) Remove() error { return os.RemoveAll(t.Dir) }
