package sessions

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/ingress"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/vm"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// maxBody bounds every request body: a bigger one is refused with 413
// before anything is done.
const maxBody = 1 << 20

// upgradeProtocol names the raw stream an attach or exec request turns
// into, in the manner of Docker's engine API.
const upgradeProtocol = "gondolin-stream"

// API serves the supervisor over HTTP.
type API struct {
	sv *Supervisor
	// OnStop is called after a supervisor stop request has been answered.
	OnStop func(all bool)
	mux    *http.ServeMux
}

// NewAPI returns the HTTP handler for sv.
func NewAPI(sv *Supervisor) *API {
	a := &API{sv: sv, mux: http.NewServeMux()}
	// Every call that answers once has a deadline, so that one stuck
	// session can never hold a client (or, through it, everyone's
	// listing) forever; streams (attach, exec, logs, events) end with
	// their client instead.
	quick := func(pattern string, h http.HandlerFunc) { a.handle(pattern, h, quickTimeout) }
	slow := func(pattern string, h http.HandlerFunc, d time.Duration) { a.handle(pattern, h, d) }
	quick("GET /v1/supervisor", a.status)
	slow("POST /v1/supervisor/stop", a.stopSupervisor, 2*time.Minute)
	quick("POST /v1/templates/rebuild", a.rebuildTemplate)
	quick("GET /v1/sessions", a.list)
	slow("POST /v1/sessions", a.create, createTimeout+time.Minute)
	quick("GET /v1/sessions/{id}", a.get)
	slow("DELETE /v1/sessions/{id}", a.remove, 2*time.Minute)
	slow("POST /v1/sessions/{id}/stop", a.stop, 2*time.Minute)
	quick("POST /v1/sessions/{id}/ptys", a.openPTY)
	quick("GET /v1/sessions/{id}/ptys/{pty}/screen", a.screen)
	a.mux.HandleFunc("POST /v1/sessions/{id}/ptys/{pty}/attach", a.attach)
	a.mux.HandleFunc("POST /v1/sessions/{id}/exec", a.exec)
	a.mux.HandleFunc("GET /v1/sessions/{id}/logs", a.logs)
	a.mux.HandleFunc("GET /v1/events", a.eventStream)
	slow("POST /v1/sessions/{id}/snapshot", a.snapshot, snapshotTimeout+time.Minute)
	quick("GET /v1/snapshots", a.listSnapshots)
	quick("GET /v1/snapshots/{ref}", a.getSnapshot)
	quick("DELETE /v1/snapshots/{ref}", a.removeSnapshot)
	quick("GET /v1/sessions/{id}/ingress", a.listRoutes)
	quick("POST /v1/sessions/{id}/ingress", a.addRoute)
	quick("DELETE /v1/sessions/{id}/ingress/{listen}", a.removeRoute)
	quick("GET /v1/sessions/{id}/policy", a.getPolicy)
	quick("POST /v1/sessions/{id}/policy", a.changePolicy)
	a.mux.HandleFunc("GET /v1/sessions/{id}/network-events", a.netEvents)
	return a
}

// Deadlines of the calls that answer once (see NewAPI).
const (
	quickTimeout    = 30 * time.Second
	createTimeout   = 2 * time.Minute
	snapshotTimeout = 5 * time.Minute
)

// handle routes pattern to h, answered within d: past it the client gets
// a JSON error and the handler's context is cancelled.
func (a *API) handle(pattern string, h http.HandlerFunc, d time.Duration) {
	msg, _ := json.Marshal(apiError{Error: fmt.Sprintf("the supervisor did not answer within %v; try again", d)})
	a.mux.Handle(pattern, http.TimeoutHandler(h, d, string(msg)))
}

// ServeHTTP routes a request; unknown paths and methods get JSON errors
// like every other failure.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if _, pattern := a.mux.Handler(r); pattern == "" {
		rec := httptest.NewRecorder()
		a.mux.ServeHTTP(rec, r)
		msg := "no such endpoint: " + r.Method + " " + r.URL.Path
		if rec.Code == http.StatusMethodNotAllowed {
			msg = "method " + r.Method + " not allowed on " + r.URL.Path
		}
		writeError(w, rec.Code, msg)
		return
	}
	a.mux.ServeHTTP(w, r)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

