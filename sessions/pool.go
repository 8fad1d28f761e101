package sessions

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/internal/atomicfile"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/qemuproc"
	"github.com/gondolin/gondolin/vm"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// The warm pool keeps, for each VM shape in use (the default one always),
// a few VMs restored from their template, handshaken and paused, so that
// exec and bash start in the time it takes to resume one and send it its
// Setup instead of the time of a restore.
//
// What a hostile guest could do with it, and why it cannot:
//   - Leave something for the next command: a claimed VM is never given
//     back; every claim gets a VM no other command has touched. Before
//     its claim a pool VM ran nothing but gondolin's own warm-up
//     (warmUpCommands), on a clone fresh from the template.
//   - Predict its neighbour's randomness or identity: the claimer's
//     Setup reseeds the guest's CRNG and sets its clock and hostname; the
//     network policy, secrets and mounts are the claimer's, on the host.
//   - Burn the host's CPU while it waits: a pool VM is paused (its vCPUs
//     stopped) from its handshake to its claim.
//   - Take the supervisor with it: a pool VM that dies or wedges is
//     dropped (its claimer boots instead); the pool's memory is bounded
//     (Size per shape, MemoryMiB in all) and reported.
//   - Outlive a supervisor killed with SIGKILL: pool VMs are detached
//     (a claimed one may become a session), so each lives in a directory
//     marked layout.PoolMarker that the next supervisor sweeps (its QEMU
//     killed) before it adopts sessions.

// PoolOptions size a warm pool.
type PoolOptions struct {
	// Size is how many VMs are kept ready per shape; 0 disables the pool.
	Size int
	// MemoryMiB bounds the guest memory of all pool VMs together: shapes
	// beyond it (least recently used first) are not kept warm.
	MemoryMiB int
}

// Pool defaults: sized for a laptop (two 256 MiB VMs of the default
// shape, with room for two of one other shape).
const (
	DefaultPoolSize      = 2
	DefaultPoolMemoryMiB = 1024
	// poolIdle is how long a shape other than the default stays warm
	// after its last claim.
	poolIdle = 10 * time.Minute
	// poolShapes bounds how many shapes the pool tracks at once.
	poolShapes = 8
	// A shape that failed to warm waits poolRetry, twice that after a
	// second failure in a row, and so on up to poolRetryMax.
	poolRetry    = 30 * time.Second
	poolRetryMax = 10 * time.Minute
	// poolWarmTimeout bounds the making of one pool VM (a template
	// build included: the first one of an image builds it).
	poolWarmTimeout = 90 * time.Second
	// claimTimeout bounds a claim's resume and setup (milliseconds
	// normally): a pool VM that wedged costs its claimer no more before
	// it clones instead.
	claimTimeout = 10 * time.Second
	// poolTick is how often the pool checks for stale templates and
	// dead VMs when nothing wakes it.
	poolTick = 3 * time.Second
)

// PoolOptionsFromEnv reads GONDOLIN_POOL and GONDOLIN_POOL_MEMORY (the
// defaults when unset).
func PoolOptionsFromEnv() (PoolOptions, error) {
	o := PoolOptions{Size: DefaultPoolSize, MemoryMiB: DefaultPoolMemoryMiB}
	if v := os.Getenv(layout.EnvPool); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 64 {
			return o, invalidf("%s=%q: want a number of VMs from 0 to 64", layout.EnvPool, v)
		}
		o.Size = n
	}
	if v := os.Getenv(layout.EnvPoolMemory); v != "" {
		mib, err := ParseMemory(v)
		if err != nil {
			return o, invalidf("%s=%q: %v", layout.EnvPoolMemory, v, err)
		}
		o.MemoryMiB = mib
	}
	return o, nil
}

// PoolStatus is what the pool holds, for the supervisor's status.
type PoolStatus struct {
	Size      int `json:"size"`
	MemoryMiB int `json:"memory_mib"` // the bound
	// ReservedMiB is the guest memory of the VMs held or warming now;
	// RSSBytes what their QEMUs hold resident.
	ReservedMiB int         `json:"reserved_mib"`
	RSSBytes    int64       `json:"rss_bytes"`
	Claims      uint64      `json:"claims"` // claims served from the pool
	Misses      uint64      `json:"misses"` // claims that found it empty
	Shapes      []PoolShape `json:"shapes"`
}

