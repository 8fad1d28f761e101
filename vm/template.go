package vm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/internal/atomicfile"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/vm/agentproto"
	"golang.org/x/sys/unix"
)

// Templates keeps, for each image and VM shape, a VM that was booted once
// and saved: restoring it takes a fraction of a cold boot. A clone gets
// its own disk overlay over the template's frozen disk and its own RNG
// seed and clock from the agent's setup.
//
// A template is saved from a known state (the agent parked, the vCPUs
// stopped: see state.go for why) and published only after a clone of it
// has been restored, has answered the handshake and has run a command. A
// template whose clone later fails anyway is moved aside into broken/
// with the reason, so that it is rebuilt instead of failing every run.
type Templates struct {
	Dir string // e.g. GONDOLIN_HOME/templates
	// Prepare, when set, runs in a template VM after boot and before it
	// is saved: what it sets up (the network's address, a trusted CA) is
	// then in every clone.
	Prepare func(ctx context.Context, cfg Config, m *Machine, a *Agent) error
	// KeyExtra names what Prepare depends on beyond cfg (a CA's
	// fingerprint): a change makes a new template.
	KeyExtra func(cfg Config) string
	// Label names what a template is made from (an image's references),
	// for listings.
	Label func(cfg Config) string
}

// Template file names.
const (
	templateState = layout.SavedState
	// templateDisk is the template VM's own overlay, kept where it was
	// made (layout.Disk) and frozen.
	templateDisk    = layout.Disk
	templateInfo    = layout.TemplateInfo
	templateConsole = layout.TemplateConsole
	templateLock    = layout.TemplateLock
	brokenDir       = layout.TemplatesBroken
	brokenInfo      = layout.BrokenInfo
	// cloneConsole and cloneQEMULog are the console and QEMU log of the
	// clone that failed, kept with a broken template.
	cloneConsole = layout.BrokenCloneConsole
	cloneQEMULog = layout.BrokenCloneQEMULog
	// keepBroken is how many broken templates are kept for diagnosis.
	keepBroken = 3
	// A template that broke brokenLimit times within brokenBackoff is
	// not built again by Clone until the back-off has passed (Build
	// still builds it): each attempt costs a boot, and a QEMU or kernel
	// that cannot restore would otherwise cost one on every exec.
	brokenLimit   = 2
	brokenBackoff = 10 * time.Minute
)

// templateFormat is bumped whenever QEMU's arguments, the way a template
// is saved or the template layout change, which invalidates every saved
// template. 6: saved from a parked agent and stopped vCPUs, verified.
const templateFormat = "6"

// Deadlines for a template's own steps. A restore takes well under a
// second even on a slow day; a clone that has not answered in
// cloneTimeout is treated as broken so that its caller can still boot
// cold within its own deadline.
const (
	cloneTimeout  = 20 * time.Second
	verifyTimeout = 30 * time.Second
)

// Why Clone or Build gave no VM; in every case the caller should boot
// cold instead.
var (
	// ErrTemplateBusy: another process is building the template.
	ErrTemplateBusy = errors.New("template is being built by another process")
	// ErrTemplateBroken: a clone of the published template did not come
	// up; the template was moved aside and should be rebuilt.
	ErrTemplateBroken = errors.New("template is broken")
	// ErrTemplateBuild: the template could not be made, or failed its
	// check (it was moved aside with the reason).
	ErrTemplateBuild = errors.New("template could not be made")
	// ErrTemplateBackoff: builds of this template broke brokenLimit times
	// lately; none is tried until the back-off has passed.
	ErrTemplateBackoff = errors.New("template broke repeatedly; not building it again yet")
)

// TemplateError is a template failure (Kind, one of the errors above) and
// what caused it.
type TemplateError struct {
	Kind  error
	Cause error
}

func (e *TemplateError) Error() string   { return e.Kind.Error() + ": " + e.Cause.Error() }
func (e *TemplateError) Unwrap() []error { return []error{e.Kind, e.Cause} }

// TemplateState says where a template is in its life.
type TemplateState string

const (
	TemplateReady    TemplateState = "ready"
	TemplateBuilding TemplateState = "building"
	// TemplateStale was saved by an older gondolin (another format) or
	// never checked: it is not used; a new one is built and checked.
	TemplateStale TemplateState = "stale"
	// TemplateBroken was moved aside after a clone of it failed.
	TemplateBroken TemplateState = "broken"
)

