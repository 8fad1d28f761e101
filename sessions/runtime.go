package sessions

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/imagestore"
	"github.com/gondolin/gondolin/internal/atomicfile"
	"github.com/gondolin/gondolin/internal/contain"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/progress"
	"github.com/gondolin/gondolin/mounts"
	"github.com/gondolin/gondolin/netpolicy"
	"github.com/gondolin/gondolin/netpolicy/ca"
	"github.com/gondolin/gondolin/snapshots"
	"github.com/gondolin/gondolin/vm"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// Runtime turns Specs into running VMs: it resolves images, picks the
// accelerator and clones templates.
type Runtime struct {
	Home      layout.Home
	Images    *imagestore.Store
	Templates *vm.Templates
	Snapshots *snapshots.Store
	Debug     bool
	// BootTimeout bounds a boot or restore up to the agent's first answer.
	BootTimeout time.Duration
	// Status, when set, shows what a slow start is doing (on a terminal).
	Status *progress.Status
	// Notice, when set, receives one-line notes the user should see
	// although the run goes on (a template that broke). Without it they
	// go to stderr.
	Notice func(msg string)
	// RebuildTemplate, when set, is asked to rebuild the template for
	// spec in the background after a clone of it failed; without it the
	// next run that needs the template builds it.
	RebuildTemplate func(spec Spec)
	// GuestPanic, when set, hears of a panic contained in code that
	// served the VM in run directory dir (see internal/contain); without
	// it the panic goes to stderr.
	GuestPanic func(dir string, pe *contain.PanicError)
	// Log, when set, receives what the VMs' networks, ingress routes and
	// SSH endpoints log: a panic contained to one guest connection,
	// with its stack, among others. Without it that is dropped.
	Log *slog.Logger
	// Pool, when set (in the supervisor), serves exec and new sessions
	// VMs restored ahead of need.
	Pool *Pool

	accelOnce sync.Once
	accel     vm.Accel
	accelErr  error

	caOnce sync.Once
	ca     *ca.CA
	caErr  error
}

// NewRuntime opens the state under home.
func NewRuntime(home layout.Home) (*Runtime, error) {
	if _, _, err := vm.ParseAccel(os.Getenv(layout.EnvAccel)); err != nil {
		return nil, invalidf("%v", err)
	}
	if err := layout.MkdirPrivate(string(home)); err != nil {
		return nil, fmt.Errorf("create %s: %w", home, err)
	}
	images, err := imagestore.Open(home.Images())
	if err != nil {
		return nil, err
	}
	r := &Runtime{
		Home:        home,
		Images:      images,
		Templates:   &vm.Templates{Dir: home.Templates()},
		Snapshots:   &snapshots.Store{Dir: home.Snapshots()},
		Debug:       os.Getenv(layout.EnvDebug) != "",
		BootTimeout: 60 * time.Second,
	}
	r.Templates.Prepare = r.prepareTemplate
	r.Templates.KeyExtra = r.templateKeyExtra
	r.Templates.Label = r.templateLabel
	return r, nil
}

// ResolveImage finds the spec's image (or the default one).
func (r *Runtime) ResolveImage(spec *Spec) (*imagestore.Image, error) {
	ref := spec.Image
	if ref == "" {
		ref = os.Getenv(layout.EnvDefaultImage)
	}
	if ref == "" {
		ref = layout.DefaultImage
	}
	return r.Images.Resolve(ref)
}

// applyImageConfig gives spec what a pulled image's own config says: its
// environment (PATH included) under the spec's own, and its working
// directory unless the spec names one.
func applyImageConfig(spec *Spec, img *imagestore.Image) {
	oci := img.Manifest.OCI
	if oci == nil {
		return
	}
	if len(oci.Env) > 0 {
		spec.Env = append(append([]string{}, oci.Env...), spec.Env...)
	}
	if spec.Cwd == "" && oci.WorkingDir != "" {
		spec.Cwd = oci.WorkingDir
	}
}

