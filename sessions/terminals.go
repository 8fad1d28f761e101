package sessions

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/gondolin/gondolin/internal/contain"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/vm"
	"github.com/gondolin/gondolin/vm/agentproto"
)

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

func (s *session) ptyList() []*pty {
	list := make([]*pty, 0, len(s.ptys))
	for _, p := range s.ptys {
		list = append(list, p)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].id < list[j].id })
	return list
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

// defaultShell runs bash when the image has it, else sh, as a login
// shell so profiles are read.
var defaultShell = []string{"/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -l; fi; exec sh -l"}

// openPTY starts a persistent terminal process in the session's guest.
func (s *session) openPTY(ctx context.Context, argv []string, env []string, cwd string, rows, cols uint16, main bool) (*pty, error) {
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
		Exec:     agentproto.Exec{Argv: argv, Env: env, Cwd: cwd, TTY: true, Rows: rows, Cols: cols, Persistent: true},
		OnOutput: p.output,
	})
	if err != nil {
		p.close()
		if code, ok := vm.StartError(err); ok {
			return nil, invalidf("%v (exit code %d)", err, code)
		}
		return nil, err
	}
	p.mu.Lock()
	p.id = proc.ID
	p.mu.Unlock()
	s.mu.Lock()
	if s.closed {
		// Removed meanwhile: nobody will see this terminal's screen.
		s.mu.Unlock()
		p.close()
		return nil, errorf(errdefs.ErrNotFound, "session %s was removed", s.rec.ID)
	}
	if s.state.Stopped {
		// Stopped meanwhile: the process went with the VM, and the stop
		// ended only the terminals it knew of.
		s.mu.Unlock()
		p.close()
		return nil, errorf(errdefs.ErrUnavailable, "session %s stopped while its terminal was starting", s.rec.ID)
	}
	s.ptys[p.id] = p
	save := s.copyStateLocked()
	s.mu.Unlock()
	save.write()
	go s.waitPTY(p, proc)
	s.sv.emit(Event{Type: EventPTYOpen, Session: s.rec.ID, PTY: p.id})
	return p, nil
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
	if err := (&Spec{Env: req.Env, Cwd: req.Cwd}).Validate(); err != nil {
		return PTY{}, err
	}
	env, cwd := append(slices.Clone(s.rec.Spec.Env), req.Env...), s.rec.Spec.Cwd
	if req.Cwd != "" {
		cwd = req.Cwd
	}
	p, err := s.openPTY(ctx, req.Command, env, cwd, req.Rows, req.Cols, false)
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
			p.emuMu.Lock()
			gone := p.closed // its session was removed meanwhile
			p.emuMu.Unlock()
			p.mu.Lock()
			ptyID := p.id
			p.mu.Unlock()
			if !gone {
				sv.emit(Event{Type: EventPTYPaint, Session: id, PTY: ptyID})
			}
		})
	}
}

// terminal finds a session's terminal by its ID, or "latest" (or 0) for
// its most recent running one.
func (sv *Supervisor) terminal(ref, ptyRef string) (*session, *pty, error) {
	s, err := sv.lookup(ref)
	if err != nil {
		return nil, nil, err
	}
	var id uint64
	if ptyRef != "latest" {
		if id, err = strconv.ParseUint(ptyRef, 10, 64); err != nil {
			return nil, nil, errorf(errdefs.ErrInvalid, "bad terminal id %q", ptyRef)
		}
	}
	p, err := s.findPTY(id)
	return s, p, err
}

// execTarget is a live session's agent and the command an exec request
// runs there (its stdio still to be given).
type execTarget struct {
	agent *vm.Agent
	cmd   vm.Command
}

// prepareExec checks that a session can run an exec request now and
// builds its command: the session's environment with the request's on
// top, and the request's directory or else the session's.
func (sv *Supervisor) prepareExec(ref string, req ExecRequest) (execTarget, error) {
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		return execTarget{}, invalidf("exec needs a command")
	}
	s, err := sv.lookup(ref)
	if err != nil {
		return execTarget{}, err
	}
	s.mu.Lock()
	agent := s.agent
	st, _ := s.derivedLocked()
	s.mu.Unlock()
	if agent == nil || st != Live {
		return execTarget{}, errorf(errdefs.ErrUnavailable, "session %s is %s", s.rec.ID, st)
	}
	cmd := vm.Command{Exec: agentproto.Exec{Argv: req.Argv, Env: append(slices.Clone(s.rec.Spec.Env), req.Env...),
		Cwd: req.Cwd, TTY: req.TTY, Rows: req.Rows, Cols: req.Cols}}
	if cmd.Cwd == "" {
		cmd.Cwd = s.rec.Spec.Cwd
	}
	return execTarget{agent: agent, cmd: cmd}, nil
}

// consoleLogFile is a session's serial console log, open for reading.
type consoleLogFile struct {
	id    string   // the session's
	older []byte   // what the cap cut off its start, kept in part (see vm)
	f     *os.File // the current log, the caller's to close
}

// consoleLog opens a session's console log.
func (sv *Supervisor) consoleLog(ref string) (consoleLogFile, error) {
	s, err := sv.lookup(ref)
	if err != nil {
		return consoleLogFile{}, err
	}
	dir := sv.reg.dir(s.rec.ID)
	f, err := os.Open(filepath.Join(dir, layout.ConsoleLog))
	if err != nil {
		return consoleLogFile{}, errorf(errdefs.ErrNotFound, "session %s has no console log yet", s.rec.ID)
	}
	older, _ := os.ReadFile(filepath.Join(dir, layout.ConsoleLogOld))
	return consoleLogFile{id: s.rec.ID, older: older, f: f}, nil
}
