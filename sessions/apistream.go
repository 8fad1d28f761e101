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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/vm"
	"github.com/gondolin/gondolin/vm/agentproto"
)

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

// streamWriter writes everything as frames of type t, split to size.
type streamWriter struct {
	fw *frameWriter
	t  agentproto.FrameType
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
	target, err := a.sv.prepareExec(r.PathValue("id"), req)
	if err != nil {
		fail(w, err)
		return
	}
	conn, br, err := hijack(w, r)
	if err != nil {
		fail(w, err)
		return
	}
	defer conn.Close()
	fw := &frameWriter{w: conn}
	cmd := target.cmd
	cmd.Stdout = streamWriter{fw, agentproto.FrameStdout}
	cmd.Stderr = streamWriter{fw, agentproto.FrameStderr}
	var stdinW *io.PipeWriter
	if req.Stdin {
		var stdinR *io.PipeReader
		stdinR, stdinW = io.Pipe()
		cmd.Stdin = stdinR
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	proc, err := target.agent.Start(ctx, cmd)
	if err != nil {
		resp := agentproto.Response{Error: err.Error()}
		if code, ok := vm.StartError(err); ok {
			resp.Code = code
		}
		fw.json(agentproto.FrameError, resp)
		return
	}
	go func() {
		execInput{
			stdin:  stdinW,
			signal: func(sig int) { proc.Signal(context.Background(), sig) },
			resize: func(rows, cols uint16) { proc.Resize(context.Background(), rows, cols) },
		}.read(br)
		// The client went away: nobody will read the output.
		select {
		case <-proc.Done():
		default:
			proc.Signal(context.Background(), int(syscall.SIGKILL))
		}
	}()
	exit, err := proc.Wait()
	if err != nil {
		fw.json(agentproto.FrameError, agentproto.Response{Error: err.Error()})
		return
	}
	fw.json(agentproto.FrameExit, exit)
}

// execInput is where an exec stream's client frames go: stdin (nil when
// the command has none), signals and terminal sizes.
type execInput struct {
	stdin  *io.PipeWriter
	signal func(sig int)
	resize func(rows, cols uint16)
}

// read hands the client's frames over until the stream ends (the client
// went away), then closes stdin. Malformed signals and sizes are
// dropped.
func (in execInput) read(br *bufio.Reader) {
	if in.stdin != nil {
		defer in.stdin.Close()
	}
	for {
		f, err := agentproto.ReadFrame(br, agentproto.MaxData+16)
		if err != nil {
			return
		}
		switch f.Type {
		case frameInput:
			if in.stdin != nil {
				in.stdin.Write(f.Payload)
			}
		case frameInputEOF:
			if in.stdin != nil {
				in.stdin.Close()
			}
		case frameSignal:
			var sig int
			if json.Unmarshal(f.Payload, &sig) == nil && sig > 0 && sig < 65 {
				in.signal(sig)
			}
		case frameResize:
			if rows, cols, err := parseSize(f.Payload); err == nil {
				in.resize(rows, cols)
			}
		}
	}
}

// logs streams a session's serial console, following it on request.
func (a *API) logs(w http.ResponseWriter, r *http.Request) {
	follow, _ := strconv.ParseBool(r.URL.Query().Get("follow"))
	log, err := a.sv.consoleLog(r.PathValue("id"))
	if err != nil {
		fail(w, err)
		return
	}
	defer log.f.Close()
	f := log.f
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	w.Write(log.older)
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
		if _, err := a.sv.lookup(log.id); err != nil {
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

// upgradeProtocol names the raw stream an attach or exec request turns
// into, in the manner of Docker's engine API.
const upgradeProtocol = "gondolin-stream"