type apiError struct {
	Error string `json:"error"`
	// Field names the flag a bad-input error is about (errdefs.FieldOf).
	Field string `json:"field,omitempty"`
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, apiError{Error: msg})
}

func fail(w http.ResponseWriter, err error) {
	writeJSON(w, errdefs.HTTPStatus(err), apiError{Error: err.Error(), Field: errdefs.FieldOf(err)})
}

// decode reads a strict, bounded JSON body into v.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	body := http.MaxBytesReader(w, r.Body, maxBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return errorf(errdefs.ErrInvalid, "request body is larger than %d bytes", maxBody)
		}
		if errors.Is(err, io.EOF) {
			return errorf(errdefs.ErrInvalid, "empty request body")
		}
		return errorf(errdefs.ErrInvalid, "malformed request: %v", err)
	}
	if dec.More() {
		return errorf(errdefs.ErrInvalid, "malformed request: data after the JSON value")
	}
	return nil
}

func (a *API) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.sv.Status())
}

type stopRequest struct {
	All bool `json:"all"`
}

func (a *API) stopSupervisor(w http.ResponseWriter, r *http.Request) {
	var req stopRequest
	if r.ContentLength != 0 {
		if err := decode(w, r, &req); err != nil {
			fail(w, err)
			return
		}
	}
	if req.All {
		a.sv.StopAll(r.Context())
	}
	writeJSON(w, http.StatusOK, a.sv.Status())
	if a.OnStop != nil {
		go a.OnStop(req.All)
	}
}

// rebuildTemplate starts a template build in the background and answers
// at once; the supervisor's status and template events follow it.
func (a *API) rebuildTemplate(w http.ResponseWriter, r *http.Request) {
	var req TemplateRequest
	if err := decode(w, r, &req); err != nil {
		fail(w, err)
		return
	}
	if err := a.sv.RebuildTemplate(req.Spec); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

func (a *API) list(w http.ResponseWriter, r *http.Request) {
	all, _ := strconv.ParseBool(r.URL.Query().Get("all"))
	writeJSON(w, http.StatusOK, a.sv.List(all))
}

func (a *API) create(w http.ResponseWriter, r *http.Request) {
	var req CreateRequest
	if err := decode(w, r, &req); err != nil {
		fail(w, err)
		return
	}
	// A client that gives up (a CLI interrupted, a dashboard that quit)
	// cancels the create: its half-made VM is removed.
	ctx, cancel := context.WithTimeout(r.Context(), createTimeout)
	defer cancel()
	s, err := a.sv.Create(ctx, req)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, s)
}

func (a *API) get(w http.ResponseWriter, r *http.Request) {
	s, err := a.sv.Get(r.PathValue("id"))
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

func (a *API) stop(w http.ResponseWriter, r *http.Request) {
	s, err := a.sv.Stop(context.Background(), r.PathValue("id"))
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

func (a *API) remove(w http.ResponseWriter, r *http.Request) {
	force, _ := strconv.ParseBool(r.URL.Query().Get("force"))
	if err := a.sv.Remove(context.Background(), r.PathValue("id"), force); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) openPTY(w http.ResponseWriter, r *http.Request) {
	var req OpenPTYRequest
	if err := decode(w, r, &req); err != nil {
		fail(w, err)
		return
	}
	p, err := a.sv.OpenPTY(r.Context(), r.PathValue("id"), req)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, p)
}

// sessionPTY resolves {id} and {pty} ("latest" or 0 for the most recent
// running terminal).
func (a *API) sessionPTY(r *http.Request) (*session, *pty, error) {
	s, err := a.sv.lookup(r.PathValue("id"))
	if err != nil {
		return nil, nil, err
	}
	var id uint64
	if ref := r.PathValue("pty"); ref != "latest" {
		if id, err = strconv.ParseUint(ref, 10, 64); err != nil {
			return nil, nil, errorf(errdefs.ErrInvalid, "bad terminal id %q", ref)
		}
	}
	p, err := s.findPTY(id)
	return s, p, err
}

func (a *API) screen(w http.ResponseWriter, r *http.Request) {
	_, p, err := a.sessionPTY(r)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, p.screen())
}

