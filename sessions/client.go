package sessions

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/gondolin/gondolin/ingress"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/netpolicy"
	"github.com/gondolin/gondolin/snapshots"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// Client talks to a supervisor over its unix socket. It serves the CLI
// and the dashboard.
type Client struct {
	home layout.Home
	http *http.Client
}

// NewClient returns a client for home's supervisor socket; it does not
// connect until used.
func NewClient(home layout.Home) *Client {
	sock := home.SupervisorSocket()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		MaxIdleConns: 4,
	}
	return &Client{home: home, http: &http.Client{Transport: tr}}
}

// transportError is a request that reached no supervisor. A dialer's own
// error (a context's ssh saying why) is told as it is, without the
// request's URL around it (contexts classes them all unavailable).
func transportError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && errors.Is(ue.Err, errdefs.ErrUnavailable) {
		return ue.Err
	}
	return errorf(errdefs.ErrUnavailable, "supervisor: %v", err)
}

// NewDialClient returns a client whose connections dial makes: a
// supervisor on another machine (see package contexts), reached through
// a stream that carries the same API.
func NewDialClient(dial func(ctx context.Context) (net.Conn, error)) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dial(ctx)
		},
		// Each connection is a login on the far host: keep a few.
		MaxIdleConns:    4,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{http: &http.Client{Transport: tr}}
}

// Close closes the connections the client keeps for its next request
// (a client still works after it, connecting again).
func (c *Client) Close() { c.http.CloseIdleConnections() }

const baseURL = "http://gondolin"

// do sends a request and decodes a JSON answer into out; API errors come
// back with their class (errdefs.ErrNotFound, errdefs.ErrInvalid, ...).
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	if _, has := ctx.Deadline(); method == http.MethodGet && !has {
		// A question (list, inspect, policy show) is answered at once
		// by a supervisor that works; one that is stuck, here or on
		// another machine, must not hold the command forever. Changes
		// (a create may build a template for minutes) keep the
		// caller's bound.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, questionTimeout, errNoAnswer)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, method, baseURL+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if context.Cause(ctx) == errNoAnswer {
			return noAnswer()
		}
		return transportError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return responseError(resp)
	}
	if out == nil {
		return nil
	}
	// A supervisor on another machine (a context) may be hostile or
	// broken: an answer has a bound, however large a listing grows.
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxAnswer)).Decode(out); err != nil {
		if context.Cause(ctx) == errNoAnswer {
			return noAnswer()
		}
		return err
	}
	return nil
}

// questionTimeout bounds a GET's answer when the caller gave no deadline
// (a context's first dial, with its far supervisor's start, fits). A
// variable for tests.
var questionTimeout = 2 * time.Minute

// errNoAnswer is the cause of a question's context that ran out.
var errNoAnswer = errors.New("no answer in time")

func noAnswer() error {
	return errorf(errdefs.ErrUnavailable, "the supervisor did not answer in %s", questionTimeout)
}

// maxAnswer bounds an API answer's body (a list of every session or
// snapshot fits many times over).
const maxAnswer = 64 << 20

func responseError(resp *http.Response) error {
	var e apiError
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if json.Unmarshal(b, &e) != nil || e.Error == "" {
		if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed {
			return &noRouteError{status: resp.Status}
		}
		e.Error = fmt.Sprintf("supervisor answered %s", resp.Status)
	}
	return classedError(resp.StatusCode, e)
}

// noRouteError is the answer of a supervisor that has no such endpoint
// (an older gondolin's).
type noRouteError struct{ status string }

func (e *noRouteError) Error() string {
	return "supervisor answered " + e.status + " (is an older gondolin's supervisor running? gondolin supervisor stop)"
}

// classedError is the API error e, answered with HTTP status, as the
// class of error it maps to.
func classedError(status int, e apiError) error {
	class := errdefs.FromHTTPStatus(status)
	if e.Field != "" && class == errdefs.ErrInvalid {
		return errdefs.Fieldf(e.Field, "%s", e.Error)
	}
	if class != nil {
		return errorf(class, "%s", e.Error)
	}
	return errors.New(e.Error)
}

