package sessions

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// RunRequest is the first message of a one-shot exec through the
// supervisor: a fresh VM made from Spec (claimed from the warm pool when
// it holds one of its shape), Argv run in it with Spec's environment and
// working directory, the VM destroyed afterwards.
type RunRequest struct {
	Spec Spec     `json:"spec"`
	Argv []string `json:"argv"`
	TTY  bool     `json:"tty,omitempty"`
	Rows uint16   `json:"rows,omitempty"`
	Cols uint16   `json:"cols,omitempty"`
	// Stdin says input frames follow (else the command reads /dev/null).
	Stdin bool `json:"stdin,omitempty"`
	// TimeoutMS sends SIGTERM after that long, SIGKILL 2 s later.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// SecretValues and SSHPassphrases are as in CreateRequest: the values
	// of Spec.Policy's secrets, kept in the supervisor's memory only, for
	// as long as the command runs.
	SecretValues   map[string]string `json:"secret_values,omitempty"`
	SSHPassphrases map[string]string `json:"ssh_passphrases,omitempty"`
}

// Frames of a one-shot exec stream beyond an exec's (server to client).
const (
	frameStatus    = 20 // JSON string: the status line of a slow start ("" clears it)
	frameNotice    = 21 // JSON string: a line for the user's stderr
	frameFailure   = 22 // JSON streamFailure: gondolin failed, with the error's class
	frameHeartbeat = 23 // empty; clients ignore it (see heartbeat)
)

// maxTimeoutMS bounds a one-shot exec's --timeout (a year), well inside
// what a time.Duration holds.
const maxTimeoutMS = int64(365 * 24 * time.Hour / time.Millisecond)

// heartbeatEvery is how often a one-shot exec's stream carries a
// heartbeat: the frame reader may be stuck behind stdin the command does
// not read, so a client that died is found by writing to it, and its VM
// goes with it.
const heartbeatEvery = 2 * time.Second

// streamFailure is an error after the stream was upgraded, with the
// HTTP status its class maps to (see errdefs), so that the client
// exits as if the request itself had failed.
type streamFailure struct {
	apiError
	Status int `json:"status"`
}

// spec checks a one-shot request and returns the spec to boot, with its
// secrets.
func (req *RunRequest) spec() (Spec, error) {
	spec := req.Spec
	if len(req.Argv) == 0 {
		return spec, errorf(errdefs.ErrInvalid, "exec needs a command")
	}
	if err := validateCommand(req.Argv); err != nil {
		return spec, err
	}
	if req.TimeoutMS < 0 || req.TimeoutMS > maxTimeoutMS {
		return spec, errorf(errdefs.ErrInvalid, "timeout %d ms: want 0 (none) to %d", req.TimeoutMS, int64(maxTimeoutMS))
	}
	return withSecrets(spec, req.SecretValues, req.SSHPassphrases)
}

// withSecrets gives a requested spec the secret values and SSH key
// passphrases that travel beside it (never in it), and checks it.
func withSecrets(spec Spec, values, passphrases map[string]string) (Spec, error) {
	if err := spec.applySecretValues(values); err != nil {
		return spec, err
	}
	if spec.Policy != nil && len(passphrases) > 0 {
		if err := spec.Policy.SetSSHPassphrases(passphrases); err != nil {
			return spec, invalidf("%v", err)
		}
	}
	return spec, spec.Validate()
}

// run is a one-shot exec: the request is checked before the stream is
// upgraded (a bad one is an HTTP error); what follows (the boot, the
// command) reports over the stream.
func (a *API) run(w http.ResponseWriter, r *http.Request) {
	var req RunRequest
	if err := decode(w, r, &req); err != nil {
		fail(w, err)
		return
	}
	spec, err := req.spec()
	if err != nil {
		fail(w, err)
		return
	}
	if !a.sv.track() {
		fail(w, errClosing)
		return
	}
	defer a.sv.bg.Done()
	conn, br, err := hijack(w, r)
	if err != nil {
		fail(w, err)
		return
	}
	defer conn.Close()
	fw := &frameWriter{w: conn}
	// The VM lives as long as the client listens, and no longer than the
	// supervisor: either end closes the connection, which ends a write
	// blocked on a client that stopped reading (Close must not wait for
	// it).
	ctx, cancel := context.WithCancel(a.sv.ctx)
	defer cancel()
	defer context.AfterFunc(ctx, func() { conn.Close() })()
	go heartbeat(ctx, fw, cancel)
	signals := make(chan syscall.Signal, 8)
	resizes := make(chan [2]uint16, 8)
	eio := ExecIO{
		Stdout: streamWriter{fw, agentproto.FrameStdout}, Stderr: streamWriter{fw, agentproto.FrameStderr},
		TTY: req.TTY, Rows: req.Rows, Cols: req.Cols, Signals: signals, Resizes: resizes,
		Timeout: time.Duration(req.TimeoutMS) * time.Millisecond,
	}
	var stdinW *io.PipeWriter
	if req.Stdin {
		var stdinR *io.PipeReader
		stdinR, stdinW = io.Pipe()
		eio.Stdin = stdinR
		defer stdinR.Close() // unblocks a pending input write
	}
	go func() {
		defer cancel() // the client went away: nobody reads the output
		execInput{
			stdin: stdinW,
			// A flood of signals or sizes: the first ones are enough.
			signal: func(sig int) {
				select {
				case signals <- syscall.Signal(sig):
				default:
				}
			},
			resize: func(rows, cols uint16) {
				select {
				case resizes <- [2]uint16{rows, cols}:
				default:
				}
			},
		}.read(br)
	}()
	ctx = WithReporter(ctx, &Reporter{
		Status: func(msg string) { fw.json(frameStatus, msg) },
		Notice: func(msg string) { fw.json(frameNotice, msg) },
	})
	var once sync.Once
	answer := func(code int, err error) { once.Do(func() { writeOutcome(fw, code, err) }) }
	eio.Exited = answer // before the VM is destroyed
	code, err := a.sv.rt.Exec(ctx, &spec, req.Argv, eio)
	if err != nil && a.sv.ctx.Err() != nil {
		err = errClosing
	}
	answer(code, err)
}

// heartbeat writes an empty frame every heartbeatEvery until ctx ends,
// and cancels it when a write fails (the client is gone).
func heartbeat(ctx context.Context, fw *frameWriter, cancel context.CancelFunc) {
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if fw.frame(frameHeartbeat, nil) != nil {
				cancel()
				return
			}
		}
	}
}

// writeOutcome sends a one-shot exec's last frame.
func writeOutcome(fw *frameWriter, code int, err error) {
	switch {
	case err != nil && code != 0: // could not run: 126 or 127
		msg := err.Error()
		var ae *agentproto.AgentError
		if errors.As(err, &ae) {
			msg = ae.Msg // the client's Err says it is the agent's
		}
		fw.json(agentproto.FrameError, agentproto.Response{Error: msg, Code: code})
	case err != nil:
		fw.json(frameFailure, streamFailure{apiError{Error: err.Error(), Field: errdefs.FieldOf(err)}, errdefs.HTTPStatus(err)})
	default:
		fw.json(agentproto.FrameExit, agentproto.ExitStatus{Code: code})
	}
}