// hijack answers 101 and takes the connection over. Reads must go through
// the returned reader: it may hold bytes the client sent early.
func hijack(w http.ResponseWriter, r *http.Request) (net.Conn, *bufio.Reader, error) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), upgradeProtocol) {
		return nil, nil, errorf(errdefs.ErrInvalid, "this endpoint needs Connection: Upgrade and Upgrade: %s", upgradeProtocol)
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("connection cannot be upgraded")
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + upgradeProtocol + "\r\n\r\n")
	if err := brw.Flush(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	conn.SetDeadline(time.Time{})
	return conn, brw.Reader, nil
}

// frameWriter serialises frames from several goroutines onto one stream.
type frameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (f *frameWriter) frame(t agentproto.FrameType, payload []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return agentproto.WriteFrame(f.w, t, payload)
}

func (f *frameWriter) json(t agentproto.FrameType, v any) error {
	b, _ := json.Marshal(v)
	return f.frame(t, b)
}

// streamWriter writes everything as frames of type t, split to size.
type streamWriter struct {
	fw *frameWriter
	t  agentproto.FrameType
}

func (s streamWriter) Write(p []byte) (int, error) {
	for chunk := p; len(chunk) > 0; {
		n := min(len(chunk), agentproto.MaxData)
		if err := s.fw.frame(s.t, chunk[:n]); err != nil {
			return 0, err
		}
		chunk = chunk[n:]
	}
	return len(p), nil
}

func parseSize(b []byte) (uint16, uint16, error) {
	var size [2]uint16
	if err := json.Unmarshal(b, &size); err != nil || size[0] == 0 || size[1] == 0 {
		return 0, 0, errorf(errdefs.ErrInvalid, "bad terminal size %q", b)
	}
	return size[0], size[1], nil
}

// attach joins a client to a terminal: the current screen first, then
// live output; keystrokes and size changes the other way. Any number of
// clients may attach to one terminal.
func (a *API) attach(w http.ResponseWriter, r *http.Request) {
	s, p, err := a.sessionPTY(r)
	if err != nil {
		fail(w, err)
		return
	}
	q := r.URL.Query()
	rows, _ := strconv.ParseUint(q.Get("rows"), 10, 16)
	cols, _ := strconv.ParseUint(q.Get("cols"), 10, 16)
	conn, br, err := hijack(w, r)
	if err != nil {
		fail(w, err)
		return
	}
	defer conn.Close()
	if rows > 0 && cols > 0 {
		s.resize(p, uint16(rows), uint16(cols))
	}
	c, repaint := p.attach()
	defer p.detach(c)
	fw := &frameWriter{w: conn}
	gone := make(chan struct{}) // the client went away
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer conn.Close()
		streamPTY(fw, p, c, repaint, gone)
	}()
	for {
		f, err := agentproto.ReadFrame(br, agentproto.MaxData+16)
		if err != nil {
			break
		}
		switch f.Type {
		case frameInput:
			if err := s.input(p, f.Payload); err != nil {
				fw.json(agentproto.FrameError, agentproto.Response{Error: err.Error()})
			}
		case frameResize:
			if rows, cols, err := parseSize(f.Payload); err == nil {
				s.resize(p, rows, cols)
			}
		default:
			fw.json(agentproto.FrameError, agentproto.Response{Error: fmt.Sprintf("unexpected %s frame", f.Type)})
		}
	}
	close(gone)
	conn.Close()
	<-done
}

// streamPTY sends one attached client a terminal's current screen, then
// its live output, until the client goes or the process exits (then the
// last output and the exit status). A client that fell behind gets a
// fresh repaint once its queue is empty, so it never sees a torn screen.
func streamPTY(fw *frameWriter, p *pty, c *ptyClient, repaint []byte, gone <-chan struct{}) {
	send := func(b []byte) bool { return fw.frame(agentproto.FrameStdout, b) == nil }
	if !send(repaint) {
		return
	}
	for {
		select {
		case chunk := <-c.out:
			if !send(chunk) {
				return
			}
			continue
		default:
		}
		if rp := p.catchUp(c); rp != nil {
			if !send(rp) {
				return
			}
			continue
		}
		select {
		case chunk := <-c.out:
			if !send(chunk) {
				return
			}
		case <-gone:
			return
		case <-c.exited:
			for {
				select {
				case chunk := <-c.out:
					send(chunk)
					continue
				default:
				}
				break
			}
			code := -1
			if info := p.info(); info.ExitCode != nil {
				code = *info.ExitCode
			}
			fw.json(agentproto.FrameExit, agentproto.ExitStatus{Code: code})
			return
		}
	}
}