// TemplateInfo describes one template: what template.json records, and
// its state when listed.
type TemplateInfo struct {
	Key       string        `json:"key"`
	State     TemplateState `json:"state"`
	Format    string        `json:"format,omitempty"`
	Label     string        `json:"label,omitempty"`
	CPUs      int           `json:"cpus,omitempty"`
	MemoryMiB int           `json:"memory_mib,omitempty"`
	Network   bool          `json:"network,omitempty"`
	Built     time.Time     `json:"built,omitzero"`
	// How long the build's steps took: the cold boot to the agent's
	// answer (and Prepare), the save of the stopped guest, and the check
	// of a clone.
	BootMS   int64 `json:"boot_ms,omitempty"`
	SaveMS   int64 `json:"save_ms,omitempty"`
	VerifyMS int64 `json:"verify_ms,omitempty"`
	// StateBytes is the size of the compressed saved state.
	StateBytes int64 `json:"state_bytes,omitempty"`
	// Agent is the protocol version of the image's guest agent: one
	// older than 2 cannot park, and its template is saved after its
	// session has had a moment to end instead.
	Agent    int  `json:"agent,omitempty"`
	Verified bool `json:"verified,omitempty"`
	// Reason and Broken say why and when a broken template was moved
	// aside; Dir is where it now is.
	Reason string    `json:"reason,omitempty"`
	Broken time.Time `json:"broken_at,omitzero"`
	Dir    string    `json:"dir,omitempty"`
}

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

// ErrTemplateNotReady: CloneReady found no checked template to clone.
var ErrTemplateNotReady = errors.New("no checked template yet")

// CloneReady is Clone for work in the background (a warm pool): it
// clones only a template that is ready, building none, and a clone that
// fails does not move the template aside, since a restore that is slow
// on a loaded host is no proof the template is broken (a foreground
// Clone that fails judges it). gen is the generation (see Generation)
// the clone came from.
func (t *Templates) CloneReady(ctx context.Context, cfg Config, setup agentproto.Setup) (m *Machine, a *Agent, gen string, err error) {
	if cfg.Restore != "" {
		return nil, nil, "", errors.New("vm: a clone cannot also restore another state")
	}
	gen = t.Generation(cfg)
	if gen == "" {
		return nil, nil, "", ErrTemplateNotReady
	}
	cctx, cancel := context.WithTimeout(ctx, cloneTimeout)
	defer cancel()
	m, a, err = t.restore(cctx, cfg, filepath.Join(t.Dir, t.Key(cfg)), setup)
	if err != nil {
		return nil, nil, "", err
	}
	if t.Generation(cfg) != gen { // replaced while it restored: which one is unknown
		a.Close()
		m.Kill()
		return nil, nil, "", errors.New("the template was replaced during the clone")
	}
	return m, a, gen, nil
}

// Generation names the saved template cfg's clones come from now: its
// key and the identity of its saved state, which a rebuild in place (a
// broken template replaced) changes. It is empty when there is no
// checked template. Clones made from an older generation are stale.
func (t *Templates) Generation(cfg Config) string {
	key := t.Key(cfg)
	dir := filepath.Join(t.Dir, key)
	info, err := readTemplate(dir)
	if err != nil || info.State != TemplateReady {
		return ""
	}
	st, err := os.Stat(filepath.Join(dir, templateState))
	if err != nil {
		return ""
	}
	var ino uint64
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		ino = sys.Ino
	}
	return fmt.Sprintf("%s:%d:%d", key, ino, st.ModTime().UnixNano())
}

// Ready reports whether a checked template for cfg exists.
func (t *Templates) Ready(cfg Config) bool {
	info, err := readTemplate(filepath.Join(t.Dir, t.Key(cfg)))
	return err == nil && info.State == TemplateReady
}

// readTemplate reads a published template's record. One without a
// record of this format that says it was checked is stale: templates of
// older gondolins have other keys (the format is part of the key), so
// this is a damaged or foreign directory, never used.
func readTemplate(dir string) (TemplateInfo, error) {
	info := TemplateInfo{Key: filepath.Base(dir)}
	if _, err := os.Stat(filepath.Join(dir, templateState)); err != nil {
		return info, err
	}
	b, err := os.ReadFile(filepath.Join(dir, templateInfo))
	if err == nil {
		err = json.Unmarshal(b, &info)
	}
	info.Key = filepath.Base(dir)
	info.State = TemplateStale
	if err == nil && info.Verified && info.Format == templateFormat {
		info.State = TemplateReady
	}
	return info, nil
}

