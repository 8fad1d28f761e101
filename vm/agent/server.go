// Package agent is the guest side of gondolin: the program that runs as
// the VM's init, prepares the system, and serves the host's requests over
// a virtio-serial port (see package agentproto for the protocol).
package agent

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/vm/agentproto"
	"github.com/hashicorp/yamux"
)

// System is what the agent needs from the machine beyond processes; the
// real one acts on the guest kernel, tests substitute their own.
type System interface {
	Setup(*agentproto.Setup) error
	Network(*agentproto.Network) error
	Mount(*agentproto.Mount) error
	Freeze(*agentproto.Freeze) error
	Info() agentproto.Info
	Sync() error
	Shutdown() error
}

// Server serves the host over one channel at a time.
type Server struct {
	log   *log.Logger
	sys   System
	procs *procTable

	envMu   sync.Mutex
	baseEnv []string

	// handlers counts request handlers still running, whatever session
	// they came from: a park waits for them.
	handlers atomic.Int64
	// needSetup is set by a park and cleared by the next Setup: a guest
	// restored from a saved state shares its RNG state and clock with
	// every other copy, so it runs nothing before the host has reseeded
	// and set them (see afterRestore).
	needSetup atomic.Bool
}

// afterRestore is what a parked guest must redo when it runs again as a
// restored copy, all of it through the host's Setup, before it runs
// anything for the host:
//
//   - reseed the kernel's CRNG (RNDADDENTROPY, then RNDRESEEDCRNG), or
//     every clone would produce the same random bytes;
//   - set CLOCK_REALTIME, which stood still while the state was stored;
//   - and, when the host names one, set this copy's hostname.
//
// The agent reopens its port for every host anyway, and nothing else
// holds state tied to the host that saved it: a park refuses while a
// process runs or a request is still being handled.
var afterRestore = []string{"reseed the CRNG", "set the clock"}

// parkBudget bounds how long a park waits for the previous session's
// request handlers to end.
const parkBudget = 5 * time.Second