// PoolShape is one shape's part of the pool.
type PoolShape struct {
	Image     string `json:"image"` // as asked ("" for the default)
	CPUs      int    `json:"cpus"`
	MemoryMiB int    `json:"memory_mib"`
	Network   bool   `json:"network"`
	Ready     int    `json:"ready"`
	Warming   int    `json:"warming"`
	RSSBytes  int64  `json:"rss_bytes"`
	// Error is why the last VM of this shape could not be warmed.
	Error string `json:"error,omitempty"`
}

// Pool is the warm pool. A nil *Pool is an empty one of size 0.
type Pool struct {
	rt   *Runtime
	reg  registry
	opts PoolOptions
	log  *log.Logger

	mu     sync.Mutex
	shapes []*poolShape // the default first
	// busy counts claims whose boot is in progress: refilling waits for
	// them, so that the pool never slows what the user waits for.
	busy           int
	claims, misses uint64
	closed         bool

	// bg counts the kills of stale VMs that claims leave to the
	// background; Close waits for them.
	bg     sync.WaitGroup
	wake   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

// poolShape is one VM shape the pool keeps warm.
type poolShape struct {
	spec Spec // the shape only: Image as asked, CPUs, MemoryMiB, NoNetwork
	// cfg (without a directory), key and gen are what spec resolves to
	// now: a changed image, QEMU or template changes them, and VMs
	// warmed from another generation are drained.
	cfg     vm.Config
	key     string
	gen     string
	ready   []*warmVM
	warming int
	used    time.Time
	// resolveErr says why spec resolves to nothing (an image gone),
	// warmErr why the last VM could not be warmed; failures counts the
	// warm failures in a row, which back off its retries (retryAt).
	resolveErr, warmErr string
	failures            int
	// waits counts the tries in a row that found no template to clone.
	waits   int
	retryAt time.Time
}

// warmVM is a paused VM restored from a template, its agent waiting for
// its Setup.
type warmVM struct {
	id, dir string
	m       *vm.Machine
	a       *vm.Agent
	gen     string
}

// kill stops the VM and removes its directory.
func (w *warmVM) kill() {
	w.a.Close()
	w.m.Kill()
	os.RemoveAll(w.dir)
}

// NewPool makes the warm pool of rt's home; Start fills it.
func NewPool(rt *Runtime, opts PoolOptions, logger *log.Logger) *Pool {
	return &Pool{rt: rt, reg: registry{home: rt.Home}, opts: opts, log: logger,
		shapes: []*poolShape{{}}, wake: make(chan struct{}, 1)}
}

// Sweep kills the VMs a previous supervisor of this home left in its
// pool (it died holding them), or made for one command, and removes
// their directories. A directory that is marked and also has a session
// record is a session whose making never finished (the marker goes once
// its VM runs): it goes too. One with neither, older than a minute, is
// what a supervisor left between making a directory and marking it.
// It runs before the pool starts and before sessions are adopted.
func (p *Pool) Sweep() {
	ids, err := p.reg.ids()
	if err != nil {
		return
	}
	for _, id := range ids {
		dir := p.reg.dir(id)
		_, marked := os.Stat(filepath.Join(dir, layout.PoolMarker))
		_, recorded := os.Stat(filepath.Join(dir, layout.SpecFile))
		switch {
		case marked == nil:
		case recorded != nil && olderThan(dir, time.Minute):
		default:
			continue
		}
		// By command line rather than pid file: QEMU may have been
		// started and not yet have written its pid file.
		for _, pid := range qemuproc.In(dir) {
			syscall.Kill(pid, syscall.SIGKILL)
			p.log.Printf("pool: killed qemu %d left in %s", pid, dir)
		}
		os.RemoveAll(dir)
	}
}

func olderThan(path string, d time.Duration) bool {
	st, err := os.Stat(path)
	return err == nil && time.Since(st.ModTime()) > d
}

// Start fills the pool in the background until Close.
func (p *Pool) Start() {
	if p.opts.Size == 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.done = make(chan struct{})
	go func() {
		defer close(p.done)
		p.fill(ctx)
	}()
}

// Close stops filling and kills every VM the pool holds.
func (p *Pool) Close() {
	if p == nil {
		return
	}
	if p.cancel != nil {
		p.cancel()
		<-p.done
	}
	p.mu.Lock()
	p.closed = true
	var drop []*warmVM
	for _, sh := range p.shapes {
		drop = append(drop, sh.ready...)
		sh.ready = nil
	}
	p.mu.Unlock()
	killAll(drop)
	p.bg.Wait()
}

func killAll(vms []*warmVM) {
	for _, w := range vms {
		w.kill()
	}
}

// claim takes a ready VM made for cfg (a directory-less configuration)
// from the pool, or nil when there is none; spec is what asked, whose
// shape the pool keeps warm from now on. done must be called once the
// claimer's boot has finished (hit or miss): until then the pool does not
// refill.
func (p *Pool) claim(cfg vm.Config, spec *Spec) (w *warmVM, done func()) {
	if p == nil || p.opts.Size == 0 {
		return nil, func() {}
	}
	key := p.rt.Templates.Key(cfg)
	gen := p.rt.Templates.Generation(cfg)
	var stale []*warmVM
	p.mu.Lock()
	p.busy++
	sh := p.shapeByKey(key)
	if sh == nil && !p.closed && len(p.shapes) < poolShapes {
		sh = &poolShape{spec: spec.shape(), cfg: cfg, key: key, gen: gen}
		p.shapes = append(p.shapes, sh)
	}
	if sh != nil {
		sh.used = time.Now()
		for w == nil && len(sh.ready) > 0 {
			c := sh.ready[0]
			sh.ready = sh.ready[1:]
			if c.gen == gen && !exited(c.m) {
				w = c
			} else {
				stale = append(stale, c)
			}
		}
	}
	if w != nil {
		p.claims++
	} else {
		p.misses++
	}
	p.mu.Unlock()
	if len(stale) > 0 {
		p.bg.Add(1)
		go func() { // not on the claimer's time
			defer p.bg.Done()
			killAll(stale)
		}()
	}
	var once sync.Once
	return w, func() {
		once.Do(func() {
			p.mu.Lock()
			p.busy--
			p.mu.Unlock()
			p.poke()
		})
	}
}

func (p *Pool) shapeByKey(key string) *poolShape {
	for _, sh := range p.shapes {
		if sh.key == key {
			return sh
		}
	}
	return nil
}

func exited(m *vm.Machine) bool {
	select {
	case <-m.Exited():
		return true
	default:
		return false
	}
}

// poke wakes the filler.
func (p *Pool) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// fill keeps the pool full: one VM warms at a time, and none while a
// claimer boots.
func (p *Pool) fill(ctx context.Context) {
	tick := time.NewTicker(poolTick)
	defer tick.Stop()
	for {
		p.refresh(ctx)
		for ctx.Err() == nil {
			sh, cfg := p.next()
			if sh == nil || !p.warm(ctx, sh, cfg) {
				break // full, or what a shape resolves to changed: refresh first
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		case <-tick.C:
		}
	}
}

// refresh resolves every shape again (an image rebuilt, QEMU upgraded or
// a template replaced changes what it resolves to), drains the VMs of an
// older generation or whose QEMU died, and forgets shapes unused for
// poolIdle.
func (p *Pool) refresh(ctx context.Context) {
	p.mu.Lock()
	specs := make([]Spec, len(p.shapes))
	for i, sh := range p.shapes {
		specs[i] = sh.spec
	}
	p.mu.Unlock()
	type resolved struct {
		cfg      vm.Config
		key, gen string
		err      error
	}
	res := make([]resolved, len(specs))
	for i := range specs {
		cfg, err := p.rt.TemplateConfig(ctx, &specs[i])
		if err == nil {
			res[i] = resolved{cfg: cfg, key: p.rt.Templates.Key(cfg), gen: p.rt.Templates.Generation(cfg)}
		} else {
			res[i].err = err
		}
	}
	var drop []*warmVM
	p.mu.Lock()
	keep := p.shapes[:0]
	seen := map[string]bool{}
	for i, sh := range p.shapes {
		if i >= len(res) { // added by a claim meanwhile: next time
			keep = append(keep, sh)
			continue
		}
		r := res[i]
		idle := i > 0 && time.Since(sh.used) > poolIdle
		sh.resolveErr = ""
		if r.err != nil || idle || seen[r.key] {
			drop = append(drop, sh.ready...)
			sh.ready = nil
			if r.err != nil {
				sh.resolveErr = r.err.Error()
			}
			if i > 0 && sh.warming == 0 {
				continue // forgotten
			}
			sh.key = ""
			keep = append(keep, sh)
			continue
		}
		seen[r.key] = true
		sh.cfg, sh.key, sh.gen = r.cfg, r.key, r.gen
		live := sh.ready[:0]
		for _, w := range sh.ready {
			if w.gen == r.gen && !exited(w.m) {
				live = append(live, w)
			} else {
				drop = append(drop, w)
			}
		}
		sh.ready = live
		keep = append(keep, sh)
	}
	p.shapes = keep
	p.mu.Unlock()
	if len(drop) > 0 {
		p.log.Printf("pool: drained %d stale VMs", len(drop))
	}
	killAll(drop)
}

// next picks a shape that lacks a VM and reserves its warming, or nil
// when the pool is full, out of memory, or waiting for a claimer.
func (p *Pool) next() (*poolShape, vm.Config) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.busy > 0 {
		return nil, vm.Config{}
	}
	reserved := p.reservedLocked()
	// The default shape first, then the most recently used.
	order := append([]*poolShape{}, p.shapes...)
	if len(order) > 1 {
		slices.SortStableFunc(order[1:], func(a, b *poolShape) int { return b.used.Compare(a.used) })
	}
	for _, sh := range order {
		if sh.key == "" || time.Now().Before(sh.retryAt) {
			continue
		}
		mem := memOf(sh.cfg)
		if len(sh.ready)+sh.warming < p.opts.Size && reserved+mem <= p.opts.MemoryMiB {
			sh.warming++
			return sh, sh.cfg
		}
	}
	return nil, vm.Config{}
}

func memOf(cfg vm.Config) int {
	if cfg.MemoryMiB > 0 {
		return cfg.MemoryMiB
	}
	return vm.DefaultMemoryMiB
}

func (p *Pool) reservedLocked() int {
	n := 0
	for _, sh := range p.shapes {
		n += (len(sh.ready) + sh.warming) * memOf(sh.cfg)
	}
	return n
}

// warm restores one VM of shape sh (whose warming next reserved) and
// adds it to the pool, paused. It returns false when the filler should
// refresh before it warms more: the shape's template is not built yet
// (its build is asked for), or what it resolves to changed meanwhile.
func (p *Pool) warm(ctx context.Context, sh *poolShape, cfg vm.Config) bool {
	w, err := p.restore(ctx, cfg)
	notReady := errors.Is(err, vm.ErrTemplateNotReady)
	p.mu.Lock()
	sh.warming--
	more := true
	switch {
	case notReady:
		// The first claimer of the shape builds its template; with none
		// in sight, the supervisor's background builder does (it does
		// not build one twice, and backs off one that keeps breaking:
		// so does the pool's asking).
		sh.waits++
		sh.retryAt, more = time.Now().Add(min(poolTick<<min(sh.waits-1, 5), time.Minute)), false
		if p.busy > 0 {
			notReady = false
		}
	case err != nil:
		sh.warmErr = err.Error()
		sh.failures++
		sh.retryAt = time.Now().Add(min(poolRetry<<min(sh.failures-1, 5), poolRetryMax))
	case p.closed || sh.key != p.rt.Templates.Key(cfg) || !p.tracked(sh):
		err, more = errors.New("drained while warming"), false
	default:
		sh.warmErr, sh.failures, sh.waits = "", 0, 0
		sh.ready = append(sh.ready, w)
	}
	spec := sh.spec
	p.mu.Unlock()
	if notReady {
		if p.rt.RebuildTemplate != nil {
			p.rt.RebuildTemplate(spec)
		}
		return false
	}
	if err != nil {
		if w != nil {
			w.kill()
		}
		if ctx.Err() == nil {
			p.log.Printf("pool: warm a VM: %v", err)
		}
	}
	return more
}

func (p *Pool) tracked(sh *poolShape) bool {
	for _, s := range p.shapes {
		if s == sh {
			return true
		}
	}
	return false
}

// restore makes one pool VM: a clone of cfg's template in a new marked
// directory, handshaken, then paused.
func (p *Pool) restore(ctx context.Context, cfg vm.Config) (*warmVM, error) {
	if p.rt.Templates.Generation(cfg) == "" {
		return nil, vm.ErrTemplateNotReady
	}
	id, dir, err := p.newDir()
	if err != nil {
		return nil, err
	}
	cfg = withRunDir(cfg, dir)
	cfg.Detached = true // a claimer may make it a session
	// Bounded apart from a claimer's boot: the filler is one goroutine
	// for every shape, and an image whose guest stalls its warm-up must
	// not keep the others cold for long.
	wctx, cancel := context.WithTimeout(ctx, poolWarmTimeout)
	defer cancel()
	m, a, gen, err := p.rt.Templates.CloneReady(wctx, cfg, agentproto.Setup{Hostname: "gondolin-pool"})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	w := &warmVM{id: id, dir: dir, m: m, a: a, gen: gen}
	if err := warmUp(wctx, a); err != nil {
		w.kill()
		return nil, fmt.Errorf("warm-up command: %w", err)
	}
	if err := m.Pause(wctx); err != nil {
		w.kill()
		return nil, fmt.Errorf("pause: %w", err)
	}
	return w, nil
}

// warmUpCommands are run in every pool VM before it is paused. A
// restored guest's first command costs about half a second on TCG (QEMU
// translates the guest's fork, exec and loader paths anew in each
// process); the second costs a tenth of that. The pool pays it in the
// background, not the claimer. The shell and bash (a session's first
// command, when the image has it) are warmed up the same way.
var warmUpCommands = [][]string{{"true"}, {"sh", "-c", "command -v bash >/dev/null && bash -c true; true"}}

func warmUp(ctx context.Context, a *vm.Agent) error {
	for _, argv := range warmUpCommands {
		// Shaped as a claimer's command is (its output streamed), so
		// that the same guest paths are warm.
		_, err := a.Run(ctx, vm.Command{Exec: agentproto.Exec{Argv: argv}, Stdout: io.Discard, Stderr: io.Discard})
		if _, missing := vm.StartError(err); err != nil && !missing {
			return err
		}
		// An image without the command is warmed up less, no more; its
		// exit code says nothing about the VM either.
	}
	return nil
}

// newDir makes a marked directory (see layout.PoolMarker) for a VM the
// supervisor makes: a pool VM, or a one-shot exec's when the pool had
// none. Such VMs are detached (a pool VM may become a session), so a
// supervisor that dies leaves them to the next one's Sweep.
func (p *Pool) newDir() (id, dir string, err error) {
	id = newID()
	dir = p.reg.dir(id)
	if err := layout.MkdirPrivate(p.rt.Home.Sessions()); err != nil {
		return "", "", err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", "", err
	}
	marker := struct {
		Created time.Time `json:"created"`
		PID     int       `json:"supervisor_pid"`
	}{time.Now().UTC(), os.Getpid()}
	if err := atomicfile.WriteJSON(filepath.Join(dir, layout.PoolMarker), marker, 0o600); err != nil {
		os.RemoveAll(dir)
		return "", "", err
	}
	return id, dir, nil
}

// withRunDir is cfg for a VM in run directory dir.
func withRunDir(cfg vm.Config, dir string) vm.Config {
	cfg.Dir = dir
	cfg.Name = "gondolin-" + filepath.Base(dir)
	return cfg
}

// Status reports what the pool holds.
func (p *Pool) Status() PoolStatus {
	if p == nil {
		return PoolStatus{Shapes: []PoolShape{}}
	}
	p.mu.Lock()
	st := PoolStatus{Size: p.opts.Size, MemoryMiB: p.opts.MemoryMiB, ReservedMiB: p.reservedLocked(),
		Claims: p.claims, Misses: p.misses, Shapes: []PoolShape{}}
	var machines [][]*vm.Machine // per listed shape: its ready VMs
	for _, sh := range p.shapes {
		if sh.key == "" && sh.resolveErr == "" {
			continue
		}
		st.Shapes = append(st.Shapes, PoolShape{Image: sh.spec.Image, CPUs: cmp.Or(sh.cfg.CPUs, vm.DefaultCPUs),
			MemoryMiB: memOf(sh.cfg), Network: sh.cfg.Network, Ready: len(sh.ready), Warming: sh.warming,
			Error: cmp.Or(sh.resolveErr, sh.warmErr)})
		var ms []*vm.Machine
		for _, w := range sh.ready {
			ms = append(ms, w.m)
		}
		machines = append(machines, ms)
	}
	p.mu.Unlock()
	// /proc is read outside the lock, which claims take; a VM that died
	// meanwhile is not read (its pid may be another process's now).
	for i, ms := range machines {
		for _, m := range ms {
			if s, err := vm.ProcessStats(m.PID()); err == nil && !exited(m) {
				st.Shapes[i].RSSBytes += s.RSSBytes
			}
		}
		st.RSSBytes += st.Shapes[i].RSSBytes
	}
	return st
}

// removeMarker makes a claimed VM's directory a session's: the next
// supervisor adopts it instead of sweeping it.
func (w *warmVM) removeMarker() error {
	err := os.Remove(filepath.Join(w.dir, layout.PoolMarker))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