// Ping checks that the supervisor answers, cheaply: any HTTP answer
// will do (an older supervisor's "no such endpoint" included, with an
// empty PingInfo).
func (c *Client) Ping(ctx context.Context) (PingInfo, error) {
	var info PingInfo
	err := c.do(ctx, http.MethodGet, "/v1/ping", nil, &info)
	var ne *noRouteError
	if errors.As(err, &ne) {
		return PingInfo{}, nil
	}
	return info, err
}

// Status describes the supervisor.
func (c *Client) Status(ctx context.Context) (SupervisorStatus, error) {
	var st SupervisorStatus
	err := c.do(ctx, http.MethodGet, "/v1/supervisor", nil, &st)
	return st, err
}

// RebuildTemplate asks the supervisor to rebuild, in the background, the
// template spec's VMs are cloned from.
func (c *Client) RebuildTemplate(ctx context.Context, spec Spec) error {
	return c.do(ctx, http.MethodPost, "/v1/templates/rebuild", TemplateRequest{Spec: spec.shape()}, nil)
}

// StopSupervisor stops the supervisor; with all, every live VM first.
func (c *Client) StopSupervisor(ctx context.Context, all bool) error {
	return c.do(ctx, http.MethodPost, "/v1/supervisor/stop", stopRequest{All: all}, nil)
}

// List returns live sessions, or every session with all.
func (c *Client) List(ctx context.Context, all bool) ([]Session, error) {
	var out []Session
	err := c.do(ctx, http.MethodGet, "/v1/sessions?all="+strconv.FormatBool(all), nil, &out)
	return out, err
}

// Get inspects one session by ID, prefix or name.
func (c *Client) Get(ctx context.Context, ref string) (Session, error) {
	var s Session
	err := c.do(ctx, http.MethodGet, "/v1/sessions/"+url.PathEscape(ref), nil, &s)
	return s, err
}

// Create makes a new session.
func (c *Client) Create(ctx context.Context, req CreateRequest) (Session, error) {
	var s Session
	err := c.do(ctx, http.MethodPost, "/v1/sessions", req, &s)
	return s, err
}

// Stop stops a session's VM.
func (c *Client) Stop(ctx context.Context, ref string) (Session, error) {
	var s Session
	err := c.do(ctx, http.MethodPost, "/v1/sessions/"+url.PathEscape(ref)+"/stop", nil, &s)
	return s, err
}

// Remove deletes a stale or stopped session (force: stop it first).
func (c *Client) Remove(ctx context.Context, ref string, force bool) error {
	return c.do(ctx, http.MethodDelete, "/v1/sessions/"+url.PathEscape(ref)+"?force="+strconv.FormatBool(force), nil, nil)
}

// OpenPTY starts a new terminal in a session.
func (c *Client) OpenPTY(ctx context.Context, ref string, req OpenPTYRequest) (PTY, error) {
	var p PTY
	err := c.do(ctx, http.MethodPost, "/v1/sessions/"+url.PathEscape(ref)+"/ptys", req, &p)
	return p, err
}

// Screen returns a terminal's current screen (pty 0: the latest).
func (c *Client) Screen(ctx context.Context, ref string, pty uint64) (Screen, error) {
	var s Screen
	err := c.do(ctx, http.MethodGet, "/v1/sessions/"+url.PathEscape(ref)+"/ptys/"+ptyRef(pty)+"/screen", nil, &s)
	return s, err
}

func ptyRef(id uint64) string {
	if id == 0 {
		return "latest"
	}
	return strconv.FormatUint(id, 10)
}

// upgrade opens a raw stream on path.
func (c *Client) upgrade(ctx context.Context, path string, body any) (io.ReadWriteCloser, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, baseURL+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", upgradeProtocol)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, transportError(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer resp.Body.Close()
		return nil, responseError(resp)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return nil, errors.New("supervisor did not upgrade the connection")
	}
	return rwc, nil
}

// Attachment is a client's connection to a terminal.
type Attachment struct {
	rwc io.ReadWriteCloser
	fw  *frameWriter
	// Exit is set once the terminal's process has exited.
	Exit *agentproto.ExitStatus
}