// Clone starts a VM from the template for cfg, building the template
// first if there is none. cfg.Dir is the clone's run directory. A clone
// that does not come up moves the template aside (ErrTemplateBroken): the
// caller should boot cold, and the template is rebuilt by the next Clone
// or Build.
func (t *Templates) Clone(ctx context.Context, cfg Config, setup agentproto.Setup) (*Machine, *Agent, error) {
	if cfg.Restore != "" {
		return nil, nil, errors.New("vm: a clone cannot also restore another state")
	}
	key := t.Key(cfg)
	dir := filepath.Join(t.Dir, key)
	if info, err := readTemplate(dir); err != nil || info.State != TemplateReady {
		if err := t.Build(ctx, cfg); err != nil {
			return nil, nil, err
		}
	}
	// Which template this clone came from: by the time a slow clone
	// fails, another process may have moved that one aside and built a
	// good one in its place, which must not be blamed.
	saved, _ := os.Stat(filepath.Join(dir, templateState))
	cctx, cancel := context.WithTimeout(ctx, cloneTimeout)
	defer cancel()
	m, a, err := t.restore(cctx, cfg, dir, setup)
	if err == nil {
		return m, a, nil
	}
	var host *HostError
	if ctx.Err() != nil || errors.As(err, &host) {
		return nil, nil, err // the caller gave up, or the host failed: the template is not to blame
	}
	if now, serr := os.Stat(filepath.Join(dir, templateState)); serr == nil && saved != nil && os.SameFile(saved, now) {
		t.quarantine(key, dir, err, cfg.path(layout.ConsoleLog))
	}
	return nil, nil, &TemplateError{Kind: ErrTemplateBroken, Cause: fmt.Errorf("a clone did not restore: %w", err)}
}

// restore starts cfg from the template in dir and connects its agent.
// The clone's overlay is backed by a hard link to the template's disk in
// its own directory, so that moving the template aside (or deleting it)
// never breaks a VM that was cloned from it.
func (t *Templates) restore(ctx context.Context, cfg Config, dir string, setup agentproto.Setup) (*Machine, *Agent, error) {
	clone := cfg
	clone.Backing = linkTemplateDisk(filepath.Join(dir, templateDisk), cfg.path(layout.TemplateDisk))
	clone.BackingFormat = "qcow2"
	clone.Restore = filepath.Join(dir, templateState)
	m, err := Start(ctx, clone)
	if err != nil {
		return nil, nil, err
	}
	a, err := m.ConnectAgent(ctx, setup)
	if err != nil {
		m.Kill()
		return nil, nil, err
	}
	return m, a, nil
}

// linkTemplateDisk hard-links disk to link and returns the path the
// clone's overlay should name: the link, or disk itself when no link can
// be made (another filesystem).
func linkTemplateDisk(disk, link string) string {
	os.Remove(link)
	if err := os.Link(disk, link); err != nil {
		return disk
	}
	return link
}