// MachineConfig is the VM configuration for spec in run directory dir.
func (r *Runtime) MachineConfig(ctx context.Context, spec *Spec, img *imagestore.Image, dir string) (vm.Config, error) {
	accel, err := r.Accel(ctx, img)
	if err != nil {
		return vm.Config{}, err
	}
	return vm.Config{
		Dir:       dir,
		Name:      "gondolin-" + filepath.Base(dir),
		Kernel:    img.KernelPath(),
		Initramfs: img.InitramfsPath(),
		Backing:   img.RootfsPath(),
		Network:   !spec.NoNetwork,
		CPUs:      spec.CPUs,
		MemoryMiB: spec.MemoryMiB,
		Accel:     accel,
		Debug:     r.Debug,
	}, nil
}

// Instance is a running VM and what its owner holds for it: the agent
// connection and the mediated network.
type Instance struct {
	Machine *vm.Machine
	Agent   *vm.Agent
	Net     *netpolicy.Network // nil without a network
	FS      *mounts.Server     // nil without host mounts
}

// Kill stops the VM at once and releases everything.
func (in *Instance) Kill() {
	if in.Agent != nil {
		in.Agent.Close()
	}
	in.Machine.Kill()
	if in.Net != nil {
		in.Net.Close()
	}
	if in.FS != nil {
		in.FS.Close()
	}
}

// BootConfig starts the VM cfg describes with spec's network; what names
// its image for the status line.
func (r *Runtime) BootConfig(ctx context.Context, spec *Spec, cfg vm.Config, what string) (*Instance, error) {
	return r.bootConfig(ctx, spec, cfg, what, nil)
}

// bootConfig is BootConfig, with a VM claimed from the warm pool (in
// cfg.Dir) to use instead of a clone when w is set.
func (r *Runtime) bootConfig(ctx context.Context, spec *Spec, cfg vm.Config, what string, w *warmVM) (*Instance, error) {
	dir := cfg.Dir
	ctx, cancel := context.WithTimeout(ctx, r.BootTimeout)
	defer cancel()
	in := &Instance{}
	setup := agentproto.Setup{Hostname: spec.hostname(dir)}
	fail := func(err error) (*Instance, error) {
		if in.Machine != nil {
			in.Kill()
		} else if in.Net != nil {
			in.Net.Close()
		}
		return nil, err
	}
	if cfg.Network {
		n, err := r.NewNetwork(spec.policy(), dir)
		if err != nil {
			if w != nil {
				w.a.Close()
				w.m.Kill()
			}
			return nil, err
		}
		in.Net = n
		setup.Env = n.GuestEnv()
	}
	if w != nil {
		setPhase(ctx, PhaseWarm)
		if err := claimWarm(ctx, w, setup); err == nil {
			in.Machine, in.Agent = w.m, w.a
		} else {
			// A pool VM that died or wedged while it waited costs only
			// its claim: this run clones or boots in its place.
			w.a.Close()
			w.m.Kill()
			cleanRunDir(dir)
			if r.Log != nil {
				r.Log.Warn("warm pool VM did not resume", "dir", dir, "err", err)
			}
		}
	}
	if hm := spec.hostMounts(); len(hm) > 0 {
		// A path named on another machine (a context's client) is
		// resolved and pinned here; one pinned already is checked.
		if err := mounts.PinRoots(spec.Mounts); err != nil {
			return fail(invalidf("%v", err))
		}
		hm = spec.hostMounts()
		srv, err := mounts.NewServer(hm, nil)
		if err != nil {
			return fail(err)
		}
		in.FS = srv
	}
	defer r.clearStatus(ctx)
	// A restored VM (a live snapshot) comes back with its guest already
	// configured, as a template's clone (warm or not) does.
	cloned := in.Machine != nil
	if !cloned && !spec.Cold && cfg.Restore == "" {
		if !r.Templates.Ready(cfg) {
			setPhase(ctx, PhaseTemplate)
			r.show(ctx, fmt.Sprintf("gondolin: preparing a template of %s (once per image and VM shape)...", what))
		} else {
			setPhase(ctx, PhaseClone)
		}
		m, a, err := r.Templates.Clone(ctx, cfg, setup)
		switch {
		case err == nil:
			in.Machine, in.Agent, cloned = m, a, true
		case ctx.Err() != nil:
			return fail(err)
		default:
			// A template that cannot be built or restored never stops a
			// run: fall back to a cold boot, in a clean directory.
			r.templateFailed(ctx, spec, cfg, what, err)
			cleanRunDir(dir)
		}
	}
	if !cloned {
		if cfg.Restore != "" {
			setPhase(ctx, PhaseRestore)
			r.show(ctx, "gondolin: restoring "+what+"...")
		} else {
			setPhase(ctx, PhaseBooting)
			r.show(ctx, "gondolin: booting "+what+"...")
		}
		m, err := vm.Start(ctx, cfg)
		if err != nil {
			return fail(err)
		}
		in.Machine = m
		a, err := m.ConnectAgent(ctx, setup)
		if err != nil {
			return fail(err)
		}
		in.Agent = a
	}
	if in.FS != nil {
		if err := r.serveMounts(ctx, in.FS, dir); err != nil {
			return fail(err)
		}
	}
	// A restored guest still has its mounts; anything else mounts now.
	if cfg.Restore == "" {
		for _, m := range spec.Mounts {
			if err := in.Agent.Mount(ctx, *m.AgentMount()); err != nil {
				return fail(fmt.Errorf("mount %s: %w", m.GuestPath, err))
			}
		}
	}
	if in.Net != nil {
		if err := attachNetwork(ctx, in.Net, dir); err != nil {
			return fail(err)
		}
		// A clone's guest was configured in its template; a cold boot
		// configures its network now.
		if !cloned && cfg.Restore == "" {
			if err := in.Agent.Network(ctx, guestNetwork(in.Net)); err != nil {
				return fail(fmt.Errorf("guest network: %w", err))
			}
		}
	}
	return in, nil
}

