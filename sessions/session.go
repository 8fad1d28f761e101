package sessions

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/gondolin/gondolin/ingress"
	"github.com/gondolin/gondolin/internal/contain"
	"github.com/gondolin/gondolin/mounts"
	"github.com/gondolin/gondolin/netpolicy"
	"github.com/gondolin/gondolin/sshaccess"
	"github.com/gondolin/gondolin/vm"
)

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
	// orders the writes, newest is the newest copy, written the version
	// state.json holds and removed says the directory is gone, so that an
	// older state never overwrites a newer one (even after a failed
	// write) and nothing is written after removal.
	writeMu sync.Mutex
	newest  stateWrite // the newest copy handed to write; under writeMu
	written uint64     // under writeMu
	removed bool       // under writeMu

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

// The supervisor pings every live agent this often, and asks a guest
// that did not answer again as often: it is stale until it answers.
// (probeInterval is a variable for tests.)
var probeInterval = 10 * time.Second

const probeTimeout = 5 * time.Second

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
// a lost connection is made again, and a guest that did not answer is
// asked again at every probe (it may answer late); a dead VM makes the
// session stale. It returns when the session goes or the supervisor
// closes (s.ctx ends): a connection that Close dropped is not made again.
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
			// A dying VM drops the connection first: give it a moment to
			// show that it exited.
			if s.endedWithin(m, 100*time.Millisecond) {
				return
			}
			s.mu.Lock()
			if s.agent == a {
				s.agent = nil
			}
			s.mu.Unlock()
			s.reconnect()
		case <-time.After(probeInterval):
			if a == nil {
				s.reconnect()
				continue
			}
			// A hung guest keeps its connection open: probe it (unless it
			// is paused on purpose, for a snapshot).
			s.mu.Lock()
			snapshotting := s.snapshotting
			s.mu.Unlock()
			if !snapshotting {
				ctx, cancel := context.WithTimeout(s.ctx, probeTimeout)
				_, err := a.Ping(ctx)
				cancel()
				if err != nil && s.ctx.Err() == nil {
					s.mu.Lock()
					if !s.stopping {
						s.stale = "agent not answering: " + err.Error()
					}
					s.mu.Unlock()
					a.Close() // the next round reconnects
				}
			}
		}
	}
}

// endedWithin waits up to d for the session to go or its VM to exit
// (which it then handles), and reports whether either happened.
func (s *session) endedWithin(m *vm.Machine, d time.Duration) bool {
	select {
	case <-s.ctx.Done():
		return true
	case <-m.Exited():
		s.vmExited(m)
		return true
	case <-time.After(d):
		return false
	}
}

// reconnect connects to the agent again, unless the session is stopping,
// stopped, broken (never served again) or paused for a snapshot. A guest
// that does not answer leaves the session stale with the reason; watch
// asks again at its next probe, one attempt at a time, each bounded.
func (s *session) reconnect() {
	s.mu.Lock()
	skip := s.stopping || s.state.Stopped || s.broken != "" || s.snapshotting
	wasStale := s.stale != ""
	s.mu.Unlock()
	if skip {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	err := s.connect(ctx)
	cancel()
	if s.ctx.Err() != nil {
		return // the session went meanwhile: not the guest's fault
	}
	if err == nil {
		if wasStale {
			s.sv.emit(Event{Type: EventState, Session: s.rec.ID, State: Live})
		}
		return
	}
	s.mu.Lock()
	reason := "agent not answering: " + err.Error()
	changed := s.stale != reason
	s.stale = reason
	s.mu.Unlock()
	if changed {
		s.sv.emit(Event{Type: EventState, Session: s.rec.ID, State: Stale, Reason: reason})
	}
}

// vmExited makes the session stale when its VM dies on its own (a stop
// is not a death), releasing what served the VM.
func (s *session) vmExited(m *vm.Machine) {
	s.mu.Lock()
	if s.m != m {
		s.mu.Unlock()
		return
	}
	s.m = nil
	held := s.detachLocked()
	stopped := s.state.Stopped || s.stopping
	ptys := s.ptyList()
	s.mu.Unlock()
	held.close()
	// Its terminals end before the session says why it is stale: whoever
	// reads that reason also sees no terminal running on.
	for _, p := range ptys {
		p.exited(-1)
	}
	if !stopped {
		reason := "the VM exited: " + m.ExitErr().Error()
		s.mu.Lock()
		s.stale = reason
		s.mu.Unlock()
		s.sv.log.Printf("session %s: %s", s.rec.ID, reason)
		s.sv.emit(Event{Type: EventState, Session: s.rec.ID, State: Stale, Reason: reason})
	}
}

// vmServices are what this process runs for one VM: its agent
// connection, network, mounts server, ingress and SSH endpoint.
type vmServices struct {
	agent *vm.Agent
	net   *netpolicy.Network
	fs    *mounts.Server
	gw    *ingress.Gateway
	sshd  *sshaccess.Server
}

// detachLocked takes the VM's services off the session (the caller holds
// s.mu), for close to release outside the lock: closing one may wait on
// the guest, and List must not. The one release path of a stop and of a
// VM's death.
func (s *session) detachLocked() vmServices {
	held := vmServices{agent: s.agent, net: s.net, fs: s.fs, gw: s.gw, sshd: s.sshd}
	s.agent, s.net, s.fs, s.gw, s.sshd = nil, nil, nil, nil, nil
	return held
}

// close releases the services: the listeners first (nothing new comes
// in), then the agent, the mounts and the network.
func (v vmServices) close() {
	if v.gw != nil {
		v.gw.Close()
	}
	if v.sshd != nil {
		v.sshd.Close()
	}
	if v.agent != nil {
		v.agent.Close()
	}
	if v.fs != nil {
		v.fs.Close()
	}
	if v.net != nil {
		v.net.Close()
	}
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
	if s.snapshotting && st == Live {
		out.Phase = PhaseSnapshot
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

// write saves the newest state copied so far, unless it is saved already
// (or the session was removed): a copy that comes late, after a newer one
// failed to save, saves the newer one instead of itself. A failure is
// logged, and returned for the callers that cannot go on without it.
func (w stateWrite) write() error {
	s := w.s
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.removed {
		return nil
	}
	if w.version > s.newest.version {
		s.newest = w
	}
	if s.newest.version <= s.written {
		return nil
	}
	if err := s.sv.reg.saveState(s.rec.ID, s.newest.state); err != nil {
		s.sv.log.Printf("session %s: save state: %v", s.rec.ID, err)
		return err
	}
	s.written = s.newest.version
	return nil
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
	s.m = nil
	held := s.detachLocked()
	ptys := s.ptyList()
	save := s.copyStateLocked()
	s.mu.Unlock()
	save.write()
	held.close()
	if a != nil && a != held.agent {
		a.Close() // replaced by a reconnect during the stop
	}
	for _, p := range ptys {
		p.exited(-1)
	}
	// Nothing of a stopped VM is needed but its disk and console log.
	vm.RemoveRuntimeFiles(s.sv.reg.dir(s.rec.ID))
	s.sv.emit(Event{Type: EventState, Session: s.rec.ID, State: Stopped})
	return nil
}
