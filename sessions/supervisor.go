package sessions

import (
	"context"
	"errors"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/gondolin/gondolin/internal/contain"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/vm"
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
	// creating lists the sessions being made (see beginCreate), by ID;
	// a session is in it or in sessions, never both.
	creating map[string]*Session
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
		creating: map[string]*Session{},

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
			if s.State == Live {
				sv.emit(Event{Type: EventUsage, Session: s.ID, State: s.State})
			}
		}
	}
}

// lookup resolves a user's reference to one session. A session being
// made is refused: nothing can be done to it until it is live (or gone).
func (sv *Supervisor) lookup(ref string) (*session, error) {
	s, c, err := sv.resolve(ref)
	if err != nil {
		return nil, err
	}
	if c != nil {
		return nil, errorf(errdefs.ErrConflict, "session %s is being created (%s); try again once it is live (see: gondolin list)", c.ID, c.Phase)
	}
	return s, nil
}

// resolve finds the one session ref names: a made one (s), or a copy of
// what List says of one being made (c).
func (sv *Supervisor) resolve(ref string) (s *session, c *Session, err error) {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	recs := make([]Record, 0, len(sv.sessions)+len(sv.creating))
	for _, s := range sv.sessions {
		recs = append(recs, s.rec)
	}
	for _, c := range sv.creating {
		recs = append(recs, Record{ID: c.ID, Spec: Spec{Name: c.Name}})
	}
	id, err := resolveID(ref, recs)
	if err != nil {
		return nil, nil, err
	}
	if c, ok := sv.creating[id]; ok {
		info := *c
		return nil, &info, nil
	}
	return sv.sessions[id], nil, nil
}

// List returns the sessions, newest first; without all, only live ones
// and those being made.
func (sv *Supervisor) List(all bool) []Session {
	sv.mu.Lock()
	list := make([]*session, 0, len(sv.sessions))
	for _, s := range sv.sessions {
		list = append(list, s)
	}
	out := make([]Session, 0, len(sv.sessions)+len(sv.creating))
	for _, c := range sv.creating {
		out = append(out, *c)
	}
	sv.mu.Unlock()
	for _, s := range list {
		info := s.info()
		if all || info.State == Live {
			out = append(out, info)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out
}

// Get returns one session (one being made too).
func (sv *Supervisor) Get(ref string) (Session, error) {
	s, c, err := sv.resolve(ref)
	switch {
	case err != nil:
		return Session{}, err
	case c != nil:
		return *c, nil
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

// Status describes the supervisor and the home's templates.
func (sv *Supervisor) Status() SupervisorStatus {
	st := SupervisorStatus{PID: os.Getpid(), Started: sv.started, Home: string(sv.rt.Home)}
	st.Templates, _ = sv.rt.Templates.List()
	for _, s := range sv.List(true) {
		st.Sessions++
		if s.State == Live {
			st.Live++
		}
		if s.PID > 0 && s.State == Live {
			if stats, err := vm.ProcessStats(s.PID); err == nil {
				st.SessionsRSSBytes += stats.RSSBytes
			}
		}
	}
	st.Pool = sv.rt.Pool.Status()
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