// templateFailed says why a run boots cold instead of cloning: a note
// when a template broke or could not be made (and a rebuild request when
// a published one broke); nothing for a build in progress elsewhere or a
// back-off, whose note was given when the template broke.
func (r *Runtime) templateFailed(ctx context.Context, spec *Spec, cfg vm.Config, what string, err error) {
	cause := err
	var te *vm.TemplateError
	if errors.As(err, &te) {
		cause = te.Cause
	}
	switch {
	case errors.Is(err, vm.ErrTemplateBroken):
		r.clearStatus(ctx)
		r.notice(ctx, fmt.Sprintf("gondolin: the saved template of %s broke (%v); booting cold while it is rebuilt", what, cause))
		if r.RebuildTemplate != nil {
			shape := spec.shape()
			if img := r.imageOf(cfg); img != nil {
				shape.Image = img.ID // what broke, whatever the supervisor's default image
			}
			r.RebuildTemplate(shape)
		}
	case errors.Is(err, vm.ErrTemplateBuild):
		r.clearStatus(ctx)
		r.notice(ctx, fmt.Sprintf("gondolin: could not make a template of %s (%v); booting cold", what, cause))
	case errors.Is(err, vm.ErrTemplateBusy), errors.Is(err, vm.ErrTemplateBackoff):
		if r.Debug {
			fmt.Fprintf(os.Stderr, "gondolin: template: %v; booting cold\n", err)
		}
	default:
		r.clearStatus(ctx)
		r.notice(ctx, fmt.Sprintf("gondolin: template of %s: %v; booting cold", what, err))
	}
}