// exec runs a command in a live session with separate stdout and stderr
// and its exit code, over an upgraded stream.
func (a *API) exec(w http.ResponseWriter, r *http.Request) {
	var req ExecRequest
	if err := decode(w, r, &req); err != nil {
		fail(w, err)
		return
	}
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		fail(w, errorf(errdefs.ErrInvalid, "exec needs a command"))
		return
	}
	s, err := a.sv.lookup(r.PathValue("id"))
	if err != nil {
		fail(w, err)
		return
	}
	s.mu.Lock()
	agent := s.agent
	st, _ := s.derivedLocked()
	s.mu.Unlock()
	if agent == nil || st != Live {
		fail(w, errorf(errdefs.ErrUnavailable, "session %s is %s", s.rec.ID, st))
		return
	}
	conn, br, err := hijack(w, r)
	if err != nil {
		fail(w, err)
		return
	}
	defer conn.Close()
	fw := &frameWriter{w: conn}
	cmd := vm.Command{
		Exec: agentproto.Exec{Argv: req.Argv, Env: append(append([]string{}, s.rec.Spec.Env...), req.Env...),
			Cwd: req.Cwd, TTY: req.TTY, Rows: req.Rows, Cols: req.Cols},
		Stdout: streamWriter{fw, agentproto.FrameStdout},
		Stderr: streamWriter{fw, agentproto.FrameStderr},
	}
	if cmd.Cwd == "" {
		cmd.Cwd = s.rec.Spec.Cwd
	}
	var stdinW *io.PipeWriter
	if req.Stdin {
		var stdinR *io.PipeReader
		stdinR, stdinW = io.Pipe()
		cmd.Stdin = stdinR
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	proc, err := agent.Start(ctx, cmd)
	if err != nil {
		resp := agentproto.Response{Error: err.Error()}
		if code, ok := vm.StartError(err); ok {
			resp.Code = code
		}
		fw.json(agentproto.FrameError, resp)
		return
	}
	go func() {
		defer func() {
			if stdinW != nil {
				stdinW.Close()
			}
		}()
		for {
			f, err := agentproto.ReadFrame(br, agentproto.MaxData+16)
			if err != nil {
				// The client went away: nobody will read the output.
				select {
				case <-proc.Done():
				default:
					proc.Signal(context.Background(), int(syscall.SIGKILL))
				}
				return
			}
			switch f.Type {
			case frameInput:
				if stdinW != nil {
					stdinW.Write(f.Payload)
				}
			case frameInputEOF:
				if stdinW != nil {
					stdinW.Close()
				}
			case frameSignal:
				var sig int
				if json.Unmarshal(f.Payload, &sig) == nil && sig > 0 && sig < 65 {
					proc.Signal(context.Background(), sig)
				}
			case frameResize:
				if rows, cols, err := parseSize(f.Payload); err == nil {
					proc.Resize(context.Background(), rows, cols)
				}
			}
		}
	}()
	exit, err := proc.Wait()
	if err != nil {
		fw.json(agentproto.FrameError, agentproto.Response{Error: err.Error()})
		return
	}
	fw.json(agentproto.FrameExit, exit)
}

