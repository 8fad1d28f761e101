package vm

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/vm/agentproto"
	"github.com/hashicorp/yamux"
)

// Agent is a connection to the guest agent of one VM.
type Agent struct {
	sess *yamux.Session
	conn net.Conn
}

// ErrAgentGone means the connection to the guest agent was lost: the VM
// stopped, the agent crashed, or another host took the channel over.
var ErrAgentGone = errors.New("guest agent connection lost")

// helloInterval is how often the host repeats HELLO until the guest
// answers; later repeats carry padding that flushes out a partial frame a
// stale guest-side session may still be waiting to complete.
const (
	helloInterval = 100 * time.Millisecond
	helloPadding  = 64 << 10
)

// DialAgent connects to the agent's socket and performs the handshake,
// waiting at most until ctx is done.
func DialAgent(ctx context.Context, socket string) (*Agent, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("connect to guest agent: %w", err)
	}
	a, err := Handshake(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return a, nil
}

// Handshake resynchronises with the agent over conn (see agentproto) and
// starts the multiplexed session. conn is owned by the Agent afterwards.
func Handshake(ctx context.Context, conn net.Conn) (*Agent, error) {
	nonce := agentproto.NewNonce()
	br, err := exchange(ctx, conn, agentproto.WordHello, agentproto.WordReady, nonce)
	if err != nil {
		return nil, fmt.Errorf("guest agent handshake: %w", err)
	}
	// A guest that stopped reading must not hold this write forever.
	if d, ok := ctx.Deadline(); ok {
		conn.SetWriteDeadline(d)
	}
	_, err = conn.Write(agentproto.Line(agentproto.WordGo, nonce))
	conn.SetWriteDeadline(time.Time{})
	if err != nil {
		return nil, fmt.Errorf("guest agent handshake: %w", err)
	}
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = false // a paused VM is not a dead one; the host watches QEMU instead
	cfg.LogOutput = io.Discard
	cfg.MaxStreamWindowSize = 1 << 20
	sess, err := yamux.Client(&agentproto.Conn{R: br, W: &agentproto.CoalesceWriter{W: conn}, C: conn}, cfg)
	if err != nil {
		return nil, err
	}
	return &Agent{sess: sess, conn: conn}, nil
}

// exchange repeats the handshake line (send, nonce) on conn until the
// guest answers with (want, nonce), and returns the reader positioned
// after the answer. Later repeats carry padding that flushes out a partial
// frame a stale guest-side session may still be waiting to complete.
func exchange(ctx context.Context, conn net.Conn, send, want, nonce string) (*bufio.Reader, error) {
	line := agentproto.Line(send, nonce)
	padded := append([]byte(strings.Repeat("\n", helloPadding)), line...)

	stop := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for i := 0; ; i++ {
			msg := line
			if i > 0 {
				msg = padded
			}
			if _, err := conn.Write(msg); err != nil {
				return
			}
			select {
			case <-stop:
				return
			case <-time.After(helloInterval):
			}
		}
	}()

	br := bufio.NewReaderSize(conn, 64<<10)
	done := make(chan error, 1)
	go func() {
		for {
			word, n, err := agentproto.ScanLine(br)
			if err != nil {
				done <- err
				return
			}
			if word == want && n == nonce {
				done <- nil
				return
			}
		}
	}()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		conn.SetDeadline(time.Now()) // unblock the reader and the writer
		<-done
		err = ctx.Err()
	}
	close(stop)
	// The writer may be stuck in a write to a guest that stopped
	// reading: cut it off (a half-written line is skipped by the
	// guest's scanner).
	conn.SetWriteDeadline(time.Now())
	<-stopped
	conn.SetDeadline(time.Time{})
	if errors.Is(err, agentproto.ErrNoHandshake) {
		err = ErrAgentGone
	}
	if err != nil {
		return nil, err
	}
	return br, nil
}

// ParkAgent parks the guest agent before its VM's state is saved (see
// agentproto): the agent answers only from its handshake loop, once its
// previous session has ended and nothing else runs, so the saved guest is
// in one known place. The returned connection must stay open until the
// state is saved: the agent is then blocked reading it, waiting for the
// next host, which is where every restored copy starts.
func (m *Machine) ParkAgent(ctx context.Context) (io.Closer, error) {
	gctx, cancel := m.guard(ctx)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(gctx, "unix", m.cfg.path(layout.AgentSocket))
	if err != nil {
		return nil, fmt.Errorf("connect to guest agent: %w", err)
	}
	if err := park(gctx, conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("park the guest agent: %w", m.guestError(gctx, err))
	}
	return conn, nil
}

// park asks the agent on conn to park until it answers or ctx ends (a
// park refused, because something still runs, is never answered).
func park(ctx context.Context, conn net.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, parkTimeout)
	defer cancel()
	_, err := exchange(ctx, conn, agentproto.WordPark, agentproto.WordParked, agentproto.NewNonce())
	return err
}

// parkTimeout bounds a park: the agent waits at most 5 s for the last
// session's requests to end.
const parkTimeout = 15 * time.Second

// Close drops the connection; persistent guest processes keep running.
func (a *Agent) Close() error { return a.sess.Close() }

// Done is closed when the connection is lost.
func (a *Agent) Done() <-chan struct{} { return a.sess.CloseChan() }