// imageOf finds the image whose root disk cfg boots.
func (r *Runtime) imageOf(cfg vm.Config) *imagestore.Image {
	images, err := r.Images.List()
	if err != nil {
		return nil
	}
	for i := range images {
		if images[i].RootfsPath() == cfg.Backing {
			return &images[i]
		}
	}
	return nil
}

// notice shows msg to the user without stopping the run: to the
// caller's reporter (see WithReporter), else to Notice or stderr.
func (r *Runtime) notice(ctx context.Context, msg string) {
	switch rep := reporterOf(ctx); {
	case rep != nil:
		if rep.Notice != nil {
			rep.Notice(msg)
		}
	case r.Notice != nil:
		r.Notice(msg)
	default:
		fmt.Fprintln(os.Stderr, msg)
	}
}

// show puts msg on the status line of the caller's reporter, else of
// Status; "" clears it.
func (r *Runtime) show(ctx context.Context, msg string) {
	switch rep := reporterOf(ctx); {
	case rep != nil:
		if rep.Status != nil {
			rep.Status(msg)
		}
	case msg == "":
		r.Status.Clear()
	default:
		r.Status.Show(msg)
	}
}

func (r *Runtime) clearStatus(ctx context.Context) { r.show(ctx, "") }

func reporterOf(ctx context.Context) *Reporter {
	rep, _ := ctx.Value(reporterKey{}).(*Reporter)
	return rep
}

// Reporter receives what a boot tells its user: the status line of a
// slow start ("" clears it) and one-line notices. The supervisor relays
// them to the client a one-shot exec runs for.
type Reporter struct {
	Status func(msg string)
	Notice func(msg string)
}

type reporterKey struct{}

type phaseKey struct{}

// withPhase makes boots under ctx tell report each step they take (a
// Phase constant), so that the supervisor can show a session being made.
func withPhase(ctx context.Context, report func(phase string)) context.Context {
	return context.WithValue(ctx, phaseKey{}, report)
}

// setPhase tells ctx's phase reporter, if any, what the boot does now.
func setPhase(ctx context.Context, phase string) {
	if report, ok := ctx.Value(phaseKey{}).(func(string)); ok {
		report(phase)
	}
}

// WithReporter makes boots under ctx report to rep.
func WithReporter(ctx context.Context, rep *Reporter) context.Context {
	return context.WithValue(ctx, reporterKey{}, rep)
}

// TemplateConfig is the VM configuration spec's template is made for.
func (r *Runtime) TemplateConfig(ctx context.Context, spec *Spec) (vm.Config, error) {
	img, err := r.ResolveImage(spec)
	if err != nil {
		return vm.Config{}, err
	}
	return r.MachineConfig(ctx, spec, img, "")
}

// NewNetwork makes the mediated network for a policy, with the home's CA,
// for the VM in run directory dir. A panic that stops the whole network
// (see netpolicy.Options.OnPanic) is reported to the runtime's
// GuestPanic, as one in the VM's file server is.
func (r *Runtime) NewNetwork(p netpolicy.Policy, dir string) (*netpolicy.Network, error) {
	c, err := r.homeCA()
	if err != nil {
		return nil, err
	}
	return netpolicy.NewNetwork(netpolicy.Options{
		Policy:  p,
		CA:      c,
		Logger:  r.Log,
		OnPanic: func(pe *contain.PanicError) { r.guestPanic(dir, pe) },
	})
}

// homeCA loads (or creates) the home's CA once per process: every VM's
// network and every template key needs it.
func (r *Runtime) homeCA() (*ca.CA, error) {
	r.caOnce.Do(func() { r.ca, r.caErr = ca.LoadOrCreate(r.Home.CA()) })
	return r.ca, r.caErr
}

// attachNetwork connects a network stack to the VM's NIC socket.
func attachNetwork(ctx context.Context, n *netpolicy.Network, dir string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", filepath.Join(dir, layout.NetSocket))
	if err != nil {
		return fmt.Errorf("connect to the VM's network: %w", err)
	}
	return n.Attach(conn)
}

