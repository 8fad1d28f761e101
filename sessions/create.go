package sessions

import (
	"context"
	"fmt"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/mounts"
	"github.com/gondolin/gondolin/snapshots"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// Create makes a new session, booted fresh or resumed from a snapshot:
// its VM, its first terminal and the access the request asks for.
func (sv *Supervisor) Create(ctx context.Context, req CreateRequest) (Session, error) {
	if !sv.track() {
		return Session{}, errClosing
	}
	defer sv.bg.Done()
	for _, r := range req.Listen {
		if r.GuestPort == 0 {
			return Session{}, invalidf("--listen %s: no guest port", r.Listen)
		}
	}
	spec, err := withSecrets(req.Spec, req.SecretValues, req.SSHPassphrases)
	if err != nil {
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
	var b booted
	if req.Resume != "" {
		b, err = sv.bootResumed(ctx, req)
	} else {
		b, err = sv.bootNew(ctx, req, spec)
	}
	if err != nil {
		return Session{}, err
	}
	return sv.register(ctx, b, req)
}

// booted is a session whose VM runs, not yet registered: until it is, a
// failure undoes it (abandon).
type booted struct {
	s    *session
	in   *Instance
	note string // told once to whoever made it
}

// bootNew records a new session and boots its VM.
func (sv *Supervisor) bootNew(ctx context.Context, req CreateRequest, spec Spec) (booted, error) {
	// Each host mount's directory is recorded by identity now, so that a
	// restarted supervisor serves that directory or nothing (the guest
	// may have replaced a path with a symlink meanwhile).
	if err := mounts.PinRoots(spec.Mounts); err != nil {
		return booted{}, invalidf("%v", err)
	}
	img, err := sv.rt.ResolveImage(&spec)
	if err != nil {
		return booted{}, err
	}
	cfg, err := sv.rt.MachineConfig(ctx, &spec, img, "")
	if err != nil {
		return booted{}, err
	}
	// A VM from the warm pool already lives in a session directory of
	// its own: the session takes its ID.
	id := newID()
	var w *warmVM
	doneBoot := func() {}
	if !spec.Cold {
		w, doneBoot = sv.rt.Pool.claim(cfg, &spec)
		if w != nil {
			id = w.id
		}
	}
	defer doneBoot()
	cfg = withRunDir(cfg, sv.reg.dir(id))
	cfg.Detached = true
	applyImageConfig(&spec, img)
	ref := spec.Image
	if ref == "" && len(img.Refs) > 0 {
		ref = img.Refs[0]
	}
	rec := Record{ID: id, Spec: spec, Created: time.Now().UTC(), ImageRef: ref, ImageID: img.ID,
		Command: req.Command, Keep: req.Keep, Label: req.Label, VM: cfg, HostBootID: sv.bootID}
	ctx = sv.beginCreate(ctx, creatingInfo(rec))
	ok := false
	defer func() {
		if !ok {
			sv.endCreate(id)
		}
	}()
	if err := sv.reg.create(rec); err != nil {
		if w != nil {
			w.kill()
		}
		return booted{}, err
	}
	t0 := time.Now()
	in, err := sv.rt.bootConfig(ctx, &spec, cfg, ref, w)
	doneBoot()
	if err == nil && w != nil {
		err = w.removeMarker()
		if err != nil {
			in.Kill()
		}
	}
	if err != nil {
		sv.reg.remove(id)
		return booted{}, err
	}
	if sv.rt.Debug {
		sv.log.Printf("create %s: boot %v", id, time.Since(t0).Round(time.Millisecond))
	}
	s := sv.newBootedSession(rec, in)
	s.agent = in.Agent
	ok = true // from here abandon undoes it
	return booted{s: s, in: in}, nil
}

// newBootedSession is the supervisor's record of a session whose VM in
// runs (its agent connection is the caller's to attach).
func (sv *Supervisor) newBootedSession(rec Record, in *Instance) *session {
	s := sv.newSession(rec, StateRecord{Creating: true})
	s.m, s.net, s.fs = in.Machine, in.Net, in.FS
	if in.Net != nil {
		p := in.Net.Policy()
		s.state.Policy = &p
	}
	return s
}

// register finishes a booted session the same way whether new or
// resumed: its first terminal (unless the snapshot brought its terminals
// back), its ingress and SSH endpoint, its state on disk; then it is
// listed, watched and announced. A failure undoes everything made.
func (sv *Supervisor) register(ctx context.Context, b booted, req CreateRequest) (Session, error) {
	s := b.s
	if len(s.runningPTYs()) == 0 {
		sv.setCreatingPhase(s.rec.ID, PhaseTerminal)
		if _, err := s.openPTY(ctx, s.rec.Command, s.rec.Spec.Env, s.rec.Spec.Cwd, req.Rows, req.Cols, true); err != nil {
			sv.abandon(b)
			return Session{}, err
		}
	}
	if len(req.Listen) > 0 || req.SSH != nil {
		if err := s.startAccess(req.Listen, req.SSH); err != nil {
			sv.abandon(b)
			return Session{}, err
		}
	}
	s.mu.Lock()
	s.state.Creating = false
	save := s.copyStateLocked()
	s.mu.Unlock()
	if err := save.write(); err != nil {
		// On disk it would still be being made: the next supervisor
		// would take it for a create cut short and kill its VM.
		sv.abandon(b)
		return Session{}, fmt.Errorf("save the state of session %s: %w", s.rec.ID, err)
	}
	sv.mu.Lock()
	sv.sessions[s.rec.ID] = s
	delete(sv.creating, s.rec.ID) // listed once, as live from now
	sv.mu.Unlock()
	sv.goWatch(s)
	sv.emit(Event{Type: EventCreated, Session: s.rec.ID, State: Live})
	info := s.info()
	if b.note != "" {
		// Told to whoever made it (bash prints it as a warning), once.
		sv.log.Print(b.note)
		info.Errors = append(info.Errors, b.note)
	}
	return info, nil
}

// abandon undoes a session that failed before it was registered: its VM
// killed with all that serves it, its terminals freed, its directory
// removed.
func (sv *Supervisor) abandon(b booted) {
	b.s.mu.Lock()
	held := b.s.detachLocked()
	b.s.mu.Unlock()
	b.in.Kill()
	held.close()
	b.s.close()
	sv.reg.remove(b.s.rec.ID)
	sv.endCreate(b.s.rec.ID)
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

// bootResumed makes a session from a snapshot: a live snapshot continues
// where it was (processes, terminals and their screens); a disk
// checkpoint boots with its disk.
func (sv *Supervisor) bootResumed(ctx context.Context, req CreateRequest) (booted, error) {
	id := newID()
	dir := sv.reg.dir(id)
	if err := layout.MkdirPrivate(dir); err != nil {
		return booted{}, err
	}
	ctx = sv.beginCreate(ctx, Session{ID: id, Name: req.Spec.Name, Label: req.Label, Created: time.Now().UTC(),
		Keep: req.Keep, Phase: PhaseCheckSnapshot})
	ok := false
	defer func() {
		if !ok {
			sv.reg.remove(id)
			sv.endCreate(id)
		}
	}()
	plan, err := sv.rt.planResume(ctx, req.Resume, dir)
	if err != nil {
		return booted{}, err
	}
	spec, err := plan.resumeSpec(req.Spec, req.SecretValues)
	if err != nil {
		return booted{}, err
	}
	if err := mounts.PinRoots(spec.Mounts); err != nil {
		return booted{}, invalidf("%v", err)
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
		return booted{}, err
	}
	sv.updateCreating(creatingInfo(rec))
	in, err := sv.rt.BootConfig(ctx, &spec, cfg, "snapshot "+req.Resume)
	if err != nil {
		return booted{}, err
	}
	ok = true // from here abandon undoes it
	b := booted{s: sv.newBootedSession(rec, in), in: in, note: plan.note}
	if plan.snap.Kind != snapshots.Live {
		b.s.agent = in.Agent
		return b, nil
	}
	for _, pr := range plan.session.PTYs {
		p := newPTY(pr.ID, pr.Argv, pr.Created, pr.Main, req.Rows, req.Cols)
		p.changed = sv.paintNotifier(id, p)
		b.s.ptys[pr.ID] = p
	}
	if err := b.s.adoptProcesses(ctx, in.Agent); err != nil {
		sv.abandon(b)
		return booted{}, err
	}
	return b, nil
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

// beginCreate lists a session being made, from the moment its ID is
// known until Create returns: List shows it as creating, with what is
// being done (info.Phase, then each step the boot under the returned
// context takes), and followers hear of it and of every step. register
// lists it as made instead; endCreate takes it off when the create
// fails. Nothing of it is kept on disk but state.json's Creating, which
// tells a supervisor that starts after this one died that the making
// was cut short.
func (sv *Supervisor) beginCreate(ctx context.Context, info Session) context.Context {
	info.State = Creating
	if info.Phase == "" {
		info.Phase = PhaseStarting
	}
	info.PTYs = []PTY{}
	sv.mu.Lock()
	sv.creating[info.ID] = &info
	sv.mu.Unlock()
	sv.emit(Event{Type: EventCreating, Session: info.ID, State: Creating, Phase: info.Phase})
	return withPhase(ctx, func(phase string) { sv.setCreatingPhase(info.ID, phase) })
}

// creatingInfo is what List says of a session being made from rec.
func creatingInfo(rec Record) Session {
	return Session{ID: rec.ID, Name: rec.Spec.Name, Label: rec.Label, Created: rec.Created, Image: rec.ImageRef,
		ImageID: rec.ImageID, Spec: rec.Spec, Keep: rec.Keep, CPUs: rec.VM.CPUs, MemoryMB: rec.VM.MemoryMiB}
}

// updateCreating replaces what List says of a session being made (its
// phase stays).
func (sv *Supervisor) updateCreating(info Session) {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if c, ok := sv.creating[info.ID]; ok {
		info.State, info.Phase, info.PTYs = Creating, c.Phase, []PTY{}
		*c = info
	}
}

// setCreatingPhase records and announces a step of a session being made.
func (sv *Supervisor) setCreatingPhase(id, phase string) {
	sv.mu.Lock()
	c, ok := sv.creating[id]
	changed := ok && c.Phase != phase
	if changed {
		c.Phase = phase
	}
	sv.mu.Unlock()
	if changed {
		sv.emit(Event{Type: EventCreating, Session: id, State: Creating, Phase: phase})
	}
}

// endCreate takes a session whose create failed off the list.
func (sv *Supervisor) endCreate(id string) {
	sv.mu.Lock()
	_, ok := sv.creating[id]
	delete(sv.creating, id)
	sv.mu.Unlock()
	if ok {
		sv.emit(Event{Type: EventRemoved, Session: id, Reason: "its create failed"})
	}
}