// Build boots cfg cold, parks its agent, saves the stopped VM's state,
// checks that a clone of it runs a command, and publishes it. It returns
// at once when a checked template exists, and ErrTemplateBusy when
// another process is building it.
func (t *Templates) Build(ctx context.Context, cfg Config) error {
	key := t.Key(cfg)
	dir := filepath.Join(t.Dir, key)
	unlock, err := t.lock(key, cfg)
	if err != nil {
		return err
	}
	defer unlock()
	if info, err := readTemplate(dir); err == nil && info.State == TemplateReady {
		return nil // built by someone else while we looked
	}
	if n := t.brokenSince(key, time.Now().Add(-brokenBackoff)); n >= brokenLimit {
		return &TemplateError{Kind: ErrTemplateBackoff, Cause: fmt.Errorf("%d broke in the last %v", n, brokenBackoff)}
	}
	t.sweep(key)
	var rnd [4]byte
	rand.Read(rnd[:])
	tmp := dir + ".tmp" + hex.EncodeToString(rnd[:])
	if err := layout.MkdirPrivate(tmp); err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	info, err := t.save(ctx, cfg, tmp)
	if err != nil {
		var host *HostError
		if ctx.Err() != nil || errors.As(err, &host) {
			return err
		}
		// Kept with the reason and its console, and counted for the
		// back-off: an image whose template cannot be made is not booted
		// twice on every run.
		info.Key = key
		atomicfile.WriteJSON(filepath.Join(tmp, templateInfo), info, 0o600)
		t.quarantine(key, tmp, err, "") // with the boot's console
		return &TemplateError{Kind: ErrTemplateBuild, Cause: err}
	}
	// Recorded before the check, so that a template that fails it is
	// moved aside with what it is.
	info.Key = key
	if err := atomicfile.WriteJSON(filepath.Join(tmp, templateInfo), info, 0o600); err != nil {
		return err
	}
	start := time.Now()
	if err := t.verify(ctx, cfg, tmp, info.Agent); err != nil {
		var host *HostError
		if ctx.Err() != nil || errors.As(err, &host) {
			return err
		}
		t.quarantine(key, tmp, fmt.Errorf("its check failed: %w", err), "")
		return &TemplateError{Kind: ErrTemplateBuild, Cause: fmt.Errorf("the new template failed its check: %w", err)}
	}
	info.VerifyMS = time.Since(start).Milliseconds()
	info.Verified = true
	if err := atomicfile.WriteJSON(filepath.Join(tmp, templateInfo), info, 0o600); err != nil {
		return err
	}
	// A broken template that was moved aside leaves the name free; a
	// stale one is replaced (clones hold their own links to its disk).
	if _, err := os.Stat(dir); err == nil {
		if err := os.Rename(dir, tmp+".old"); err != nil {
			return err
		}
		defer os.RemoveAll(tmp + ".old")
	}
	if err := os.Rename(tmp, dir); err != nil {
		return err
	}
	ok = true
	return nil
}

// save boots the template VM in tmp and saves it there.
func (t *Templates) save(ctx context.Context, cfg Config, tmp string) (TemplateInfo, error) {
	cfg.fill()
	info := TemplateInfo{Format: templateFormat, CPUs: cfg.CPUs, MemoryMiB: cfg.MemoryMiB,
		Network: cfg.Network, Built: time.Now().UTC()}
	if t.Label != nil {
		info.Label = t.Label(cfg)
	}
	start := time.Now()
	bootCfg := cfg
	bootCfg.Dir = tmp
	bootCfg.Name = "gondolin-template"
	bootCfg.Restore = ""
	bootCfg.Detached = false
	m, err := Start(ctx, bootCfg)
	if err != nil {
		return info, fmt.Errorf("boot template: %w", err)
	}
	defer m.Kill()
	a, err := m.ConnectAgent(ctx, agentproto.Setup{})
	if err != nil {
		return info, fmt.Errorf("boot template: %w", err)
	}
	if t.Prepare != nil {
		if err := t.Prepare(ctx, bootCfg, m, a); err != nil {
			a.Close()
			return info, fmt.Errorf("prepare template: %w", err)
		}
	}
	pinfo, err := a.Ping(ctx)
	if err != nil {
		a.Close()
		return info, fmt.Errorf("template: %w", err)
	}
	info.Agent = pinfo.Version
	// The saved guest must expect a new host: it drops this session, and
	// the park proves it has (see agentproto).
	if err := a.Detach(ctx); err != nil {
		return info, fmt.Errorf("template detach: %w", err)
	}
	if info.Agent >= 2 {
		parked, err := m.ParkAgent(ctx)
		if err != nil {
			return info, fmt.Errorf("template: %w", err)
		}
		defer parked.Close()
	} else {
		// An agent from an older image cannot park: give its session a
		// moment to end. The stopped save still holds a state the guest
		// was really in, and the check below proves it restores.
		time.Sleep(legacyDetachWait)
	}
	info.BootMS = time.Since(start).Milliseconds()
	start = time.Now()
	if err := m.SaveState(ctx, filepath.Join(tmp, templateState)); err != nil {
		return info, fmt.Errorf("save template: %w", err)
	}
	info.SaveMS = time.Since(start).Milliseconds()
	m.Kill()
	RemoveRuntimeFiles(tmp)
	os.Remove(filepath.Join(tmp, layout.QEMULog))
	// The console of the template's boot stays, for diagnosis.
	os.Rename(filepath.Join(tmp, layout.ConsoleLog), filepath.Join(tmp, templateConsole))
	// The clones' overlays sit on this disk: it must never change.
	if err := os.Chmod(filepath.Join(tmp, templateDisk), 0o400); err != nil {
		return info, err
	}
	if st, err := os.Stat(filepath.Join(tmp, templateState)); err == nil {
		info.StateBytes = st.Size()
	}
	return info, nil
}