// serveMounts connects a host mount server to the VM's fs port. It
// serves in the background until the VM or the server goes; a panic in
// it (it answers the guest's requests), in its loop or in a request,
// which Serve returns, stops that server only and is reported to the
// runtime's GuestPanic.
func (r *Runtime) serveMounts(ctx context.Context, srv *mounts.Server, dir string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", filepath.Join(dir, layout.FSSocket))
	if err != nil {
		return fmt.Errorf("connect to the VM's file port: %w", err)
	}
	onPanic := func(pe *contain.PanicError) {
		srv.Close()
		r.guestPanic(dir, pe)
	}
	contain.Go("the file server", onPanic, func() {
		var pe *contain.PanicError
		if err := srv.Serve(conn); errors.As(err, &pe) {
			onPanic(pe)
		}
	})
	return nil
}

// guestPanic reports a contained panic in code that served the VM in
// dir.
func (r *Runtime) guestPanic(dir string, pe *contain.PanicError) {
	if r.GuestPanic != nil {
		r.GuestPanic(dir, pe)
		return
	}
	fmt.Fprintf(os.Stderr, "gondolin: %v\n%s", pe, pe.Stack)
}

// prepareTemplate configures a template VM's network (address by DHCP,
// the home's CA in its trust store) so that clones need not.
func (r *Runtime) prepareTemplate(ctx context.Context, cfg vm.Config, m *vm.Machine, a *vm.Agent) error {
	if !cfg.Network {
		return nil
	}
	n, err := r.NewNetwork(netpolicy.DefaultPolicy(), cfg.Dir)
	if err != nil {
		return err
	}
	defer n.Close()
	if err := attachNetwork(ctx, n, cfg.Dir); err != nil {
		return err
	}
	return a.Network(ctx, guestNetwork(n))
}

// guestNetwork is what the guest is told to trust: the TLS CA and the SSH
// proxy's host key CA (both fixed per GONDOLIN_HOME, so templates hold
// them).
func guestNetwork(n *netpolicy.Network) agentproto.Network {
	return agentproto.Network{CACert: n.CACertPEM(), SSHKnownHosts: n.SSHKnownHosts()}
}

// templateLabel names a template by its image's references.
func (r *Runtime) templateLabel(cfg vm.Config) string {
	img := r.imageOf(cfg)
	switch {
	case img == nil:
		return ""
	case len(img.Refs) == 0:
		return img.ID
	}
	return strings.Join(img.Refs, ",")
}

// templateKeyExtra ties networked templates to the home's CA, which they
// trust.
func (r *Runtime) templateKeyExtra(cfg vm.Config) string {
	if !cfg.Network {
		return ""
	}
	c, err := r.homeCA()
	if err != nil {
		return "no-ca"
	}
	sum := sha256.Sum256(c.CertPEM())
	return hex.EncodeToString(sum[:8])
}

func (s *Spec) hostname(dir string) string {
	if s.Name != "" {
		return s.Name
	}
	return "gondolin-" + filepath.Base(dir)[:min(8, len(filepath.Base(dir)))]
}

// claimWarm makes a VM claimed from the pool the claimer's: its vCPUs
// run again and its guest gets the claimer's setup (clock, entropy,
// hostname, environment).
func claimWarm(ctx context.Context, w *warmVM, setup agentproto.Setup) error {
	ctx, cancel := context.WithTimeout(ctx, claimTimeout)
	defer cancel()
	if err := w.m.Resume(ctx); err != nil {
		return err
	}
	return w.a.Setup(ctx, setup)
}

// cleanRunDir removes what a failed start left in a run directory.
func cleanRunDir(dir string) {
	vm.RemoveRuntimeFiles(dir)
	os.Remove(filepath.Join(dir, layout.Disk))
	os.Remove(filepath.Join(dir, layout.TemplateDisk))
}