// Attach connects to a terminal of a session (pty 0: the most recent
// running one) at the given size. Its output starts with a repaint of the
// current screen.
func (c *Client) Attach(ctx context.Context, ref string, pty uint64, rows, cols uint16) (*Attachment, error) {
	path := fmt.Sprintf("/v1/sessions/%s/ptys/%s/attach?rows=%d&cols=%d", url.PathEscape(ref), ptyRef(pty), rows, cols)
	rwc, err := c.upgrade(ctx, path, nil)
	if err != nil {
		return nil, err
	}
	return &Attachment{rwc: rwc, fw: &frameWriter{w: rwc}}, nil
}

// inputChunk is the most input one frame to the supervisor carries: a
// fixed size, not agentproto.MaxData, which a newer client may have larger
// than a supervisor started before it accepts.
const inputChunk = 64 << 10

// Input sends keystrokes.
func (a *Attachment) Input(p []byte) error {
	for len(p) > 0 {
		n := min(len(p), inputChunk)
		if err := a.fw.frame(frameInput, p[:n]); err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// Resize tells the terminal its new size.
func (a *Attachment) Resize(rows, cols uint16) error {
	return a.fw.json(frameResize, [2]uint16{rows, cols})
}

// Output copies the terminal's output to w until the process exits (nil,
// with Exit set) or the connection ends.
func (a *Attachment) Output(w io.Writer) error {
	br := bufio.NewReaderSize(a.rwc, 64<<10)
	for {
		f, err := agentproto.ReadFrame(br, agentproto.MaxFrame)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		switch f.Type {
		case agentproto.FrameStdout:
			if _, err := w.Write(f.Payload); err != nil {
				return err
			}
		case agentproto.FrameExit:
			var exit agentproto.ExitStatus
			if err := f.Decode(&exit); err != nil {
				return err
			}
			a.Exit = &exit
			return nil
		case agentproto.FrameError:
			var resp agentproto.Response
			if err := f.Decode(&resp); err != nil {
				return err
			}
			return resp.Err()
		}
	}
}

// Close detaches; the terminal keeps running.
func (a *Attachment) Close() error { return a.rwc.Close() }

// ExecStreams is the caller's side of a command run with Client.Exec or
// Client.Run.
type ExecStreams struct {
	Stdin          io.Reader // nil: no stdin
	Stdout, Stderr io.Writer
	Signals        <-chan int
	Resizes        <-chan [2]uint16
	// Status and Notice, when set, receive what a one-shot exec's boot
	// reports (see Reporter).
	Status, Notice func(msg string)
}

// Exec runs a command in a live session and returns its exit code
// (128+N for signal N; 126/127 when it could not start, with the error).
func (c *Client) Exec(ctx context.Context, ref string, req ExecRequest, s ExecStreams) (int, error) {
	req.Stdin = s.Stdin != nil
	return c.execStream(ctx, "/v1/sessions/"+url.PathEscape(ref)+"/exec", req, s)
}

// ErrNoOneShot means the supervisor predates one-shot execs (an older
// gondolin still running): the caller runs the VM itself.
var ErrNoOneShot = errors.New("the supervisor cannot run one-shot execs")

// Run runs a command in a fresh VM the supervisor makes (from its warm
// pool when it can) and destroys afterwards, with Exec's exit codes.
func (c *Client) Run(ctx context.Context, req RunRequest, s ExecStreams) (int, error) {
	req.Stdin = s.Stdin != nil
	code, err := c.execStream(ctx, "/v1/exec", req, s)
	var ne *noRouteError
	if errors.As(err, &ne) {
		return 0, ErrNoOneShot
	}
	return code, err
}

// execStream sends req to path, upgrades the connection, forwards stdin,
// signals and resizes, and writes the command's output until its exit.
func (c *Client) execStream(ctx context.Context, path string, req any, s ExecStreams) (int, error) {
	rwc, err := c.upgrade(ctx, path, req)
	if err != nil {
		return 0, err
	}
	defer rwc.Close()
	fw := &frameWriter{w: rwc}
	done := make(chan struct{})
	defer close(done)
	if s.Stdin != nil {
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := s.Stdin.Read(buf)
				if n > 0 && fw.frame(frameInput, buf[:n]) != nil {
					return
				}
				if err != nil {
					fw.frame(frameInputEOF, nil)
					return
				}
			}
		}()
	}
	go func() {
		for {
			select {
			case sig := <-s.Signals:
				fw.json(frameSignal, sig)
			case size := <-s.Resizes:
				fw.json(frameResize, size)
			case <-done:
				return
			}
		}
	}()
	stdout, stderr := s.Stdout, s.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	br := bufio.NewReaderSize(rwc, 64<<10)
	for {
		f, err := agentproto.ReadFrame(br, agentproto.MaxFrame)
		if err != nil {
			return 0, errorf(errdefs.ErrUnavailable, "exec stream: %v", err)
		}
		switch f.Type {
		case agentproto.FrameStdout:
			stdout.Write(f.Payload)
		case agentproto.FrameStderr:
			stderr.Write(f.Payload)
		case frameStatus, frameNotice:
			var msg string
			if json.Unmarshal(f.Payload, &msg) != nil {
				continue
			}
			if f.Type == frameStatus && s.Status != nil {
				s.Status(msg)
			} else if f.Type == frameNotice && s.Notice != nil {
				s.Notice(msg)
			}
		case agentproto.FrameExit:
			var exit agentproto.ExitStatus
			if err := f.Decode(&exit); err != nil {
				return 0, err
			}
			return exit.Code, nil
		case agentproto.FrameError:
			var resp agentproto.Response
			if err := f.Decode(&resp); err != nil {
				return 0, err
			}
			return resp.Code, resp.Err()
		case frameFailure:
			var sf streamFailure
			if err := f.Decode(&sf); err != nil {
				return 0, err
			}
			return 0, classedError(sf.Status, sf.apiError)
		}
	}
}

