package sessions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"time"

	"github.com/gondolin/gondolin/ingress"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// maxBody bounds every request body: a bigger one is refused with 413
// before anything is done.
const maxBody = 1 << 20

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
	a.mux.HandleFunc("POST /v1/exec", a.run)
	a.mux.HandleFunc("GET /v1/ping", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, OwnPingInfo()) })
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

// sessionPTY resolves {id} and {pty}.
func (a *API) sessionPTY(r *http.Request) (*session, *pty, error) {
	return a.sv.terminal(r.PathValue("id"), r.PathValue("pty"))
}

func (a *API) screen(w http.ResponseWriter, r *http.Request) {
	_, p, err := a.sessionPTY(r)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, p.screen())
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

func (a *API) getPolicy(w http.ResponseWriter, r *http.Request) {
	v, err := a.sv.Policy(r.PathValue("id"))
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
	v, err := a.sv.ChangePolicy(r.Context(), r.PathValue("id"), ch)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// netEvents streams a session's network decisions as JSON lines.
func (a *API) netEvents(w http.ResponseWriter, r *http.Request) {
	follow, _ := strconv.ParseBool(r.URL.Query().Get("follow"))
	backlog, ch, err := a.sv.NetEvents(r.Context(), r.PathValue("id"), follow)
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
