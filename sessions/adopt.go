package sessions

import (
	"context"
	"errors"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/qemuproc"
	"github.com/gondolin/gondolin/mounts"
	"github.com/gondolin/gondolin/vm"
	"github.com/gondolin/gondolin/vm/agentproto"
)

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
		running := s.takeOverVM()
		sv.mu.Lock()
		sv.sessions[id] = s
		sv.mu.Unlock()
		if !running {
			continue
		}
		m := s.m
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

// takeOverVM takes over a loaded session's running VM, before the
// session is listed: its QEMU, network, host mounts, ingress and SSH
// endpoint. It reports false when there is no VM to take over (stopped,
// or stale with the reason); the agent is connected afterwards.
func (s *session) takeOverVM() bool {
	if s.state.Stopped {
		return false
	}
	if s.state.Creating {
		s.abandoned()
		return false
	}
	if s.rec.HostBootID != "" && s.rec.HostBootID != s.sv.bootID {
		s.stale = "the host rebooted since the VM started"
		return false
	}
	m, err := vm.Adopt(s.rec.VM)
	if err != nil {
		s.stale = staleReason(err)
		return false
	}
	s.m = m
	if s.rec.VM.Network {
		if err := s.restoreNetwork(); err != nil {
			s.stale = "network: " + err.Error()
		}
	}
	if hm := s.rec.Spec.hostMounts(); len(hm) > 0 {
		// The guest keeps its mounts and resyncs with a new server.
		// A mount whose host directory was replaced meanwhile is left
		// out: its guest requests fail at once, and list says why.
		srv, lost, err := mounts.NewServerKeeping(hm, nil)
		if err == nil {
			if err = s.sv.rt.serveMounts(context.Background(), srv, s.sv.reg.dir(s.rec.ID)); err != nil {
				srv.Close()
			} else {
				s.fs = srv
			}
		}
		if err = errors.Join(append(lost, err)...); err != nil {
			s.mountErr = "mounts not served: " + strings.ReplaceAll(err.Error(), "\n", "; ")
		}
	}
	if len(s.state.Routes) > 0 || s.state.SSH != nil {
		if err := s.startAccess(s.state.Routes, s.state.SSH); err != nil {
			s.sv.log.Printf("adopt %s: %v", s.rec.ID, err)
		}
	}
	return true
}

// abandoned handles a session whose making an earlier supervisor left
// unfinished (it died midway): nobody holds its terminal or knows how
// far its setup got, so a VM it left (by command line: QEMU may not have
// written its pid file yet) is killed, and the session stays listed as
// stale, never as creating, until removed.
func (s *session) abandoned() {
	dir := s.sv.reg.dir(s.rec.ID)
	for _, pid := range qemuproc.In(dir) {
		syscall.Kill(pid, syscall.SIGKILL)
		s.sv.log.Printf("session %s: killed qemu %d of an unfinished create", s.rec.ID, pid)
	}
	vm.RemoveRuntimeFiles(dir)
	s.stale = "its create was cut short (the supervisor stopped); remove it with: gondolin rm " + s.rec.ID
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
	m := s.m
	if s.net != nil {
		setup.Env = s.net.GuestEnv()
	}
	s.mu.Unlock()
	if m == nil {
		return errorf(errdefs.ErrUnavailable, "session %s has no running VM", s.rec.ID)
	}
	a, err := m.ConnectAgent(ctx, setup)
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
	if s.state.Stopped || s.m == nil {
		s.mu.Unlock()
		return errorf(errdefs.ErrUnavailable, "session %s stopped while its agent was connecting", s.rec.ID)
	}
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
