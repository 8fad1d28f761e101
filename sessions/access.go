package sessions

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"syscall"

	"github.com/gondolin/gondolin/ingress"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/sshaccess"
	"github.com/gondolin/gondolin/vm"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// SSHAccess asks for an SSH endpoint on the host that logs into the VM.
type SSHAccess struct {
	User   string `json:"user,omitempty"`   // default root
	Port   int    `json:"port,omitempty"`   // 0: a free one
	Listen string `json:"listen,omitempty"` // default 127.0.0.1
}

// servingLocked reports whether the session's VM runs and is not being
// stopped: only then may a listener be added, since a stop releases only
// what it finds (the caller holds s.mu).
func (s *session) servingLocked() bool {
	return s.m != nil && !s.state.Stopped && !s.stopping
}

// startAccess opens a session's ingress routes and SSH endpoint. It runs
// at creation and again after a supervisor restart, with the recorded
// routes and port, so addresses and the printed ssh command stay valid.
// Failures are reported on the session rather than failing it.
func (s *session) startAccess(routes []ingress.Route, ssh *SSHAccess) error {
	s.mu.Lock()
	n := s.net
	s.mu.Unlock()
	var errs []error
	if len(routes) > 0 {
		if n == nil {
			return errorf(errdefs.ErrInvalid, "--listen needs the VM's network (it was started with --no-network)")
		}
		gw := ingress.New(n.DialGuest, ingress.Options{Logger: s.sv.rt.Log})
		var kept []ingress.Route
		for _, r := range routes {
			got, err := gw.Add(r)
			if err != nil {
				errs = append(errs, fmt.Errorf("ingress %s: %w", r.Listen, err))
				continue
			}
			kept = append(kept, got)
		}
		s.mu.Lock()
		if !s.servingLocked() {
			s.mu.Unlock()
			gw.Close()
			return errorf(errdefs.ErrUnavailable, "session %s stopped while its routes were opened", s.rec.ID)
		}
		s.gw = gw
		s.state.Routes = kept
		s.mu.Unlock()
	}
	if ssh != nil {
		srv, err := sshaccess.New(sshaccess.Options{
			Dir: filepath.Join(s.sv.reg.dir(s.rec.ID), layout.SessionSSHDir), Listen: ssh.Listen, Port: ssh.Port, User: ssh.User,
			Backend: agentBackend{s}, Logger: s.sv.rt.Log,
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("ssh access: %w", err))
		} else {
			rec := *ssh
			rec.Port = srv.Port()
			s.mu.Lock()
			if !s.servingLocked() {
				s.mu.Unlock()
				srv.Close()
				return errorf(errdefs.ErrUnavailable, "session %s stopped while its SSH endpoint was opened", s.rec.ID)
			}
			s.sshd = srv
			s.state.SSH = &rec
			s.mu.Unlock()
		}
	}
	s.mu.Lock()
	s.accessErrs = nil
	for _, e := range errs {
		s.accessErrs = append(s.accessErrs, e.Error())
	}
	save := s.copyStateLocked()
	s.mu.Unlock()
	save.write()
	return errors.Join(errs...)
}

// agentBackend runs the SSH endpoint's commands and shells through the
// session's guest agent.
type agentBackend struct{ s *session }