// legacyDetachWait is how long an agent that cannot park is given to end
// its session before its VM is saved.
const legacyDetachWait = 200 * time.Millisecond

// checkCommand is the command a template's check runs: the agent binary
// itself (every image has it), or for an agent too old to have a self
// check, true.
func checkCommand(agentVersion int) []string {
	if agentVersion >= 2 {
		return []string{"/proc/1/exe", agentproto.CheckArg}
	}
	return []string{"true"}
}

// verify restores a clone of the template in dir, in a scratch directory
// beside it, and has it run a command.
func (t *Templates) verify(ctx context.Context, cfg Config, dir string, agentVersion int) error {
	var rnd [4]byte
	rand.Read(rnd[:])
	scratch := filepath.Join(t.Dir, filepath.Base(dir)[:16]+".v"+hex.EncodeToString(rnd[:]))
	if err := layout.MkdirPrivate(scratch); err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	vctx, cancel := context.WithTimeout(ctx, verifyTimeout)
	defer cancel()
	clone := cfg
	clone.Dir = scratch
	clone.Name = "gondolin-template-check"
	clone.Detached = false
	m, a, err := t.restore(vctx, clone, dir, agentproto.Setup{Hostname: "gondolin-check"})
	if err != nil {
		keepCloneLogs(scratch, dir)
		return err
	}
	defer m.Kill()
	defer a.Close()
	gctx, gcancel := m.guard(vctx)
	defer gcancel()
	exit, err := a.Run(gctx, Command{Exec: agentproto.Exec{Argv: checkCommand(agentVersion)}})
	if _, ok := StartError(err); ok && agentVersion < 2 {
		err = nil // an image without true: the agent still ran the exec and said so
	} else if err == nil && exit.Code != 0 {
		err = fmt.Errorf("the check command exited %d", exit.Code)
	}
	if err != nil {
		keepCloneLogs(scratch, dir)
		return m.guestError(gctx, err)
	}
	return nil
}

// lock takes the template's build lock without waiting, and records in
// the lock file what is being built, for listings. The lock is an open
// file description lock (fcntl OFD), so that List can see it without
// taking it; the file itself stays, so that two processes can never lock
// two different files of one name.
func (t *Templates) lock(key string, cfg Config) (unlock func(), err error) {
	if err := layout.MkdirPrivate(t.Dir); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(t.Dir, key+templateLock), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		f.Close()
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return nil, ErrTemplateBusy
		}
		return nil, err
	}
	cfg.fill()
	what := TemplateInfo{Key: key, CPUs: cfg.CPUs, MemoryMiB: cfg.MemoryMiB, Network: cfg.Network, Built: time.Now().UTC()}
	if t.Label != nil {
		what.Label = t.Label(cfg)
	}
	if b, err := json.Marshal(what); err == nil {
		f.Truncate(0)
		f.WriteAt(b, 0)
	}
	return func() { f.Close() }, nil // closing the description releases the lock
}

// sweep removes what crashed builds of key left (run with its lock held).
func (t *Templates) sweep(key string) {
	for _, pattern := range []string{key + ".tmp*", key + ".v*"} {
		matches, _ := filepath.Glob(filepath.Join(t.Dir, pattern))
		for _, m := range matches {
			os.RemoveAll(m)
		}
	}
}

// quarantine moves a template that failed into broken/, with the reason
// and the failed clone's console, and keeps only the newest few there.
func (t *Templates) quarantine(key, dir string, reason error, console string) {
	bdir := filepath.Join(t.Dir, brokenDir)
	if err := layout.MkdirPrivate(bdir); err != nil {
		os.RemoveAll(dir)
		return
	}
	now := time.Now().UTC()
	dst := filepath.Join(bdir, key+"-"+now.Format(brokenStamp))
	if err := os.Rename(dir, dst); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			os.RemoveAll(dir)
		}
		return // another clone moved it first
	}
	if console != "" {
		keepCloneLogs(filepath.Dir(console), dst)
	}
	info, _ := readTemplateRecord(dst)
	info.Key, info.State, info.Reason, info.Broken = key, TemplateBroken, reason.Error(), now
	atomicfile.WriteJSON(filepath.Join(dst, brokenInfo), info, 0o600)
	entries, _ := os.ReadDir(bdir)
	sort.Slice(entries, func(i, j int) bool { return brokenTime(entries[i].Name()) > brokenTime(entries[j].Name()) })
	for i, e := range entries {
		if i >= keepBroken {
			os.RemoveAll(filepath.Join(bdir, e.Name()))
		}
	}
}