// callTimeout bounds the wait for an answer when the caller set no
// deadline: the guest is not trusted to answer at all. (A variable for
// tests.)
var callTimeout = time.Minute

// request opens a stream, sends req and reads the response. The stream is
// returned open for callers that go on using it.
func (a *Agent) request(ctx context.Context, req agentproto.Request) (*yamux.Stream, agentproto.Response, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, callTimeout)
		defer cancel()
	}
	st, err := a.sess.OpenStream()
	if err != nil {
		return nil, agentproto.Response{}, a.wrap(err)
	}
	// Closing a yamux stream only half-closes it: a read waits on for the
	// guest (up to yamux's five-minute close timeout). The deadline ends
	// the wait at once.
	stop := context.AfterFunc(ctx, func() {
		st.SetDeadline(time.Now())
		st.Close()
	})
	defer stop()
	if err := agentproto.WriteJSON(st, agentproto.FrameRequest, req); err != nil {
		st.Close()
		return nil, agentproto.Response{}, a.wrap(err)
	}
	var resp agentproto.Response
	if err := agentproto.Expect(st, agentproto.FrameResponse, &resp); err != nil {
		st.Close()
		if ctx.Err() != nil {
			return nil, resp, ctx.Err()
		}
		return nil, resp, a.wrap(err)
	}
	return st, resp, nil
}

// call is request for ops that end with the response.
func (a *Agent) call(ctx context.Context, req agentproto.Request) (agentproto.Response, error) {
	st, resp, err := a.request(ctx, req)
	if err == nil {
		st.Close()
	}
	return resp, err
}

func (a *Agent) wrap(err error) error {
	var agentErr *agentproto.AgentError
	if errors.As(err, &agentErr) {
		return err
	}
	if a.sess.IsClosed() || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, yamux.ErrConnectionReset) || errors.Is(err, yamux.ErrSessionShutdown) {
		return fmt.Errorf("%w: %v", ErrAgentGone, err)
	}
	return err
}

// Ping asks the agent who it is.
func (a *Agent) Ping(ctx context.Context) (agentproto.Info, error) {
	resp, err := a.call(ctx, agentproto.Request{Op: agentproto.OpPing})
	if err != nil {
		return agentproto.Info{}, err
	}
	if resp.Info == nil {
		return agentproto.Info{}, fmt.Errorf("%w: ping without info", agentproto.ErrBadFrame)
	}
	return *resp.Info, nil
}

// Setup sends the guest its hostname, the time and fresh entropy. A seed
// is generated when s.Seed is empty.
func (a *Agent) Setup(ctx context.Context, s agentproto.Setup) error {
	if len(s.Seed) == 0 {
		s.Seed = make([]byte, 64)
		rand.Read(s.Seed)
	}
	if s.UnixNano == 0 {
		s.UnixNano = time.Now().UnixNano()
	}
	_, err := a.call(ctx, agentproto.Request{Op: agentproto.OpSetup, Setup: &s})
	return err
}

// Network has the guest configure its NIC by DHCP and trust caCert.
func (a *Agent) Network(ctx context.Context, n agentproto.Network) error {
	_, err := a.call(ctx, agentproto.Request{Op: agentproto.OpNetwork, Network: &n})
	return err
}

// Mount has the guest mount a filesystem.
func (a *Agent) Mount(ctx context.Context, m agentproto.Mount) error {
	_, err := a.call(ctx, agentproto.Request{Op: agentproto.OpMount, Mount: &m})
	return err
}

// Freeze freezes (thaw=false) or thaws the guest's root filesystem; a
// freeze undoes itself after timeout.
func (a *Agent) Freeze(ctx context.Context, thaw bool, timeout time.Duration) error {
	_, err := a.call(ctx, agentproto.Request{Op: agentproto.OpFreeze, Freeze: &agentproto.Freeze{Thaw: thaw, TimeoutMS: int(timeout.Milliseconds())}})
	return err
}

// Sync flushes the guest's filesystems.
func (a *Agent) Sync(ctx context.Context) error {
	_, err := a.call(ctx, agentproto.Request{Op: agentproto.OpSync})
	return err
}

// Detach asks the agent to drop this connection and wait for a new
// handshake, then closes the connection.
func (a *Agent) Detach(ctx context.Context) error {
	_, err := a.call(ctx, agentproto.Request{Op: agentproto.OpDetach})
	a.Close()
	return err
}

// Shutdown asks the guest to sync and power off.
func (a *Agent) Shutdown(ctx context.Context) error {
	_, err := a.call(ctx, agentproto.Request{Op: agentproto.OpShutdown})
	return err
}

// Processes lists the agent's processes.
func (a *Agent) Processes(ctx context.Context) ([]agentproto.Process, error) {
	resp, err := a.call(ctx, agentproto.Request{Op: agentproto.OpList})
	return resp.Processes, err
}

// Signal sends a signal to a guest process's group.
func (a *Agent) Signal(ctx context.Context, id uint64, sig int) error {
	_, err := a.call(ctx, agentproto.Request{Op: agentproto.OpSignal, ID: id, Signal: sig})
	return err
}

// Resize changes a guest process's terminal size.
func (a *Agent) Resize(ctx context.Context, id uint64, rows, cols uint16) error {
	_, err := a.call(ctx, agentproto.Request{Op: agentproto.OpResize, ID: id, Rows: rows, Cols: cols})
	return err
}