// Logs copies a session's console log to w; with follow, until ctx ends.
func (c *Client) Logs(ctx context.Context, ref string, follow bool, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		baseURL+"/v1/sessions/"+url.PathEscape(ref)+"/logs?follow="+strconv.FormatBool(follow), nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return transportError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return responseError(resp)
	}
	out := &recordingWriter{w: w}
	_, err = io.Copy(out, resp.Body)
	switch {
	case ctx.Err() != nil:
		return nil
	case out.err != nil:
		return out.err // here: stdout closed, say
	case err != nil:
		// A follower must not take a dead supervisor or a dropped link
		// for the session's end.
		return errorf(errdefs.ErrUnavailable, "the stream from the supervisor broke off: %v", err)
	}
	return nil
}

// recordingWriter keeps the error its writer returned, to tell it from
// the reader's.
type recordingWriter struct {
	w   io.Writer
	err error
}

func (r *recordingWriter) Write(p []byte) (int, error) {
	n, err := r.w.Write(p)
	if err != nil {
		r.err = err
	}
	return n, err
}

// Events follows the supervisor's events until ctx ends or the stream
// breaks; the channel is closed then.
func (c *Client) Events(ctx context.Context) (<-chan Event, error) {
	ch, _, err := getStream[Event](ctx, c, "/v1/events")
	return ch, err
}