// brokenSince counts the broken templates of key moved aside after t.
func (t *Templates) brokenSince(key string, since time.Time) int {
	entries, _ := os.ReadDir(filepath.Join(t.Dir, brokenDir))
	n := 0
	for _, e := range entries {
		k, stamp, ok := strings.Cut(e.Name(), "-")
		if !ok || k != key {
			continue
		}
		if when, err := time.Parse(brokenStamp, stamp); err == nil && when.After(since) {
			n++
		}
	}
	return n
}

// brokenStamp is the time in a broken template's directory name.
const brokenStamp = "20060102T150405.000000"

func brokenTime(name string) string {
	_, stamp, _ := strings.Cut(name, "-")
	return stamp
}

// readTemplateRecord reads template.json alone.
func readTemplateRecord(dir string) (TemplateInfo, error) {
	var info TemplateInfo
	b, err := os.ReadFile(filepath.Join(dir, templateInfo))
	if err == nil {
		err = json.Unmarshal(b, &info)
	}
	return info, err
}

// keepCloneLogs keeps a failed clone's console and QEMU's own log (a
// state that does not load says why there) in dst.
func keepCloneLogs(cloneDir, dst string) {
	os.WriteFile(filepath.Join(dst, cloneConsole), ConsoleTail(cloneDir, 64<<10), 0o600)
	keepConsole(filepath.Join(cloneDir, layout.QEMULog), filepath.Join(dst, cloneQEMULog))
}

// keepConsole copies the end of a log (at most 64 KiB) to dst; an empty
// copy says the clone printed nothing.
func keepConsole(src, dst string) {
	os.WriteFile(dst, consoleTail(src, 64<<10), 0o600)
}

// List describes every template: the published ones, those being built
// and those moved aside as broken (newest first).
func (t *Templates) List() ([]TemplateInfo, error) {
	entries, err := os.ReadDir(t.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return []TemplateInfo{}, nil
	}
	if err != nil {
		return nil, err
	}
	list := []TemplateInfo{}
	for _, e := range entries {
		name := e.Name()
		switch {
		case e.IsDir() && isKey(name):
			if info, err := readTemplate(filepath.Join(t.Dir, name)); err == nil {
				info.Dir = filepath.Join(t.Dir, name)
				list = append(list, info)
			}
		case strings.HasSuffix(name, templateLock) && isKey(strings.TrimSuffix(name, templateLock)):
			if info, ok := building(filepath.Join(t.Dir, name)); ok {
				list = append(list, info)
			}
		}
	}
	broken, _ := os.ReadDir(filepath.Join(t.Dir, brokenDir))
	sort.Slice(broken, func(i, j int) bool { return brokenTime(broken[i].Name()) > brokenTime(broken[j].Name()) })
	for _, e := range broken {
		dir := filepath.Join(t.Dir, brokenDir, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, brokenInfo))
		if err != nil {
			continue
		}
		var info TemplateInfo
		if json.Unmarshal(b, &info) == nil {
			info.State, info.Dir = TemplateBroken, dir
			list = append(list, info)
		}
	}
	return list, nil
}

// building reports the build a lock file records, if its lock is held.
// It only asks (F_OFD_GETLK): a listing never takes the lock, so it never
// makes a build find the template busy.
func building(lockPath string) (TemplateInfo, bool) {
	f, err := os.Open(lockPath)
	if err != nil {
		return TemplateInfo{}, false
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil || lk.Type == unix.F_UNLCK {
		return TemplateInfo{}, false
	}
	var info TemplateInfo
	b := make([]byte, 4096)
	n, _ := f.Read(b)
	json.Unmarshal(b[:n], &info)
	info.Key = strings.TrimSuffix(filepath.Base(lockPath), templateLock)
	info.State = TemplateBuilding
	return info, true
}

func isKey(s string) bool {
	if len(s) != 16 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// Remove deletes every template (they are rebuilt on demand). VMs cloned
// from them keep running: their disks hold their own links (see doc.go).
func (t *Templates) Remove() error { return os.RemoveAll(t.Dir) }
