package sessions

import (
	"context"
	"errors"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gondolin/gondolin/ingress"
	"github.com/gondolin/gondolin/internal/contain"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/mounts"
	"github.com/gondolin/gondolin/netpolicy"
	"github.com/gondolin/gondolin/snapshots"
	"github.com/gondolin/gondolin/sshaccess"
	"github.com/gondolin/gondolin/vm"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// Supervisor owns the VMs of one GONDOLIN_HOME: it creates sessions,
// keeps their terminals' screens, adopts the VMs an earlier supervisor
// left running, and serves the API. VMs never depend on it: they run in
// their own sessions (setsid) and outlive it.
type Supervisor struct {
	rt      *Runtime
	reg     registry
	log     *log.Logger
	bootID  string
	started time.Time
	events  *broker

	mu       sync.Mutex
	sessions map[string]*session
	names    map[string]bool // names taken by sessions being created
	// rebuilding holds the keys of templates queued or being rebuilt
	// here; buildMu lets one build run at a time.
	rebuilding map[string]bool
	buildMu    sync.Mutex

	// ctx is the supervisor's root context: every session's and every
	// background loop's derives from it, and Close cancels it. Work that
	// must not be cut off by the process exiting (template rebuilds,
	// creates and snapshots, which pause or freeze a VM) and the loops
	// that run until Close (usage reports, session watchers) are counted
	// in bg; Close sets closed, cancels ctx and waits for bg.
	ctx    context.Context
	cancel context.CancelFunc
	bg     sync.WaitGroup
	closed bool
}

// usageInterval is how often followers hear about live sessions' usage.
const usageInterval = 3 * time.Second

// NewSupervisor prepares a supervisor for rt's home; Adopt and Serve
// start it.
func NewSupervisor(rt *Runtime, logger *log.Logger) *Supervisor {
	sv := &Supervisor{
		rt:       rt,
		reg:      registry{home: rt.Home},
		log:      logger,
		bootID:   hostBootID(),
		started:  time.Now(),
		events:   newBroker(),
		sessions: map[string]*session{},
		names:    map[string]bool{},

		rebuilding: map[string]bool{},
	}
	sv.ctx, sv.cancel = context.WithCancel(context.Background())
	rt.Notice = func(msg string) { sv.log.Print(msg) }
	// Warnings and errors only: what needs a look (a contained panic).
	rt.Log = slog.New(slog.NewTextHandler(logger.Writer(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	rt.GuestPanic = func(dir string, pe *contain.PanicError) {
		if s, err := sv.lookup(filepath.Base(dir)); err == nil {
			s.markBroken(pe)
			return
		}
		sv.log.Printf("%s: %v\n%s", dir, pe, pe.Stack)
	}
	rt.RebuildTemplate = func(spec Spec) {
		if err := sv.RebuildTemplate(spec); err != nil {
			sv.log.Printf("rebuild template: %v", err)
		}
	}
	sv.bg.Add(1)
	go sv.reportUsage()
	return sv
}

// templateBuildTimeout bounds one background template build, and
// maxQueuedBuilds how many may wait: each boots a VM.
const (
	templateBuildTimeout = 5 * time.Minute
	maxQueuedBuilds      = 4
)

// track counts work that Close must wait for; false once closing.
func (sv *Supervisor) track() bool {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if sv.closed {
		return false
	}
	sv.bg.Add(1)
	return true
}

// errClosing refuses new work while the supervisor stops.
var errClosing = errorf(errdefs.ErrUnavailable, "the supervisor is stopping; try again")

// RebuildTemplate builds, in the background, the template spec's VMs are
// cloned from (a clone of it failed, and it was moved aside). Builds run
// one at a time; a template already queued is not queued twice, and a
// template that keeps breaking waits out its back-off (see vm.Templates).
func (sv *Supervisor) RebuildTemplate(spec Spec) error {
	spec = spec.shape()
	if err := spec.Validate(); err != nil {
		return err
	}
	cfg, err := sv.rt.TemplateConfig(sv.ctx, &spec)
	if err != nil {
		return err
	}
	key := sv.rt.Templates.Key(cfg)
	sv.mu.Lock()
	switch {
	case sv.closed:
		sv.mu.Unlock()
		return errClosing
	case sv.rebuilding[key]:
		sv.mu.Unlock()
		return nil
	case len(sv.rebuilding) >= maxQueuedBuilds:
		sv.mu.Unlock()
		return errorf(errdefs.ErrUnavailable, "%d template builds are queued already; try again later", len(sv.rebuilding))
	}
	sv.rebuilding[key] = true
	sv.bg.Add(1)
	sv.mu.Unlock()
	go func() {
		defer sv.bg.Done()
		defer func() {
			sv.mu.Lock()
			delete(sv.rebuilding, key)
			sv.mu.Unlock()
			sv.emit(Event{Type: EventTemplate})
		}()
		sv.buildMu.Lock()
		defer sv.buildMu.Unlock()
		ctx, cancel := context.WithTimeout(sv.ctx, templateBuildTimeout)
		defer cancel()
		if ctx.Err() != nil {
			return
		}
		sv.emit(Event{Type: EventTemplate})
		start := time.Now()
		switch err := sv.rt.Templates.Build(ctx, cfg); {
		case err == nil:
			sv.log.Printf("template %s ready (built in %v)", key, time.Since(start).Round(time.Millisecond))
		case errors.Is(err, vm.ErrTemplateBusy):
			sv.log.Printf("template %s: another process is building it", key)
		default:
			sv.log.Printf("template %s: rebuild failed: %v", key, err)
		}
	}()
	return nil
}

// reportUsage tells followers, now and then, that live sessions' CPU and
// memory figures have moved.
func (sv *Supervisor) reportUsage() {
	defer sv.bg.Done()
	tick := time.NewTicker(usageInterval)
	defer tick.Stop()
	for {
		select {
		case <-sv.ctx.Done():
			return
		case <-tick.C:
		}
		if sv.events.followers() == 0 {
			continue
		}
		for _, s := range sv.List(false) {
			sv.emit(Event{Type: EventUsage, Session: s.ID, State: s.State})
		}
	}
}

// session is one session as the supervisor knows it.
type session struct {
	sv  *Supervisor
	rec Record
	// ctx ends when the session goes (removed, or the supervisor
	// closing): its watcher stops with it. Set by newSession.
	ctx    context.Context
	cancel context.CancelFunc

	// state.json is written outside mu (an fsync must not hold up List):
	// version counts the states copied under mu for writing, writeMu
	// orders the writes, written is the version state.json holds and
	// removed says the directory is gone, so that an older state never
	// overwrites a newer one and nothing is written after removal.
	writeMu sync.Mutex
	written uint64 // under writeMu
	removed bool   // under writeMu

	mu      sync.Mutex
	state   StateRecord
	version uint64 // of state, counted by copyStateLocked
	closed  bool   // close has run: no terminal may be added

	m     *vm.Machine        // nil when no VM is known to run
	agent *vm.Agent          // nil while not connected
	net   *netpolicy.Network // nil without a network
	fs    *mounts.Server     // nil without host mounts
	gw    *ingress.Gateway   // nil without ingress routes
	sshd  *sshaccess.Server  // nil without --ssh
	// accessErrs says why a route or the SSH endpoint could not be
	// opened again after a restart (a port now taken).
	accessErrs []string
	// mountErr says why the host mounts are not served after a restart
	// (a root replaced or moved since the session was made).
	mountErr string
	// broken says why the supervisor stopped serving this session: code
	// handling its guest's bytes panicked. It stays stale (and is not
	// reconnected) until removed; the other sessions go on.
	broken   string
	ptys     map[uint64]*pty
	stale    string // why it is stale; empty when live or stopped
	stopping bool
	// snapshotting: the VM may be paused on purpose; not a hang.
	snapshotting bool
	cpu          cpuSample
}

// newSession makes the supervisor's record of one session; close
// releases what it holds.
func (sv *Supervisor) newSession(rec Record, st StateRecord) *session {
	s := &session{sv: sv, rec: rec, state: st, ptys: map[uint64]*pty{}}
	s.ctx, s.cancel = context.WithCancel(sv.ctx)
	return s
}

// close releases what the session holds in this process when it goes
// (removed, or the supervisor closing): its watcher stops and its
// terminals' emulators are freed. The VM is not touched.
func (s *session) close() {
	if s.cancel != nil {
		s.cancel()
	}
	s.mu.Lock()
	s.closed = true
	ptys := s.ptyList()
	s.mu.Unlock()
	for _, p := range ptys {
		p.close()
	}
}

// goWatch starts s's watcher, unless the supervisor is closing.
func (sv *Supervisor) goWatch(s *session) {
	if !sv.track() {
		return
	}
	go func() {
		defer sv.bg.Done()
		s.watch()
	}()
}

type cpuSample struct {
	ticks uint64
	at    time.Time
	pct   float64
}

// Adopt loads every session on disk: VMs that still run are taken over
// (agent reconnected, terminals replayed from the guest's buffers), dead
// ones are marked stale with the reason. Nothing is deleted.
func (sv *Supervisor) Adopt(ctx context.Context) {
	ids, err := sv.reg.ids()
	if err != nil {
		sv.log.Printf("list sessions: %v", err)
		return
	}
	var wg sync.WaitGroup
	for _, id := range ids {
		rec, st, err := sv.reg.load(id)
		if err != nil {
			sv.log.Printf("skip %s: %v", id, err)
			continue
		}
		s := sv.newSession(rec, st)
		for _, pr := range st.PTYs {
			p := newPTY(pr.ID, pr.Argv, pr.Created, pr.Main, 0, 0)
			p.running = false
			s.ptys[pr.ID] = p
		}
		sv.mu.Lock()
		sv.sessions[id] = s
		sv.mu.Unlock()
		if st.Stopped {
			continue
		}
		if rec.HostBootID != "" && rec.HostBootID != sv.bootID {
			s.stale = "the host rebooted since the VM started"
			continue
		}
		m, err := vm.Adopt(rec.VM)
		if err != nil {
			s.stale = staleReason(err)
			continue
		}
		s.m = m
		if rec.VM.Network {
			if err := s.restoreNetwork(); err != nil {
				s.stale = "network: " + err.Error()
			}
		}
		if hm := rec.Spec.hostMounts(); len(hm) > 0 {
			// The guest keeps its mounts and resyncs with a new server.
			// A mount whose host directory was replaced meanwhile is left
			// out: its guest requests fail at once, and list says why.
			srv, lost, err := mounts.NewServerKeeping(hm, nil)
			if err == nil {
				if err = sv.rt.serveMounts(context.Background(), srv, sv.reg.dir(id)); err != nil {
					srv.Close()
				} else {
					s.fs = srv
				}
			}
			if err = errors.Join(append(lost, err)...); err != nil {
				s.mountErr = "mounts not served: " + strings.ReplaceAll(err.Error(), "\n", "; ")
			}
		}
		if len(st.Routes) > 0 || st.SSH != nil {
			if err := s.startAccess(st.Routes, st.SSH); err != nil {
				sv.log.Printf("adopt %s: %v", id, err)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			actx, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			if err := s.connect(actx); err != nil {
				s.mu.Lock()
				s.stale = "agent not answering: " + err.Error()
				s.mu.Unlock()
				sv.log.Printf("adopt %s: %v", id, err)
			} else {
				sv.log.Printf("adopted %s (qemu %d)", id, m.PID())
			}
			sv.goWatch(s)
		}()
	}
	wg.Wait()
}

func staleReason(err error) string {
	if errors.Is(err, vm.ErrNotRunning) {
		return "the VM is not running (" + err.Error() + ")"
	}
	return err.Error()
}

// connect (re)connects to the session's agent and follows every terminal
// the guest still has, from the oldest output it kept.
func (s *session) connect(ctx context.Context) error {
	setup := agentproto.Setup{Hostname: s.rec.Spec.hostname(s.sv.reg.dir(s.rec.ID))}
	s.mu.Lock()
	if s.net != nil {
		setup.Env = s.net.GuestEnv()
	}
	s.mu.Unlock()
	a, err := s.m.ConnectAgent(ctx, setup)
	if err != nil {
		return err
	}
	if err := s.adoptProcesses(ctx, a); err != nil {
		a.Close()
		return err
	}
	return nil
}

// adoptProcesses makes a the session's agent connection and follows every
// terminal the guest still has, from the oldest output it kept (so the
// screens come back).
func (s *session) adoptProcesses(ctx context.Context, a *vm.Agent) error {
	procs, err := a.Processes(ctx)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.agent = a
	s.stale = ""
	known := map[uint64]agentproto.Process{}
	for _, pr := range procs {
		known[pr.ID] = pr
	}
	var follow []*pty
	for id, p := range s.ptys {
		pr, ok := known[id]
		if !ok {
			p.exited(-1) // the guest forgot it: gone long ago
			continue
		}
		p.mu.Lock()
		p.running = pr.Running || p.running
		p.mu.Unlock()
		follow = append(follow, p)
	}
	s.mu.Unlock()
	for _, p := range follow {
		if err := s.follow(ctx, p); err != nil {
			s.sv.log.Printf("session %s: follow pty %d: %v", s.rec.ID, p.id, err)
		}
	}
	return nil
}

// follow streams a persistent guest terminal's output into p from where
// p left off, and handles its exit.
func (s *session) follow(ctx context.Context, p *pty) error {
	s.mu.Lock()
	a := s.agent
	s.mu.Unlock()
	if a == nil {
		return errors.New("no agent connection")
	}
	p.mu.Lock()
	offset := p.offset
	p.mu.Unlock()
	proc, err := a.Attach(ctx, p.id, offset, vm.Command{OnOutput: p.output})
	if err != nil {
		return err
	}
	go s.waitPTY(p, proc)
	return nil
}

func (s *session) waitPTY(p *pty, proc *vm.Process) {
	exit, err := proc.Wait()
	var pe *contain.PanicError
	if errors.As(err, &pe) {
		s.markBroken(pe)
		return
	}
	if err != nil {
		return // connection lost: watch() reconnects and follows again
	}
	p.exited(exit.Code)
	s.sv.emit(Event{Type: EventPTYExit, Session: s.rec.ID, PTY: p.id})
	if p.main && !s.rec.Keep {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.stop(ctx); err != nil {
			s.sv.log.Printf("session %s: stop after its command exited: %v", s.rec.ID, err)
		}
	}
}

// The supervisor pings every live agent this often; a guest that does not
// answer in time is stale until it does.
const (
	probeInterval = 10 * time.Second
	probeTimeout  = 5 * time.Second
)

// markBroken contains a panic in code that served this session's guest:
// the session turns stale with the reason (the stack goes to the log),
// its agent connection is dropped and not made again, and every other
// session goes on.
func (s *session) markBroken(pe *contain.PanicError) {
	s.sv.log.Printf("session %s: %v\n%s", s.rec.ID, pe, pe.Stack)
	s.mu.Lock()
	if s.broken != "" {
		s.mu.Unlock()
		return
	}
	s.broken = pe.Error() + "; remove it with: gondolin rm -f " + s.rec.ID
	a := s.agent
	s.mu.Unlock()
	if a != nil {
		a.Close()
	}
	s.sv.emit(Event{Type: EventState, Session: s.rec.ID, State: Stale, Reason: s.broken})
}

// watch follows the VM and the agent connection for the session's life:
// a lost connection is retried, a dead VM makes the session stale. It
// returns when the session goes or the supervisor closes (s.ctx ends):
// a connection that Close dropped is not made again.
func (s *session) watch() {
	gone := s.ctx.Done()
	for {
		s.mu.Lock()
		m, a := s.m, s.agent
		s.mu.Unlock()
		if m == nil {
			return
		}
		var agentDone <-chan struct{}
		if a != nil {
			agentDone = a.Done()
		}
		select {
		case <-gone:
			return
		case <-m.Exited():
			s.vmExited(m)
			return
		case <-agentDone:
			select {
			case <-gone:
				return
			case <-m.Exited():
				s.vmExited(m)
				return
			case <-time.After(100 * time.Millisecond):
			}
			s.mu.Lock()
			if s.agent == a {
				s.agent = nil
			}
			stopping, broken := s.stopping, s.broken != ""
			s.mu.Unlock()
			if stopping {
				continue
			}
			if broken {
				s.awaitExit(m) // say so if it dies; never serve it again
				return
			}
			ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
			err := s.connect(ctx)
			cancel()
			if err != nil && s.ctx.Err() != nil {
				return // the session went meanwhile: not the guest's fault
			}
			if err != nil {
				s.mu.Lock()
				s.stale = "agent not answering: " + err.Error()
				s.mu.Unlock()
				s.sv.emit(Event{Type: EventState, Session: s.rec.ID, State: Stale, Reason: s.stale})
				s.awaitExit(m) // keep watching the VM: if it dies, say so
				return
			}
		case <-time.After(probeInterval):
			// A hung guest keeps its connection open: probe it (unless it
			// is paused on purpose, for a snapshot).
			s.mu.Lock()
			snapshotting := s.snapshotting
			s.mu.Unlock()
			if a != nil && !snapshotting {
				ctx, cancel := context.WithTimeout(s.ctx, probeTimeout)
				_, err := a.Ping(ctx)
				cancel()
				if err != nil && s.ctx.Err() == nil {
					s.mu.Lock()
					if !s.stopping {
						s.stale = "agent not answering: " + err.Error()
					}
					s.mu.Unlock()
					a.Close() // the next round reconnects or gives up
				}
			}
		}
	}
}

// awaitExit waits for m to exit (and says so) or for the session to go.
func (s *session) awaitExit(m *vm.Machine) {
	select {
	case <-m.Exited():
		s.vmExited(m)
	case <-s.ctx.Done():
	}
}

func (s *session) vmExited(m *vm.Machine) {
	s.mu.Lock()
	if s.m != m {
		s.mu.Unlock()
		return
	}
	s.m = nil
	if s.agent != nil {
		s.agent.Close()
		s.agent = nil
	}
	s.stopAccessLocked()
	if s.net != nil {
		s.net.Close()
		s.net = nil
	}
	if s.fs != nil {
		s.fs.Close()
		s.fs = nil
	}
	stopped := s.state.Stopped || s.stopping
	if !stopped {
		s.stale = "the VM exited: " + m.ExitErr().Error()
	}
	ptys := s.ptyList()
	s.mu.Unlock()
	for _, p := range ptys {
		p.exited(-1)
	}
	if !stopped {
		s.sv.log.Printf("session %s: %s", s.rec.ID, s.stale)
		s.sv.emit(Event{Type: EventState, Session: s.rec.ID, State: Stale, Reason: s.stale})
	}
}

func (s *session) ptyList() []*pty {
	list := make([]*pty, 0, len(s.ptys))
	for _, p := range s.ptys {
		list = append(list, p)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].id < list[j].id })
	return list
}

// derived computes the session's state; it is never stored.
func (s *session) derivedLocked() (State, string) {
	switch {
	case s.state.Stopped:
		return Stopped, ""
	case s.broken != "":
		return Stale, s.broken
	case s.stale != "":
		return Stale, s.stale
	case s.m == nil:
		return Stale, "the VM is not running"
	case s.agent == nil:
		return Stale, "reconnecting to the agent"
	}
	return Live, ""
}

func (s *session) info() Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, reason := s.derivedLocked()
	out := Session{
		ID: s.rec.ID, Name: s.rec.Spec.Name, Label: s.rec.Label, State: st, Reason: reason,
		Created: s.rec.Created, Image: s.rec.ImageRef, ImageID: s.rec.ImageID, Spec: s.rec.Spec,
		Keep: s.rec.Keep, PTYs: []PTY{}, CPUs: s.rec.VM.CPUs, MemoryMB: s.rec.VM.MemoryMiB,
	}
	for _, p := range s.ptyList() {
		out.PTYs = append(out.PTYs, p.info())
	}
	out.Errors = append(s.networkErrorsLocked(), s.accessErrs...)
	if s.mountErr != "" {
		out.Errors = append(out.Errors, s.mountErr)
	}
	if s.gw != nil {
		out.Ingress = s.gw.List()
	}
	if s.sshd != nil {
		out.SSHCommand = s.sshd.Command()
	}
	if s.net != nil {
		p := s.net.Policy()
		out.Policy = summarizePolicy(p)
	} else if s.rec.Spec.NoNetwork {
		out.Policy = "no network"
	}
	if s.m != nil {
		out.PID = s.m.PID()
		if stats, err := vm.ProcessStats(out.PID); err == nil {
			now := time.Now()
			if !s.cpu.at.IsZero() && now.Sub(s.cpu.at) > 200*time.Millisecond {
				s.cpu.pct = float64(stats.CPUTicks-s.cpu.ticks) / 100 / now.Sub(s.cpu.at).Seconds() * 100
			}
			if s.cpu.at.IsZero() || now.Sub(s.cpu.at) > 200*time.Millisecond {
				s.cpu.ticks, s.cpu.at = stats.CPUTicks, now
			}
			out.Usage = &Usage{CPUPercent: s.cpu.pct, RSSBytes: stats.RSSBytes}
		}
	}
	return out
}

// stateWrite is a copy of a session's state, taken under its lock and
// written to state.json after the lock is released.
type stateWrite struct {
	s       *session
	version uint64
	state   StateRecord
}

// copyStateLocked records the terminals in the state and copies it for
// writing; the caller holds s.mu, and calls write once it has let go.
func (s *session) copyStateLocked() stateWrite {
	ptys := make([]PTYRecord, 0, len(s.ptys))
	for _, p := range s.ptyList() {
		ptys = append(ptys, p.record())
	}
	s.state.PTYs = ptys
	s.version++
	st := s.state
	// Policy is never changed in place (a new one replaces it) and a
	// record's argv never changes: the rest is copied.
	st.Routes = slices.Clone(st.Routes)
	if st.SSH != nil {
		ssh := *st.SSH
		st.SSH = &ssh
	}
	return stateWrite{s: s, version: s.version, state: st}
}

// write saves the state unless a newer one was saved already (or the
// session was removed).
func (w stateWrite) write() {
	s := w.s
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.removed || w.version <= s.written {
		return
	}
	if err := s.sv.reg.saveState(s.rec.ID, w.state); err != nil {
		s.sv.log.Printf("session %s: save state: %v", s.rec.ID, err)
		return
	}
	s.written = w.version
}

// Create makes a new session: its VM and its first terminal.
func (sv *Supervisor) Create(ctx context.Context, req CreateRequest) (Session, error) {
	if !sv.track() {
		return Session{}, errClosing
	}
	defer sv.bg.Done()
	spec := req.Spec
	if err := spec.applySecretValues(req.SecretValues); err != nil {
		return Session{}, err
	}
	if spec.Policy != nil && len(req.SSHPassphrases) > 0 {
		if err := spec.Policy.SetSSHPassphrases(req.SSHPassphrases); err != nil {
			return Session{}, invalidf("%v", err)
		}
	}
	for i, r := range req.Listen {
		if r.GuestPort == 0 {
			return Session{}, invalidf("--listen %s: no guest port", r.Listen)
		}
		req.Listen[i] = r
	}
	if err := spec.Validate(); err != nil {
		return Session{}, err
	}
	if len(req.Label) > 200 {
		return Session{}, invalidf("label is longer than 200 bytes")
	}
	if err := validateCommand(req.Command); err != nil {
		return Session{}, err
	}
	release, err := sv.reserveName(spec.Name)
	if err != nil {
		return Session{}, err
	}
	defer release()
	if req.Resume != "" {
		return sv.resume(ctx, req)
	}
	// Each host mount's directory is recorded by identity now, so that a
	// restarted supervisor serves that directory or nothing (the guest
	// may have replaced a path with a symlink meanwhile).
	if err := mounts.PinRoots(spec.Mounts); err != nil {
		return Session{}, invalidf("%v", err)
	}
	img, err := sv.rt.ResolveImage(&spec)
	if err != nil {
		return Session{}, err
	}
	id := newID()
	dir := sv.reg.dir(id)
	cfg, err := sv.rt.MachineConfig(ctx, &spec, img, dir)
	if err != nil {
		return Session{}, err
	}
	cfg.Detached = true
	applyImageConfig(&spec, img)
	ref := spec.Image
	if ref == "" && len(img.Refs) > 0 {
		ref = img.Refs[0]
	}
	rec := Record{ID: id, Spec: spec, Created: time.Now().UTC(), ImageRef: ref, ImageID: img.ID,
		Command: req.Command, Keep: req.Keep, Label: req.Label, VM: cfg, HostBootID: sv.bootID}
	if err := sv.reg.create(rec); err != nil {
		return Session{}, err
	}
	t0 := time.Now()
	in, err := sv.rt.BootConfig(ctx, &spec, cfg, ref)
	if err != nil {
		sv.reg.remove(id)
		return Session{}, err
	}
	t1 := time.Now()
	s := sv.newSession(rec, StateRecord{})
	s.m, s.agent, s.net, s.fs = in.Machine, in.Agent, in.Net, in.FS
	if in.Net != nil {
		p := in.Net.Policy()
		s.state.Policy = &p
	}
	_, err = s.openPTY(ctx, req.Command, req.Rows, req.Cols, true)
	if sv.rt.Debug {
		sv.log.Printf("create %s: boot %v, terminal %v", id, t1.Sub(t0).Round(time.Millisecond), time.Since(t1).Round(time.Millisecond))
	}
	if err != nil {
		in.Kill()
		s.close()
		sv.reg.remove(id)
		return Session{}, err
	}
	if len(req.Listen) > 0 || req.SSH != nil {
		if err := s.startAccess(req.Listen, req.SSH); err != nil {
			s.stop(context.Background())
			s.close()
			sv.reg.remove(id)
			return Session{}, err
		}
	}
	sv.mu.Lock()
	sv.sessions[id] = s
	sv.mu.Unlock()
	sv.goWatch(s)
	sv.emit(Event{Type: EventCreated, Session: id, State: Live})
	return s.info(), nil
}

// reserveName keeps a name for a session being made; release frees it
// (the session, once registered, holds it).
func (sv *Supervisor) reserveName(name string) (release func(), err error) {
	if name == "" {
		return func() {}, nil
	}
	sv.mu.Lock()
	defer sv.mu.Unlock()
	taken := sv.names[name]
	for _, s := range sv.sessions {
		if s.rec.Spec.Name == name || s.rec.ID == name {
			taken = true
		}
	}
	if taken {
		return nil, errorf(errdefs.ErrConflict, "a session named %q exists (see: gondolin list --all)", name)
	}
	sv.names[name] = true
	return func() {
		sv.mu.Lock()
		delete(sv.names, name)
		sv.mu.Unlock()
	}, nil
}

// resume makes a session from a snapshot: a live snapshot continues where
// it was (processes, terminals and their screens); a disk checkpoint
// boots with its disk.
func (sv *Supervisor) resume(ctx context.Context, req CreateRequest) (Session, error) {
	id := newID()
	dir := sv.reg.dir(id)
	if err := layout.MkdirPrivate(dir); err != nil {
		return Session{}, err
	}
	ok := false
	defer func() {
		if !ok {
			sv.reg.remove(id)
		}
	}()
	plan, err := sv.rt.planResume(ctx, req.Resume, dir)
	if err != nil {
		return Session{}, err
	}
	spec, err := plan.resumeSpec(req.Spec, req.SecretValues)
	if err != nil {
		return Session{}, err
	}
	if err := mounts.PinRoots(spec.Mounts); err != nil {
		return Session{}, invalidf("%v", err)
	}
	command := plan.session.Command
	if len(req.Command) > 0 {
		command = req.Command
	}
	label := req.Label
	if label == "" {
		label = plan.session.Label
	}
	cfg := plan.cfg
	cfg.Detached = true
	recCfg := cfg
	recCfg.Restore = ""
	rec := Record{ID: id, Spec: spec, Created: time.Now().UTC(), ImageRef: plan.snap.ImageRef, ImageID: plan.img.ID,
		Command: command, Keep: req.Keep || plan.session.Keep, Label: label, VM: recCfg, HostBootID: sv.bootID,
		ResumedFrom: plan.snap.ID}
	if err := sv.reg.create(rec); err != nil {
		return Session{}, err
	}
	in, err := sv.rt.BootConfig(ctx, &spec, cfg, "snapshot "+req.Resume)
	if err != nil {
		return Session{}, err
	}
	s := sv.newSession(rec, StateRecord{})
	s.m, s.net, s.fs = in.Machine, in.Net, in.FS
	defer func() {
		if !ok {
			s.close()
		}
	}()
	if in.Net != nil {
		p := in.Net.Policy()
		s.state.Policy = &p
	}
	if plan.snap.Kind == snapshots.Live {
		for _, pr := range plan.session.PTYs {
			s.ptys[pr.ID] = newPTY(pr.ID, pr.Argv, pr.Created, pr.Main, req.Rows, req.Cols)
			s.ptys[pr.ID].changed = sv.paintNotifier(id, s.ptys[pr.ID])
		}
		if err := s.adoptProcesses(ctx, in.Agent); err != nil {
			in.Kill()
			return Session{}, err
		}
	} else {
		s.agent = in.Agent
	}
	if len(s.runningPTYs()) == 0 {
		if _, err := s.openPTY(ctx, command, req.Rows, req.Cols, true); err != nil {
			in.Kill()
			return Session{}, err
		}
	}
	s.mu.Lock()
	save := s.copyStateLocked()
	s.mu.Unlock()
	save.write()
	sv.mu.Lock()
	sv.sessions[id] = s
	sv.mu.Unlock()
	ok = true
	sv.goWatch(s)
	sv.emit(Event{Type: EventCreated, Session: id, State: Live})
	info := s.info()
	if plan.note != "" {
		// Told to whoever resumes it (bash prints it as a warning), once.
		sv.log.Print(plan.note)
		info.Errors = append(info.Errors, plan.note)
	}
	return info, nil
}

func (s *session) runningPTYs() []*pty {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*pty
	for _, p := range s.ptyList() {
		if p.info().Running {
			out = append(out, p)
		}
	}
	return out
}

func validateCommand(argv []string) error {
	if len(argv) > 0 && argv[0] == "" {
		return invalidf("empty command")
	}
	e := agentproto.Exec{Argv: append([]string{"x"}, argv...)}
	if err := e.Validate(); err != nil {
		return invalidf("%v", err)
	}
	return nil
}

// defaultShell runs bash when the image has it, else sh, as a login
// shell so profiles are read.
var defaultShell = []string{"/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -l; fi; exec sh -l"}

// openPTY starts a persistent terminal process in the session's guest.
func (s *session) openPTY(ctx context.Context, argv []string, rows, cols uint16, main bool) (*pty, error) {
	if len(argv) == 0 {
		argv = defaultShell
	}
	if rows == 0 || cols == 0 {
		rows, cols = 24, 80
	}
	s.mu.Lock()
	a := s.agent
	s.mu.Unlock()
	if a == nil {
		return nil, errorf(errdefs.ErrUnavailable, "session %s is not live", s.rec.ID)
	}
	p := newPTY(0, argv, time.Now().UTC(), main, rows, cols)
	p.changed = s.sv.paintNotifier(s.rec.ID, p)
	proc, err := a.Start(ctx, vm.Command{
		Exec:     agentproto.Exec{Argv: argv, Env: s.rec.Spec.Env, Cwd: s.rec.Spec.Cwd, TTY: true, Rows: rows, Cols: cols, Persistent: true},
		OnOutput: p.output,
	})
	if err != nil {
		p.close()
		if code, ok := vm.StartError(err); ok {
			return nil, invalidf("%v (exit code %d)", err, code)
		}
		return nil, err
	}
	p.id = proc.ID
	s.mu.Lock()
	if s.closed {
		// Removed meanwhile: nobody will see this terminal's screen.
		s.mu.Unlock()
		p.close()
		return nil, errorf(errdefs.ErrNotFound, "session %s was removed", s.rec.ID)
	}
	s.ptys[p.id] = p
	save := s.copyStateLocked()
	s.mu.Unlock()
	save.write()
	go s.waitPTY(p, proc)
	s.sv.emit(Event{Type: EventPTYOpen, Session: s.rec.ID, PTY: p.id})
	return p, nil
}

// stop shuts the VM down (the agent first, QMP then, a kill last) and
// records the session as stopped.
func (s *session) stop(ctx context.Context) error {
	s.mu.Lock()
	if s.state.Stopped {
		s.mu.Unlock()
		return nil
	}
	s.stopping = true
	m, a := s.m, s.agent
	s.mu.Unlock()
	if m != nil {
		m.Stop(ctx, a, 5*time.Second)
	}
	s.mu.Lock()
	s.state.Stopped = true
	s.state.StoppedAt = time.Now().UTC()
	s.stopping = false
	s.stale = ""
	s.m, s.agent = nil, nil
	s.stopAccessLocked()
	if s.fs != nil {
		s.fs.Close()
		s.fs = nil
	}
	n := s.net
	s.net = nil
	ptys := s.ptyList()
	save := s.copyStateLocked()
	s.mu.Unlock()
	save.write()
	if a != nil {
		a.Close()
	}
	if n != nil {
		n.Close()
	}
	for _, p := range ptys {
		p.exited(-1)
	}
	// Nothing of a stopped VM is needed but its disk and console log.
	vm.RemoveRuntimeFiles(s.sv.reg.dir(s.rec.ID))
	s.sv.emit(Event{Type: EventState, Session: s.rec.ID, State: Stopped})
	return nil
}

// lookup resolves a user's reference to one session.
func (sv *Supervisor) lookup(ref string) (*session, error) {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	recs := make([]Record, 0, len(sv.sessions))
	for _, s := range sv.sessions {
		recs = append(recs, s.rec)
	}
	id, err := resolveID(ref, recs)
	if err != nil {
		return nil, err
	}
	return sv.sessions[id], nil
}

// List returns the sessions, newest first; without all, only live ones.
func (sv *Supervisor) List(all bool) []Session {
	sv.mu.Lock()
	list := make([]*session, 0, len(sv.sessions))
	for _, s := range sv.sessions {
		list = append(list, s)
	}
	sv.mu.Unlock()
	out := []Session{}
	for _, s := range list {
		info := s.info()
		if all || info.State == Live {
			out = append(out, info)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out
}

// Get returns one session.
func (sv *Supervisor) Get(ref string) (Session, error) {
	s, err := sv.lookup(ref)
	if err != nil {
		return Session{}, err
	}
	return s.info(), nil
}

// Stop stops a session's VM.
func (sv *Supervisor) Stop(ctx context.Context, ref string) (Session, error) {
	s, err := sv.lookup(ref)
	if err != nil {
		return Session{}, err
	}
	if err := s.stop(ctx); err != nil {
		return Session{}, err
	}
	return s.info(), nil
}

// Remove deletes a stale or stopped session; force stops a live one first.
func (sv *Supervisor) Remove(ctx context.Context, ref string, force bool) error {
	s, err := sv.lookup(ref)
	if err != nil {
		return err
	}
	s.mu.Lock()
	st, _ := s.derivedLocked()
	m := s.m
	s.mu.Unlock()
	if st == Live && !force {
		return errorf(errdefs.ErrConflict, "session %s is live: stop it first (gondolin stop %s) or use: gondolin rm -f %s", s.rec.ID, s.rec.ID, s.rec.ID)
	}
	if st == Live || m != nil {
		if err := s.stop(ctx); err != nil {
			return err
		}
	}
	// A state write in flight finishes first; none is made after.
	s.writeMu.Lock()
	err = sv.reg.remove(s.rec.ID)
	s.removed = err == nil
	s.writeMu.Unlock()
	if err != nil {
		return err
	}
	sv.mu.Lock()
	delete(sv.sessions, s.rec.ID)
	sv.mu.Unlock()
	s.close()
	sv.emit(Event{Type: EventRemoved, Session: s.rec.ID})
	return nil
}

// OpenPTY starts a new terminal in a live session.
func (sv *Supervisor) OpenPTY(ctx context.Context, ref string, req OpenPTYRequest) (PTY, error) {
	s, err := sv.lookup(ref)
	if err != nil {
		return PTY{}, err
	}
	if err := validateCommand(req.Command); err != nil {
		return PTY{}, err
	}
	p, err := s.openPTY(ctx, req.Command, req.Rows, req.Cols, false)
	if err != nil {
		return PTY{}, err
	}
	return p.info(), nil
}

// findPTY returns a session's terminal; id 0 means the most recent
// running one.
func (s *session) findPTY(id uint64) (*pty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id != 0 {
		p, ok := s.ptys[id]
		if !ok {
			return nil, errorf(errdefs.ErrNotFound, "session %s has no terminal %d", s.rec.ID, id)
		}
		return p, nil
	}
	var best *pty
	for _, p := range s.ptyList() {
		p.mu.Lock()
		running := p.running
		p.mu.Unlock()
		if running {
			best = p
		}
	}
	if best == nil {
		return nil, errorf(errdefs.ErrNotFound, "session %s has no running terminal; open one with: gondolin attach %s -- bash", s.rec.ID, s.rec.ID)
	}
	return best, nil
}

// input writes keystrokes to a terminal through one shared agent stream.
func (s *session) input(p *pty, data []byte) error {
	p.mu.Lock()
	w := p.stdin
	p.mu.Unlock()
	if w == nil {
		s.mu.Lock()
		a := s.agent
		s.mu.Unlock()
		if a == nil {
			return errorf(errdefs.ErrUnavailable, "session %s is not connected", s.rec.ID)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, err := a.OpenStdin(ctx, p.id)
		cancel()
		if err != nil {
			return err
		}
		p.mu.Lock()
		if p.stdin == nil {
			p.stdin = st
		} else {
			st.Close()
		}
		w = p.stdin
		p.mu.Unlock()
	}
	if _, err := w.Write(data); err != nil {
		p.mu.Lock()
		if p.stdin == w {
			p.stdin = nil
		}
		p.mu.Unlock()
		return err
	}
	return nil
}

// resize changes a terminal's size in the guest and in the emulator.
func (s *session) resize(p *pty, rows, cols uint16) error {
	if rows == 0 || cols == 0 {
		return invalidf("terminal size %dx%d", rows, cols)
	}
	p.resize(rows, cols)
	s.mu.Lock()
	a := s.agent
	s.mu.Unlock()
	if a == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return a.Resize(ctx, p.id, rows, cols)
}

// Status describes the supervisor and the home's templates.
func (sv *Supervisor) Status() SupervisorStatus {
	st := SupervisorStatus{PID: os.Getpid(), Started: sv.started, Home: string(sv.rt.Home)}
	st.Templates, _ = sv.rt.Templates.List()
	for _, s := range sv.List(true) {
		st.Sessions++
		if s.State == Live {
			st.Live++
		}
	}
	if stats, err := vm.ProcessStats(os.Getpid()); err == nil {
		st.RSSBytes = stats.RSSBytes
	}
	return st
}

// StopAll stops every live session (supervisor stop --all).
func (sv *Supervisor) StopAll(ctx context.Context) {
	var wg sync.WaitGroup
	for _, info := range sv.List(false) {
		s, err := sv.lookup(info.ID)
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); s.stop(ctx) }()
	}
	wg.Wait()
}

// Close stops background work (watchers included, so no connection is
// made again), drops every agent connection and frees the sessions'
// terminals; the VMs keep running.
func (sv *Supervisor) Close() {
	sv.mu.Lock()
	sv.closed = true
	sv.mu.Unlock()
	sv.cancel()
	sv.bg.Wait()
	sv.mu.Lock()
	list := make([]*session, 0, len(sv.sessions))
	for _, s := range sv.sessions {
		list = append(list, s)
	}
	sv.mu.Unlock()
	for _, s := range list {
		s.mu.Lock()
		if s.agent != nil {
			s.agent.Close()
		}
		s.mu.Unlock()
		s.close()
	}
}

func (sv *Supervisor) emit(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	sv.events.publish(e)
}

// paintNotifier returns a callback that reports screen changes at most
// ten times a second per terminal, so the dashboard's preview follows
// without a flood.
func (sv *Supervisor) paintNotifier(id string, p *pty) func() {
	var mu sync.Mutex
	pending := false
	return func() {
		mu.Lock()
		defer mu.Unlock()
		if pending {
			return
		}
		pending = true
		time.AfterFunc(100*time.Millisecond, func() {
			mu.Lock()
			pending = false
			mu.Unlock()
			sv.emit(Event{Type: EventPTYPaint, Session: id, PTY: p.id})
		})
	}
}
