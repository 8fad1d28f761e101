package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// monitor is a QMP connection. go-qemu's SocketMonitor has no deadlines
// of its own, so every call here runs under the caller's context and the
// connection is dropped when the context ends first; a dropped (or
// failed) connection is marked broken, and the Machine dials a new one
// for its next call.
type monitor struct {
	mon    *qmp.SocketMonitor
	broken atomic.Bool
}

// qmpListenWait bounds how long a refused QMP connection is retried.
const qmpListenWait = 2 * time.Second

func dialQMP(ctx context.Context, socket string) (*monitor, error) {
	timeout := 5 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	// QEMU creates the socket file (bind) a moment before it listens: a
	// connection in between is refused.
	var mon *qmp.SocketMonitor
	var err error
	for deadline := time.Now().Add(qmpListenWait); ; {
		mon, err = qmp.NewSocketMonitor("unix", socket, timeout)
		if err == nil || !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to qmp: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	if err != nil {
		return nil, fmt.Errorf("connect to qmp: %w", err)
	}
	m := &monitor{mon: mon}
	if err := m.do(ctx, func() error { return mon.Connect() }); err != nil {
		return nil, fmt.Errorf("qmp handshake: %w", err)
	}
	return m, nil
}

func (m *monitor) do(ctx context.Context, f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		var netErr net.Error
		if errors.Is(err, io.EOF) || errors.As(err, &netErr) {
			m.broken.Store(true)
		}
		return err
	case <-ctx.Done():
		m.broken.Store(true)
		m.mon.Disconnect()
		<-done
		return ctx.Err()
	}
}

// run executes one QMP command and decodes its "return" into out.
func (m *monitor) run(ctx context.Context, command string, args, out any) error {
	return m.runWithFile(ctx, command, args, nil, out)
}

// runWithFile is run with a file descriptor passed along (SCM_RIGHTS),
// for getfd.
func (m *monitor) runWithFile(ctx context.Context, command string, args any, file *os.File, out any) error {
	c := qmp.Command{Execute: command}
	if args != nil { // a typed nil in Args would be sent as null
		c.Args = args
	}
	cmd, err := json.Marshal(c)
	if err != nil {
		return err
	}
	var raw []byte
	err = m.do(ctx, func() error {
		var err error
		raw, err = m.mon.RunWithFile(cmd, file)
		return err
	})
	if err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	if out == nil {
		return nil
	}
	var resp struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(raw, &resp); err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	return json.Unmarshal(resp.Return, out)
}

func (m *monitor) close() { m.mon.Disconnect() }