// logs streams a session's serial console, following it on request.
func (a *API) logs(w http.ResponseWriter, r *http.Request) {
	s, err := a.sv.lookup(r.PathValue("id"))
	if err != nil {
		fail(w, err)
		return
	}
	follow, _ := strconv.ParseBool(r.URL.Query().Get("follow"))
	dir := a.sv.reg.dir(s.rec.ID)
	f, err := os.Open(filepath.Join(dir, layout.ConsoleLog))
	if err != nil {
		fail(w, errorf(errdefs.ErrNotFound, "session %s has no console log yet", s.rec.ID))
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	// The log is capped (see vm): what was cut off its start is kept,
	// in part, in the older file.
	if old, err := os.ReadFile(filepath.Join(dir, layout.ConsoleLogOld)); err == nil {
		w.Write(old)
	}
	var offset int64
	for {
		if st, err := f.Stat(); err == nil && st.Size() < offset {
			offset = 0 // cut short meanwhile
		}
		n, err := io.Copy(w, io.NewSectionReader(f, offset, 1<<62))
		offset += n
		if err != nil {
			return
		}
		if flusher != nil {
			flusher.Flush()
		}
		if !follow {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
		if _, err := a.sv.lookup(s.rec.ID); err != nil {
			return // removed
		}
	}
}

// eventStream sends every event as one JSON line until the client goes.
func (a *API) eventStream(w http.ResponseWriter, r *http.Request) {
	ch := a.sv.events.subscribe()
	defer a.sv.events.unsubscribe(ch)
	streamJSON(w, r, nil, ch) // a closed channel: fell too far behind; the client reconnects
}

// streamJSON answers with backlog and then everything ch delivers, one
// JSON value a line, flushed as it comes, until ch closes or the client
// goes. A nil ch ends after the backlog.
func streamJSON[T any](w http.ResponseWriter, r *http.Request, backlog []T, ch <-chan T) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	flush := func() {
		if flusher != nil {
			flusher.Flush()
		}
	}
	enc := json.NewEncoder(w)
	for _, v := range backlog {
		if enc.Encode(v) != nil {
			return
		}
	}
	flush()
	if ch == nil {
		return
	}
	for {
		select {
		case v, ok := <-ch:
			if !ok || enc.Encode(v) != nil {
				return
			}
			flush()
		case <-r.Context().Done():
			return
		}
	}
}

func (a *API) getPolicy(w http.ResponseWriter, r *http.Request) {
	s, err := a.sv.lookup(r.PathValue("id"))
	if err != nil {
		fail(w, err)
		return
	}
	v, err := s.policyView()
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (a *API) changePolicy(w http.ResponseWriter, r *http.Request) {
	var ch PolicyChange
	if err := decode(w, r, &ch); err != nil {
		fail(w, err)
		return
	}
	s, err := a.sv.lookup(r.PathValue("id"))
	if err != nil {
		fail(w, err)
		return
	}
	v, err := s.changePolicy(r.Context(), ch)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// netEvents streams a session's network decisions as JSON lines.
func (a *API) netEvents(w http.ResponseWriter, r *http.Request) {
	s, err := a.sv.lookup(r.PathValue("id"))
	if err != nil {
		fail(w, err)
		return
	}
	follow, _ := strconv.ParseBool(r.URL.Query().Get("follow"))
	backlog, ch, err := s.netEvents(r.Context(), follow)
	if err != nil {
		fail(w, err)
		return
	}
	streamJSON(w, r, backlog, ch)
}

func (a *API) snapshot(w http.ResponseWriter, r *http.Request) {
	var req SnapshotRequest
	if r.ContentLength != 0 {
		if err := decode(w, r, &req); err != nil {
			fail(w, err)
			return
		}
	}
	// The snapshot is abandoned (and its files removed) when its client
	// goes away.
	ctx, cancel := context.WithTimeout(r.Context(), snapshotTimeout)
	defer cancel()
	snap, err := a.sv.Snapshot(ctx, r.PathValue("id"), req)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, snap)
}

func (a *API) listSnapshots(w http.ResponseWriter, r *http.Request) {
	list, err := a.sv.Snapshots()
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (a *API) getSnapshot(w http.ResponseWriter, r *http.Request) {
	snap, err := a.sv.GetSnapshot(r.PathValue("ref"))
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, snap)
}

func (a *API) removeSnapshot(w http.ResponseWriter, r *http.Request) {
	if err := a.sv.RemoveSnapshot(r.PathValue("ref")); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) listRoutes(w http.ResponseWriter, r *http.Request) {
	routes, err := a.sv.Routes(r.PathValue("id"))
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, routes)
}

func (a *API) addRoute(w http.ResponseWriter, r *http.Request) {
	var route ingress.Route
	if err := decode(w, r, &route); err != nil {
		fail(w, err)
		return
	}
	got, err := a.sv.AddRoute(r.PathValue("id"), route)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, got)
}

func (a *API) removeRoute(w http.ResponseWriter, r *http.Request) {
	if err := a.sv.RemoveRoute(r.PathValue("id"), r.PathValue("listen")); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