// getStream follows a JSON-lines answer; the channel closes when the
// stream or ctx ends. Then cut says how it ended: nil when the
// supervisor ended it or ctx did, the error when the connection broke
// (the supervisor died, a context's link dropped) or the answer was not
// JSON lines.
func getStream[T any](ctx context.Context, c *Client, path string) (_ <-chan T, cut func() error, _ error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+path, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, nil, transportError(err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, nil, responseError(resp)
	}
	ch := make(chan T, 64)
	var end error                // written before ended closes
	ended := make(chan struct{}) // closed just before ch
	go func() {
		defer close(ch)
		defer close(ended)
		defer resp.Body.Close()
		dec := json.NewDecoder(resp.Body)
		for {
			var v T
			if err := dec.Decode(&v); err != nil {
				if err != io.EOF && ctx.Err() == nil {
					end = err
				}
				return
			}
			select {
			case ch <- v:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, func() error {
		select {
		case <-ended:
			return end
		default:
			return nil // not ended yet
		}
	}, nil
}

// WaitState polls until a session reaches state or ctx ends (for tests and
// scripts).
func (c *Client) WaitState(ctx context.Context, ref string, state State) (Session, error) {
	for {
		s, err := c.Get(ctx, ref)
		if err == nil && s.State == state {
			return s, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("session %s is %s, not %s", ref, s.State, state)
			}
			return s, err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Policy returns a session's network policy (no secret values).
func (c *Client) Policy(ctx context.Context, ref string) (PolicyView, error) {
	var v PolicyView
	err := c.do(ctx, http.MethodGet, "/v1/sessions/"+url.PathEscape(ref)+"/policy", nil, &v)
	return v, err
}

// ChangePolicy edits a running session's network policy; the next
// request sees it.
func (c *Client) ChangePolicy(ctx context.Context, ref string, ch PolicyChange) (PolicyView, error) {
	var v PolicyView
	err := c.do(ctx, http.MethodPost, "/v1/sessions/"+url.PathEscape(ref)+"/policy", ch, &v)
	return v, err
}

// NetworkEvents returns a session's network decisions; with follow, the
// channel stays open for new ones until ctx ends.
func (c *Client) NetworkEvents(ctx context.Context, ref string, follow bool) (<-chan netpolicy.Event, error) {
	ch, _, err := c.NetworkEventStream(ctx, ref, follow)
	return ch, err
}

// NetworkEventStream is NetworkEvents for a reader that must know how
// the stream ended: once the channel has closed, cut returns nil if the
// supervisor ended it (the session stopped, or follow was false) or ctx
// did, and why otherwise (the supervisor died, a context's link broke).
func (c *Client) NetworkEventStream(ctx context.Context, ref string, follow bool) (_ <-chan netpolicy.Event, cut func() error, _ error) {
	return getStream[netpolicy.Event](ctx, c, "/v1/sessions/"+url.PathEscape(ref)+"/network-events?follow="+strconv.FormatBool(follow))
}

// Snapshot checkpoints a live session (Live: with RAM and processes).
func (c *Client) Snapshot(ctx context.Context, ref string, req SnapshotRequest) (*snapshots.Snapshot, error) {
	var snap snapshots.Snapshot
	err := c.do(ctx, http.MethodPost, "/v1/sessions/"+url.PathEscape(ref)+"/snapshot", req, &snap)
	return &snap, err
}

// Snapshots lists the snapshots in the store, newest first.
func (c *Client) Snapshots(ctx context.Context) ([]SnapshotInfo, error) {
	var list []SnapshotInfo
	err := c.do(ctx, http.MethodGet, "/v1/snapshots", nil, &list)
	return list, err
}

// GetSnapshot returns one snapshot's metadata (ref: ID, prefix or name).
func (c *Client) GetSnapshot(ctx context.Context, ref string) (*snapshots.Snapshot, error) {
	var snap snapshots.Snapshot
	err := c.do(ctx, http.MethodGet, "/v1/snapshots/"+url.PathEscape(ref), nil, &snap)
	return &snap, err
}

// RemoveSnapshot deletes a snapshot.
func (c *Client) RemoveSnapshot(ctx context.Context, ref string) error {
	return c.do(ctx, http.MethodDelete, "/v1/snapshots/"+url.PathEscape(ref), nil, nil)
}

// Routes lists a session's ingress routes.
func (c *Client) Routes(ctx context.Context, ref string) ([]ingress.Route, error) {
	var routes []ingress.Route
	err := c.do(ctx, http.MethodGet, "/v1/sessions/"+url.PathEscape(ref)+"/ingress", nil, &routes)
	return routes, err
}

// AddRoute opens an ingress route on a live session and returns it with
// the address it got.
func (c *Client) AddRoute(ctx context.Context, ref string, r ingress.Route) (ingress.Route, error) {
	var got ingress.Route
	err := c.do(ctx, http.MethodPost, "/v1/sessions/"+url.PathEscape(ref)+"/ingress", r, &got)
	return got, err
}

// RemoveRoute closes the ingress route listening on listen.
func (c *Client) RemoveRoute(ctx context.Context, ref, listen string) error {
	return c.do(ctx, http.MethodDelete, "/v1/sessions/"+url.PathEscape(ref)+"/ingress/"+url.PathEscape(listen), nil, nil)
}