// accelCache records the outcome of the KVM probe boot per image.
type accelCache struct {
	Image string   `json:"image"`
	Accel vm.Accel `json:"accel"`
	Why   string   `json:"why,omitempty"`
}

// Accel picks the accelerator: GONDOLIN_ACCEL when set, else KVM only when
// the host looks able and a probe boot of this image reaches the agent in
// time (the result is cached), else TCG.
func (r *Runtime) Accel(ctx context.Context, img *imagestore.Image) (vm.Accel, error) {
	accel, auto, err := vm.ParseAccel(os.Getenv(layout.EnvAccel))
	if err != nil {
		return "", invalidf("%v", err)
	}
	if !auto {
		return accel, nil
	}
	// Probed once per process: the check opens /dev/kvm and makes a VM.
	r.accelOnce.Do(func() {
		if ok, _ := vm.KVMStatus(); !ok {
			r.accel = vm.TCG
			return
		}
		r.accel, r.accelErr = r.probeKVM(ctx, img)
	})
	return r.accel, r.accelErr
}

func (r *Runtime) probeKVM(ctx context.Context, img *imagestore.Image) (vm.Accel, error) {
	cachePath := filepath.Join(string(r.Home), layout.AccelCache)
	var cache accelCache
	if b, err := os.ReadFile(cachePath); err == nil && json.Unmarshal(b, &cache) == nil && cache.Image == img.ID {
		return cache.Accel, nil
	}
	dir, release, err := r.NewRunDir()
	if err != nil {
		return "", err
	}
	defer release()
	cfg := vm.Config{Dir: dir, Kernel: img.KernelPath(), Initramfs: img.InitramfsPath(), Backing: img.RootfsPath(), Accel: vm.KVM}
	// The probe's verdict is cached for the image: a caller that gives up
	// (a client gone) must not make it, so the probe has its own deadline
	// and ignores the caller's cancellation.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	cache = accelCache{Image: img.ID, Accel: vm.KVM}
	m, err := vm.Start(pctx, cfg)
	if err == nil {
		var a *vm.Agent
		a, err = m.ConnectAgent(pctx, agentproto.Setup{})
		if err == nil {
			a.Close()
		}
		m.Kill()
	}
	if err != nil {
		cache.Accel, cache.Why = vm.TCG, err.Error()
	}
	atomicfile.WriteJSON(cachePath, cache, 0o600)
	return cache.Accel, nil
}

// NewRunDir creates a scratch directory for a one-shot VM, locked by this
// process. release removes it. Directories whose owner died (killed before
// it could clean up) are swept here.
func (r *Runtime) NewRunDir() (dir string, release func(), err error) {
	root := r.Home.Run()
	if err := layout.MkdirPrivate(root); err != nil {
		return "", nil, err
	}
	sweepRunDirs(root)
	var b [6]byte
	rand.Read(b[:])
	dir = filepath.Join(root, hex.EncodeToString(b[:]))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", nil, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, layout.OwnerLock), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	syscall.Flock(int(lock.Fd()), syscall.LOCK_EX)
	return dir, func() {
		os.RemoveAll(dir)
		lock.Close()
	}, nil
}

// sweepRunDirs removes run directories whose owner lock is free: their
// process died, and its QEMU died with it (it runs with a parent-death
// signal).
func sweepRunDirs(root string) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		dir := filepath.Join(root, e.Name())
		lock, err := os.Open(filepath.Join(dir, layout.OwnerLock))
		if err != nil {
			if info, err := os.Stat(dir); err == nil && time.Since(info.ModTime()) > time.Minute {
				os.RemoveAll(dir) // never got as far as its lock
			}
			continue
		}
		// A lock file made a moment ago may not be locked yet by the
		// process that is making it (it creates, then locks): only an
		// older one that nobody holds is a dead process's.
		if olderThan(lock.Name(), 10*time.Second) && syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			os.RemoveAll(dir)
		}
		lock.Close()
	}
}
