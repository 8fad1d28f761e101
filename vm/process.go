package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/gondolin/gondolin/internal/contain"
	"github.com/gondolin/gondolin/vm/agentproto"
	"github.com/hashicorp/yamux"
)

// Command is a process to run in the guest, with the host side of its
// standard streams.
type Command struct {
	agentproto.Exec
	Stdin  io.Reader // nil: the process reads /dev/null
	Stdout io.Writer // nil: discarded
	Stderr io.Writer // nil: discarded (TTY output all arrives as stdout)
	// OnOutput, when set, receives a persistent process's output with its
	// offset in the guest's ring instead of Stdout.
	OnOutput func(offset uint64, data []byte)
}

// Process is a running guest process.
type Process struct {
	ID  uint64
	PID int

	agent *Agent
	st    *yamux.Stream
	done  chan struct{}
	exit  agentproto.ExitStatus
	err   error
}

// Start starts cmd in the guest and streams its output until it exits.
func (a *Agent) Start(ctx context.Context, cmd Command) (*Process, error) {
	cmd.Exec.Stdin = cmd.Stdin != nil
	st, resp, err := a.request(ctx, agentproto.Request{Op: agentproto.OpExec, Exec: &cmd.Exec})
	if err != nil {
		return nil, err
	}
	p := &Process{ID: resp.ID, PID: resp.PID, agent: a, st: st, done: make(chan struct{})}
	if cmd.Stdin != nil {
		in, err := a.OpenStdin(ctx, p.ID)
		if err != nil {
			st.Close()
			return nil, err
		}
		go func() {
			io.Copy(in, cmd.Stdin)
			in.Close() // EOF for the guest process
		}()
	}
	go p.read(cmd)
	return p, nil
}

// Attach follows a persistent process's output from offset (the oldest
// kept byte when offset is older) until it exits.
func (a *Agent) Attach(ctx context.Context, id, offset uint64, cmd Command) (*Process, error) {
	st, resp, err := a.request(ctx, agentproto.Request{Op: agentproto.OpAttach, ID: id, Offset: offset})
	if err != nil {
		return nil, err
	}
	p := &Process{ID: resp.ID, PID: resp.PID, agent: a, st: st, done: make(chan struct{})}
	go p.read(cmd)
	return p, nil
}

// OpenStdin opens a stream to a guest process's stdin (its terminal, for a
// TTY process; several may be open at once). Closing it sends EOF to a
// pipe; a terminal stays open.
func (a *Agent) OpenStdin(ctx context.Context, id uint64) (io.WriteCloser, error) {
	st, _, err := a.request(ctx, agentproto.Request{Op: agentproto.OpStdin, ID: id})
	if err != nil {
		return nil, err
	}
	return st, nil
}

// read dispatches output frames until the exit frame. The guest is not
// trusted: any frame out of place ends the process with an error.
func (p *Process) read(cmd Command) {
	defer close(p.done)
	defer p.st.Close()
	// What this goroutine does with the guest's bytes (frames, and the
	// caller's OnOutput: a terminal emulator) must not take the host
	// process down: a panic ends this process's stream with an error.
	defer contain.Recover("the guest's output", func(e *contain.PanicError) { p.err = e })
	stdout, stderr := cmd.Stdout, cmd.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	for {
		f, err := agentproto.ReadFrame(p.st, agentproto.MaxFrame)
		if err != nil {
			p.err = p.agent.wrap(err)
			return
		}
		switch f.Type {
		case agentproto.FrameStdout:
			stdout.Write(f.Payload)
		case agentproto.FrameStderr:
			stderr.Write(f.Payload)
		case agentproto.FrameOutput:
			off, data, err := f.Offset()
			if err != nil {
				p.err = err
				return
			}
			if cmd.OnOutput != nil {
				cmd.OnOutput(off, data)
			} else {
				stdout.Write(data)
			}
		case agentproto.FrameExit:
			if err := f.Decode(&p.exit); err != nil {
				p.err = err
			}
			return
		case agentproto.FrameError:
			var resp agentproto.Response
			if err := f.Decode(&resp); err != nil {
				p.err = err
			} else if p.err = resp.Err(); p.err == nil {
				p.err = fmt.Errorf("%w: empty error frame", agentproto.ErrBadFrame)
			}
			return
		default:
			p.err = fmt.Errorf("%w: unexpected %s frame in exec stream", agentproto.ErrBadFrame, f.Type)
			return
		}
	}
}

// abandonGrace is how long a cancelled Run waits for the guest to
// confirm that its process is gone.
const abandonGrace = 2 * time.Second

// Wait waits for the process to exit and all its output to be written.
func (p *Process) Wait() (agentproto.ExitStatus, error) {
	<-p.done
	return p.exit, p.err
}

// Done is closed when the process has exited (or its stream was lost).
func (p *Process) Done() <-chan struct{} { return p.done }

// Signal sends sig to the process's group.
func (p *Process) Signal(ctx context.Context, sig int) error {
	return p.agent.Signal(ctx, p.ID, sig)
}

// Resize changes the process's terminal size.
func (p *Process) Resize(ctx context.Context, rows, cols uint16) error {
	return p.agent.Resize(ctx, p.ID, rows, cols)
}

// Run starts cmd and waits for it.
func (a *Agent) Run(ctx context.Context, cmd Command) (agentproto.ExitStatus, error) {
	p, err := a.Start(ctx, cmd)
	if err != nil {
		return agentproto.ExitStatus{}, err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		// Closing the stream makes the agent kill a non-persistent
		// process; a guest that does not confirm soon is not waited for.
		p.st.Close()
		select {
		case <-p.done:
		case <-time.After(abandonGrace):
			p.st.SetDeadline(time.Now())
			<-p.done
		}
		return agentproto.ExitStatus{}, ctx.Err()
	}
	return p.Wait()
}

// StartError reports the exit code a shell would give for a command that
// could not be started in the guest (126 or 127), if err is such an error.
func StartError(err error) (code int, ok bool) {
	var ae *agentproto.AgentError
	if errors.As(err, &ae) && ae.Code != 0 {
		return ae.Code, true
	}
	return 0, false
}