func (b agentBackend) Exec(ctx context.Context, p *sshaccess.Process) (sshaccess.Exit, error) {
	b.s.mu.Lock()
	a := b.s.agent
	b.s.mu.Unlock()
	if a == nil {
		return sshaccess.Exit{}, errorf(errdefs.ErrUnavailable, "session %s is not connected", b.s.rec.ID)
	}
	argv := p.Argv
	if argv == nil {
		argv = defaultShell
	}
	cmd := vm.Command{
		Exec:  agentproto.Exec{Argv: argv, Env: append(append([]string{}, b.s.rec.Spec.Env...), p.Env...), Cwd: b.s.rec.Spec.Cwd},
		Stdin: p.Stdin, Stdout: p.Stdout, Stderr: p.Stderr,
	}
	if p.TTY != nil {
		cmd.TTY, cmd.Rows, cmd.Cols = true, p.TTY.Rows, p.TTY.Cols
		if p.TTY.Term != "" {
			cmd.Env = append(cmd.Env, "TERM="+p.TTY.Term)
		}
	}
	proc, err := a.Start(ctx, cmd)
	if err != nil {
		if code, ok := vm.StartError(err); ok {
			return sshaccess.Exit{Code: code}, nil
		}
		return sshaccess.Exit{}, err
	}
	go func() {
		var resize <-chan sshaccess.WindowSize
		if p.TTY != nil {
			resize = p.TTY.Resize
		}
		for {
			select {
			case ws, ok := <-resize:
				if !ok {
					resize = nil
					continue
				}
				proc.Resize(context.Background(), ws.Rows, ws.Cols)
			case sig, ok := <-p.Signals:
				if !ok {
					p.Signals = nil
					continue
				}
				proc.Signal(context.Background(), int(sig))
			case <-ctx.Done():
				proc.Signal(context.Background(), int(syscall.SIGKILL))
				return
			case <-proc.Done():
				return
			}
		}
	}()
	exit, err := proc.Wait()
	if err != nil {
		return sshaccess.Exit{}, err
	}
	return sshaccess.Exit{Code: exit.Code, Signal: syscall.Signal(exit.Signal)}, nil
}

// Routes returns a session's ingress routes.
func (sv *Supervisor) Routes(ref string) ([]ingress.Route, error) {
	s, err := sv.lookup(ref)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gw == nil {
		return []ingress.Route{}, nil
	}
	return s.gw.List(), nil
}

// AddRoute opens a new ingress route on a live session.
func (sv *Supervisor) AddRoute(ref string, r ingress.Route) (ingress.Route, error) {
	s, err := sv.lookup(ref)
	if err != nil {
		return ingress.Route{}, err
	}
	got, save, err := s.addRoute(r)
	if err != nil {
		return ingress.Route{}, err
	}
	save.write()
	sv.emit(Event{Type: EventIngress, Session: s.rec.ID})
	return got, nil
}

// addRoute opens r under the session's lock and returns the state for
// the caller to write once the lock is released.
func (s *session) addRoute(r ingress.Route) (ingress.Route, stateWrite, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, _ := s.derivedLocked(); st != Live {
		return ingress.Route{}, stateWrite{}, errorf(errdefs.ErrUnavailable, "session %s is %s", s.rec.ID, st)
	}
	if s.net == nil {
		return ingress.Route{}, stateWrite{}, errorf(errdefs.ErrInvalid, "session %s has no network", s.rec.ID)
	}
	if s.gw == nil {
		s.gw = ingress.New(s.net.DialGuest, ingress.Options{Logger: s.sv.rt.Log})
	}
	got, err := s.gw.Add(r)
	if err != nil {
		return ingress.Route{}, stateWrite{}, err
	}
	s.state.Routes = s.gw.List()
	return got, s.copyStateLocked(), nil
}

// RemoveRoute closes an ingress route.
func (sv *Supervisor) RemoveRoute(ref, listen string) error {
	s, err := sv.lookup(ref)
	if err != nil {
		return err
	}
	save, err := s.removeRoute(listen)
	if err != nil {
		return err
	}
	save.write()
	sv.emit(Event{Type: EventIngress, Session: s.rec.ID})
	return nil
}

// removeRoute closes a route under the session's lock and returns the
// state for the caller to write once the lock is released.
func (s *session) removeRoute(listen string) (stateWrite, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gw == nil {
		return stateWrite{}, errorf(errdefs.ErrNotFound, "session %s has no ingress route %s", s.rec.ID, listen)
	}
	if err := s.gw.Remove(listen); err != nil {
		return stateWrite{}, err
	}
	s.state.Routes = s.gw.List()
	return s.copyStateLocked(), nil
}