// park readies the agent for its VM's state to be saved: nothing may be
// running but the handshake loop that calls it.
//
// It is called from the handshake loop, so no session is open and no new
// request can arrive; a request of the last session may still be ending
// (and may still start a process), so the handlers are waited for first
// and the processes counted after.
func (s *Server) park() error {
	deadline := time.Now().Add(parkBudget)
	for s.handlers.Load() > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("park: %d requests of the last session are still being handled", s.handlers.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if n := s.procs.running(); n > 0 {
		return fmt.Errorf("park: %d processes are still running", n)
	}
	s.needSetup.Store(true)
	return nil
}

// allowedBeforeSetup are the ops a restored guest answers before its
// Setup: none of them runs anything or reads state that a clone must
// not share.
var allowedBeforeSetup = map[string]bool{
	agentproto.OpPing: true, agentproto.OpSetup: true, agentproto.OpList: true,
	agentproto.OpDetach: true, agentproto.OpShutdown: true,
}

// NewServer returns a server; logger receives one line per notable event.
func NewServer(logger *log.Logger, sys System) *Server {
	s := &Server{log: logger, sys: sys, baseEnv: []string{
		"PATH=" + defaultPath,
		"HOME=/root",
		"USER=root",
		"LOGNAME=root",
		"LANG=C.UTF-8",
	}}
	s.procs = newProcTable(processReaper(), s.env)
	return s
}

func (s *Server) env() []string {
	s.envMu.Lock()
	defer s.envMu.Unlock()
	return append([]string(nil), s.baseEnv...)
}

// Serve opens the channel with open and serves one host after another,
// forever: a host that goes away is simply replaced by the next one.
func (s *Server) Serve(open func() (io.ReadWriteCloser, error)) {
	lastHost := time.Now()
	for {
		ch, err := open()
		if err != nil {
			s.log.Printf("open channel: %v", err)
			time.Sleep(200 * time.Millisecond)
			continue
		}
		err = s.ServeConn(ch)
		ch.Close()
		if errors.Is(err, agentproto.ErrNoHandshake) {
			// No host is connected: reads return EOF at once, so poll.
			// Poll fast for a while after a host left: a VM restored from
			// a snapshot resumes here and its new host is waiting.
			if time.Since(lastHost) < fastPollFor {
				time.Sleep(fastPoll)
			} else {
				time.Sleep(slowPoll)
			}
			continue
		}
		lastHost = time.Now()
		if err != nil {
			s.log.Printf("host connection: %v", err)
		}
	}
}

// How often the agent looks for a new host while none is connected.
const (
	fastPoll    = 5 * time.Millisecond
	fastPollFor = 5 * time.Second
	slowPoll    = 100 * time.Millisecond
)

// ServeConn handshakes with one host over ch and serves it until the
// connection fails or the host detaches.
func (s *Server) ServeConn(ch io.ReadWriteCloser) error {
	conn, err := s.handshake(ch)
	if err != nil {
		return err
	}
	cfg := yamux.DefaultConfig()
	// The host watches the VM itself; keepalives would only kill sessions
	// of a VM that was paused for a snapshot.
	cfg.EnableKeepAlive = false
	cfg.LogOutput = io.Discard
	cfg.MaxStreamWindowSize = 1 << 20
	sess, err := yamux.Server(conn, cfg)
	if err != nil {
		return err
	}
	defer sess.Close()
	for {
		stream, err := sess.AcceptStream()
		if err != nil {
			if sess.IsClosed() {
				return nil
			}
			return err
		}
		s.handlers.Add(1)
		go func() {
			defer s.handlers.Add(-1)
			s.handle(sess, stream)
		}()
	}
}

// handshake waits for HELLO, answers READY once per nonce, and returns
// the connection positioned after GO. See agentproto for why.
func (s *Server) handshake(ch io.ReadWriteCloser) (io.ReadWriteCloser, error) {
	br := bufio.NewReaderSize(ch, 64<<10)
	if err := agentproto.GuestHandshakePark(br, ch, s.park); err != nil {
		return nil, err
	}
	return &agentproto.Conn{R: br, W: &agentproto.CoalesceWriter{W: ch}, C: ch}, nil
}

// stream is one yamux stream with serialised frame writes.
type stream struct {
	*yamux.Stream
	wmu sync.Mutex
}

func (st *stream) frame(t agentproto.FrameType, payload []byte) error {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	return agentproto.WriteFrame(st.Stream, t, payload)
}

func (st *stream) frameInPlace(t agentproto.FrameType, buf []byte) error {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	return agentproto.WriteFrameInPlace(st.Stream, t, buf)
}

func (st *stream) json(t agentproto.FrameType, v any) error {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	return agentproto.WriteJSON(st.Stream, t, v)
}

func (st *stream) fail(err error) {
	resp := agentproto.Response{Error: err.Error()}
	var se *startError
	if errors.As(err, &se) {
		resp.Code = se.code
	}
	st.json(agentproto.FrameError, resp)
}

func (s *Server) handle(sess *yamux.Session, ys *yamux.Stream) {
	st := &stream{Stream: ys}
	defer st.Close()
	f, err := agentproto.ReadFrame(st, agentproto.MaxFrame)
	if err != nil {
		if !errors.Is(err, io.EOF) {
			st.fail(fmt.Errorf("bad request: %w", err))
		}
		return
	}
	var req agentproto.Request
	if f.Type != agentproto.FrameRequest {
		st.fail(fmt.Errorf("bad request: %s frame where a request was expected", f.Type))
		return
	}
	if err := f.Decode(&req); err != nil {
		st.fail(fmt.Errorf("bad request: %w", err))
		return
	}
	if s.needSetup.Load() && !allowedBeforeSetup[req.Op] {
		st.fail(fmt.Errorf("%s refused: this guest was restored from a saved state and needs the host's setup first (%s)",
			req.Op, strings.Join(afterRestore, ", ")))
		return
	}
	switch req.Op {
	case agentproto.OpPing:
		info := s.sys.Info()
		st.json(agentproto.FrameResponse, agentproto.Response{Info: &info})
	case agentproto.OpSetup:
		s.setup(st, req.Setup)
	case agentproto.OpExec:
		s.exec(st, req.Exec)
	case agentproto.OpStdin:
		s.stdin(st, req.ID)
	case agentproto.OpSignal:
		s.signal(st, req.ID, req.Signal)
	case agentproto.OpResize:
		s.resize(st, req)
	case agentproto.OpAttach:
		s.attach(st, req.ID, req.Offset)
	case agentproto.OpList:
		st.json(agentproto.FrameResponse, agentproto.Response{Processes: s.procs.list()})
	case agentproto.OpNetwork:
		if req.Network == nil {
			st.fail(errors.New("network: missing body"))
			return
		}
		s.reply(st, s.sys.Network(req.Network))
	case agentproto.OpMount:
		if req.Mount == nil {
			st.fail(errors.New("mount: missing body"))
			return
		}
		s.reply(st, s.sys.Mount(req.Mount))
	case agentproto.OpFreeze:
		if req.Freeze == nil {
			st.fail(errors.New("freeze: missing body"))
			return
		}
		s.reply(st, s.sys.Freeze(req.Freeze))
	case agentproto.OpSync:
		s.reply(st, s.sys.Sync())
	case agentproto.OpDetach:
		s.reply(st, nil)
		st.Close()
		// Let the reply reach the host before the session goes.
		time.Sleep(20 * time.Millisecond)
		sess.Close()
	case agentproto.OpShutdown:
		s.reply(st, s.sys.Sync())
		st.Close()
		time.Sleep(20 * time.Millisecond)
		if err := s.sys.Shutdown(); err != nil {
			s.log.Printf("shutdown: %v", err)
		}
	default:
		st.fail(fmt.Errorf("bad request: unknown op %q", req.Op))
	}
}

func (s *Server) reply(st *stream, err error) {
	if err != nil {
		st.fail(err)
		return
	}
	st.json(agentproto.FrameResponse, agentproto.Response{})
}

func (s *Server) setup(st *stream, setup *agentproto.Setup) {
	if setup == nil {
		st.fail(errors.New("setup: missing body"))
		return
	}
	for _, kv := range setup.Env {
		if err := (&agentproto.Exec{Argv: []string{"-"}, Env: []string{kv}}).Validate(); err != nil {
			st.fail(fmt.Errorf("setup: %w", err))
			return
		}
	}
	if err := s.sys.Setup(setup); err != nil {
		st.fail(fmt.Errorf("setup: %w", err))
		return
	}
	if len(setup.Seed) > 0 && setup.UnixNano > 0 {
		s.needSetup.Store(false)
	}
	if len(setup.Env) > 0 {
		s.envMu.Lock()
		s.baseEnv = mergeEnv(s.baseEnv, setup.Env, false)
		s.envMu.Unlock()
	}
	st.json(agentproto.FrameResponse, agentproto.Response{})
}

func (s *Server) exec(st *stream, req *agentproto.Exec) {
	p, err := s.procs.start(req)
	if err != nil {
		st.fail(err)
		return
	}
	if err := st.json(agentproto.FrameResponse, agentproto.Response{ID: p.id, PID: p.pid}); err != nil {
		if !p.persistent {
			p.signal(syscall.SIGKILL)
		}
	}
	if p.persistent {
		go pump(p.ptmx, p.ring, p)
		s.streamRing(st, p, 0)
		return
	}
	// A lost stream means nobody will read the output or the exit
	// status: kill the process rather than leave it blocked. The process
	// stays in the table until the host has closed the stream, so a stdin
	// stream the host opened right after the exec still finds it even if
	// the command was quicker.
	hostDone := make(chan struct{})
	go func() {
		io.Copy(io.Discard, st)
		close(hostDone)
		if !p.exited() {
			p.signal(syscall.SIGKILL)
		}
	}()
	defer func() {
		select {
		case <-hostDone:
		case <-time.After(5 * time.Second):
		}
		s.procs.remove(p.id)
	}()

	var wg sync.WaitGroup
	copyOut := func(r *os.File, t agentproto.FrameType) {
		defer wg.Done()
		// Read behind a frame header's room, and frame each MaxData
		// piece in place: its header goes over the end of the piece
		// before it, which is sent by then (a Write returns once the
		// bytes are out). No copy to frame it. A read takes a whole
		// number of pieces, so a full read leaves no short frame.
		const h = agentproto.HeaderLen
		buf := make([]byte, h+readPieces*agentproto.MaxData)
		for {
			n, err := r.Read(buf[h:])
			for off := 0; off < n; {
				m := min(n-off, agentproto.MaxData)
				if st.frameInPlace(t, buf[off:h+off+m]) != nil {
					p.signal(syscall.SIGKILL)
					return
				}
				off += m
			}
			if err != nil { // EOF, or EIO from a PTY whose other side closed
				return
			}
		}
	}
	var outputs []*os.File
	if p.tty {
		outputs = []*os.File{p.ptmx}
		wg.Add(1)
		go copyOut(p.ptmx, agentproto.FrameStdout)
	} else {
		outputs = []*os.File{p.stdout, p.stderr}
		wg.Add(2)
		go copyOut(p.stdout, agentproto.FrameStdout)
		go copyOut(p.stderr, agentproto.FrameStderr)
	}
	<-p.done
	drained := make(chan struct{})
	go func() { wg.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(outputGrace):
		// A background process still holds the output open; do not wait
		// for it forever.
		for _, f := range outputs {
			f.Close()
		}
		<-drained
	}
	p.closeFiles()
	st.json(agentproto.FrameExit, p.exit)
}

// readChunk is the capacity output pipes are grown to: a fast producer
// fills it while the agent sends, because under emulation each wakeup
// costs more than a read.
const readChunk = 1 << 20

// readPieces is how many frames' worth of output the agent reads at a
// time: about readChunk, in whole frames.
const readPieces = readChunk / (agentproto.HeaderLen + agentproto.MaxData)

// outputGrace is how long output may keep flowing after the process
// exits, from children that still hold its stdout.
const outputGrace = 500 * time.Millisecond

// pump copies a persistent process's PTY output into its ring.
func pump(ptmx *os.File, r *ring, p *process) {
	buf := make([]byte, 32<<10)
	for {
		n, err := ptmx.Read(buf)
		if n > 0 {
			r.Write(buf[:n])
		}
		if err != nil {
			break
		}
	}
	<-p.done
	r.Close()
	ptmx.Close()
}

// streamRing sends a persistent process's output from offset, then its
// exit status.
func (s *Server) streamRing(st *stream, p *process, offset uint64) {
	var gone atomic.Bool
	go func() {
		io.Copy(io.Discard, st)
		gone.Store(true)
		p.ring.wake()
	}()
	rd := p.ring.attach(offset)
	defer p.ring.detach(rd)
	for {
		// The offset rides in the payload: a full frame stays MaxData.
		off, data, ok := p.ring.next(rd, agentproto.MaxData-8, gone.Load)
		if !ok {
			break
		}
		if st.frame(agentproto.FrameOutput, agentproto.OutputPayload(off, data)) != nil {
			return
		}
	}
	if gone.Load() {
		return
	}
	<-p.done
	st.json(agentproto.FrameExit, p.exit)
}

func (s *Server) attach(st *stream, id, offset uint64) {
	p, err := s.procs.get(id)
	if err != nil {
		st.fail(err)
		return
	}
	if !p.persistent {
		st.fail(fmt.Errorf("process %d cannot be attached: it is not persistent", id))
		return
	}
	if err := st.json(agentproto.FrameResponse, agentproto.Response{ID: p.id, PID: p.pid}); err != nil {
		return
	}
	s.streamRing(st, p, offset)
}

func (s *Server) stdin(st *stream, id uint64) {
	p, err := s.procs.get(id)
	if err != nil {
		st.fail(err)
		return
	}
	var w io.Writer
	switch {
	case p.tty:
		w = p.ptmx // any number of writers may type into a terminal
	case p.stdin != nil:
		p.mu.Lock()
		taken := p.stdinTaken
		p.stdinTaken = true
		p.mu.Unlock()
		if taken {
			st.fail(fmt.Errorf("process %d: stdin is already attached", id))
			return
		}
		w = p.stdin
		defer p.stdin.Close() // EOF for the process
	default:
		st.fail(fmt.Errorf("process %d was started without stdin", id))
		return
	}
	if err := st.json(agentproto.FrameResponse, agentproto.Response{ID: id}); err != nil {
		return
	}
	io.Copy(w, st)
}

func (s *Server) signal(st *stream, id uint64, sig int) {
	p, err := s.procs.get(id)
	if err != nil {
		st.fail(err)
		return
	}
	if sig <= 0 || sig > 64 {
		st.fail(fmt.Errorf("signal %d out of range", sig))
		return
	}
	s.reply(st, p.signal(syscall.Signal(sig)))
}

func (s *Server) resize(st *stream, req agentproto.Request) {
	p, err := s.procs.get(req.ID)
	if err != nil {
		st.fail(err)
		return
	}
	if !p.tty {
		st.fail(fmt.Errorf("process %d has no terminal", req.ID))
		return
	}
	if req.Rows == 0 || req.Cols == 0 {
		st.fail(errors.New("resize: rows and cols must be positive"))
		return
	}
	s.reply(st, setWinsize(p.ptmx, req.Rows, req.Cols))
}
