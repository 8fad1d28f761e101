package mounts

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/internal/contain"
	"github.com/gondolin/gondolin/mounts/fsproto"
	"golang.org/x/sys/unix"
)

// Server is the host end of one VM's fs port: it serves the file
// operations of all of the VM's host mounts. A Server outlives its
// connections: after the VM's port is reconnected (by this process),
// call Serve again with the new connection, and the guest's open handles
// stay valid. A new Server (after a supervisor restart) is a new
// instance: the guest reopens its handles by path.
type Server struct {
	log      *log.Logger
	mounts   map[string]*hostMount
	instance uint32
	handles  handleTable
	limiter  logLimiter

	// life is held shared by every operation and exclusively by Close,
	// so that no operation uses a root or a handle Close has released.
	life   sync.RWMutex
	closed atomic.Bool // set under mu

	mu   sync.Mutex
	conn io.ReadWriteCloser

	watch *watcher
	// out is the current connection's writer once its guest has asked for
	// notices (protocol version 2); nil otherwise.
	outMu sync.Mutex
	out   *frameWriter
}

// frameWriter writes whole frames to one connection, one at a time, until
// that connection's session ends.
type frameWriter struct {
	mu   sync.Mutex
	conn io.WriteCloser
	dead bool
}

func (fw *frameWriter) write(frame []byte) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.dead {
		return
	}
	if _, err := fw.conn.Write(frame); err != nil {
		fw.conn.Close() // the reader notices and Serve returns
	}
}

// end stops fw's writes: the next session's handshake follows.
func (fw *frameWriter) end() {
	fw.mu.Lock()
	fw.dead = true
	fw.mu.Unlock()
}

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("mounts: server closed")

// maxInflight bounds the requests served at once; when it is reached the
// server stops reading, which pushes back on the guest through the port.
const maxInflight = 64

// NewServer opens the host directory of every host mount in specs
// (memory mounts are the guest's business and are skipped). logger may
// be nil.
func NewServer(specs []Spec, logger *log.Logger) (*Server, error) {
	s, _, err := newServer(specs, logger, false)
	return s, err
}

// NewServerKeeping is NewServer for the mounts of a VM that is already
// running them (a supervisor adopting a session): a mount whose host
// directory is gone or is no longer the one it was made with is left
// out, its error returned in lost, and the guest's requests for it fail
// at once with ENODEV rather than wait for a server that never comes.
// The other mounts are served.
func NewServerKeeping(specs []Spec, logger *log.Logger) (s *Server, lost []error, err error) {
	return newServer(specs, logger, true)
}

func newServer(specs []Spec, logger *log.Logger, keepGoing bool) (s *Server, lost []error, err error) {
	if logger == nil {
		logger = log.New(io.Discard, "", 0)
	}
	if err := Check(specs); err != nil {
		return nil, nil, err
	}
	var b [4]byte
	rand.Read(b[:])
	s = &Server{
		log:      logger,
		mounts:   map[string]*hostMount{},
		instance: binary.BigEndian.Uint32(b[:]) | 1,
		limiter:  logLimiter{every: time.Second, burst: 10},
	}
	s.handles.init(s.instance)
	var ids []string
	for _, spec := range specs {
		if !spec.Memory {
			ids = append(ids, spec.ID)
		}
	}
	s.watch = newWatcher(s.notify, ids)
	for _, spec := range specs {
		if spec.Memory {
			continue
		}
		m, err := openMount(spec)
		if err != nil && keepGoing {
			lost = append(lost, err)
			continue
		}
		if err != nil {
			s.closeMounts()
			return nil, nil, err
		}
		s.mounts[spec.ID] = m
	}
	return s, lost, nil
}

func (s *Server) closeMounts() {
	s.watch.close() // it stats through the roots
	for _, m := range s.mounts {
		m.close()
	}
}

// Close drops the connection, waits for operations in progress, and
// closes every handle and mount root.
func (s *Server) Close() error {
	s.mu.Lock()
	already := s.closed.Swap(true)
	if s.conn != nil {
		s.conn.Close()
	}
	s.mu.Unlock()
	if already {
		return nil
	}
	s.life.Lock()
	defer s.life.Unlock()
	s.handles.closeAll()
	s.closeMounts()
	return nil
}

// Serve resynchronises with the guest over conn and serves it until conn
// fails or the Server is closed (then it returns ErrServerClosed). A
// Serve already running on an older connection is cut off: one guest,
// one connection. conn is closed on return.
//
// A panic while serving one of the guest's requests (each runs in its own
// goroutine) is a bug the guest hit, and it leaves the server's state in
// doubt: Serve stops, closes the Server and returns the panic as a
// *contain.PanicError, which its caller should treat as a panic of Serve
// itself (see sessions: the session is marked broken).
func (s *Server) Serve(conn io.ReadWriteCloser) error {
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		conn.Close()
		return ErrServerClosed
	}
	if s.conn != nil {
		s.conn.Close()
	}
	s.conn = conn
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.conn == conn {
			s.conn = nil
		}
		s.mu.Unlock()
		conn.Close()
	}()

	br := fsproto.NewReader(conn)
	for {
		if err := fsproto.HostHandshake(conn, br); err != nil {
			return s.serveErr(fmt.Errorf("fs port handshake: %w", err))
		}
		err := s.serveFrames(conn, br)
		var pe *contain.PanicError
		if errors.As(err, &pe) {
			s.logf("fs: %v; closing the server", pe)
			s.Close()
			return pe
		}
		if errors.Is(err, fsproto.ErrDesync) {
			// A new guest client (see fsproto.Breaker), or garbage: start
			// over on the same connection.
			s.logf("fs: the guest's stream lost frame sync; resynchronising")
			continue
		}
		return s.serveErr(err)
	}
}

// serveFrames serves requests until reading fails. It returns once every
// request it started has been answered, so that no reply of this session
// can follow the next handshake. If serving a request panicked, it
// returns that panic, a *contain.PanicError, whatever reading returned.
func (s *Server) serveFrames(conn io.ReadWriteCloser, br *bufio.Reader) (err error) {
	fw := &frameWriter{conn: conn}
	var (
		inflight sync.WaitGroup
		sem      = make(chan struct{}, maxInflight)
		panicked atomic.Pointer[contain.PanicError]
	)
	defer func() {
		inflight.Wait()
		s.setOut(fw, nil)
		fw.end()
		if pe := panicked.Load(); pe != nil {
			err = pe
		}
	}()
	reply := func(rep *fsproto.Reply) {
		frame, err := fsproto.AppendReply(nil, rep)
		if err != nil {
			s.logf("fs: encode %s reply: %v", rep.Op, err)
			frame, _ = fsproto.AppendReply(nil, &fsproto.Reply{Tag: rep.Tag, Op: rep.Op, Errno: syscall.EIO})
		}
		if rep.Op == fsproto.OpInit && rep.Errno == 0 && rep.Version >= 2 {
			// Before the reply goes: the guest's next request may come
			// at once, and must be watched for (see notifying). A
			// notice that overtakes the reply is read all the same.
			s.setOut(nil, fw)
		}
		fw.write(frame)
	}
	fr := fsproto.NewFrameReader(br, fsproto.MaxFrame)
	for {
		if panicked.Load() != nil {
			return nil // the panic, once the requests in flight are done
		}
		frame, err := fr.Next(nil)
		if err != nil {
			var tl *fsproto.TooLargeError
			switch {
			case errors.As(err, &tl):
				s.logf("fs: %v", err)
				reply(&fsproto.Reply{Tag: tl.Tag, Op: tl.Op, Errno: syscall.EMSGSIZE})
				continue
			case errors.Is(err, fsproto.ErrShortFrame):
				s.logf("fs: %v", err) // no tag to answer
				continue
			}
			return err
		}
		req, err := fsproto.DecodeRequest(frame)
		if err != nil {
			s.logf("fs: %v", err)
			reply(&fsproto.Reply{Tag: req.Tag, Op: req.Op, Errno: fsproto.ErrnoOf(err)})
			continue
		}
		sem <- struct{}{}
		inflight.Add(1)
		go func() {
			defer func() { <-sem; inflight.Done() }()
			// A panic here is a bug a guest's request hit, and it
			// may have left the server half-way through changing its
			// state (a handle added, a file left open). Rather than
			// serve on: close the connection, so that the loop stops
			// reading, and have serveFrames return the panic, for Serve
			// to close the Server.
			defer contain.Recover("a file request", func(pe *contain.PanicError) {
				pe.Where += " (" + req.Op.String() + ")"
				panicked.CompareAndSwap(nil, pe)
				conn.Close()
			})
			if testHookRequest != nil {
				testHookRequest(req)
			}
			rep, raced := s.serve(req)
			reply(rep)
			// After the reply: a notice sent before it would reach
			// the guest's kernel before the stale answer it corrects.
			s.watch.renotice(raced)
		}()
	}
}

// testHookRequest, when a test sets it (before serving), runs first in
// every request's goroutine: a panic in it stands for a bug a guest's
// request hits.
var testHookRequest func(*fsproto.Request)

func (s *Server) serveErr(err error) error {
	if s.closed.Load() {
		return ErrServerClosed
	}
	if errors.Is(err, io.EOF) || errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) {
		return nil
	}
	return err
}

// handle performs one request. It is the single place where the mount
// and the read-only rule are enforced.
func (s *Server) handle(req *fsproto.Request) *fsproto.Reply {
	rep, _ := s.serve(req)
	return rep
}

// serve is handle, and also returns the paths whose reply may have raced
// a change on the host (see watcher.learned): the guest is told about
// them again once the reply is out.
func (s *Server) serve(req *fsproto.Request) (rep *fsproto.Reply, raced []change) {
	rep = &fsproto.Reply{Tag: req.Tag, Op: req.Op}
	s.life.RLock()
	defer s.life.RUnlock()
	if s.closed.Load() {
		rep.Errno = syscall.ENOTCONN
		return rep, nil
	}
	if req.Op == fsproto.OpInit {
		if req.Version < fsproto.MinVersion || req.Version > fsproto.Version {
			rep.Errno = syscall.EPROTONOSUPPORT
			return rep, nil
		}
		rep.Version = req.Version
		rep.Instance = uint64(s.instance)
		return rep, nil
	}
	m := s.mounts[req.Mount]
	if m == nil {
		rep.Errno = syscall.ENODEV
		return rep, nil
	}
	if m.ro && req.Writes() {
		rep.Errno = syscall.EROFS
		return rep, nil
	}
	if !s.notifying() {
		// A guest of protocol version 1 hears no reports: watching for
		// it would spend the budget for nothing.
		rep.Errno = s.do(m, req, rep)
		return rep, nil
	}
	s.watch.watchFor(m, req)
	busy := s.touches(m, req)
	start := s.watch.begin(m, busy)
	rep.Errno = s.do(m, req, rep)
	raced = s.learn(m, req, rep, start)
	s.watch.end(m, busy)
	return rep, raced
}

// notifying reports whether the connected guest hears notices.
func (s *Server) notifying() bool {
	s.outMu.Lock()
	defer s.outMu.Unlock()
	return s.out != nil
}

// touches lists the paths req works on, for the watcher to leave their
// events until the request's outcome is learned (a handle's by the path
// it was opened by; a directory's listing covers its entries).
func (s *Server) touches(m *hostMount, req *fsproto.Request) []string {
	if req.Handle != 0 {
		if h, errno := s.handles.get(m, req.Handle); errno == 0 {
			return []string{h.path}
		}
		return nil
	}
	paths := []string{req.Path}
	if req.Path2 != "" {
		paths = append(paths, req.Path2)
	}
	return paths
}

// setOut replaces the writer notices go to, if it is old.
func (s *Server) setOut(old, fw *frameWriter) {
	s.outMu.Lock()
	if s.out == old || old == nil {
		s.out = fw
	}
	s.outMu.Unlock()
}

// notify sends a notice to the guest, if one listens.
func (s *Server) notify(mount, path string, kind uint32) {
	s.outMu.Lock()
	fw := s.out
	s.outMu.Unlock()
	if fw == nil {
		return
	}
	frame, err := fsproto.AppendReply(nil, &fsproto.Reply{Op: fsproto.OpNotify, Mount: mount, Path: path, Flags: kind})
	if err != nil {
		return // a path too long for a frame cannot have been looked up
	}
	fw.write(frame)
}

// learn records what rep told the guest's kernel about the paths of req,
// so that the watcher does not report the guest's own changes back to it,
// and returns the paths whose answer may be older than a change the
// watcher already reported (start: see watcher.now). An open's
// attributes are not learned: they reach no cache of the guest's kernel.
func (s *Server) learn(m *hostMount, req *fsproto.Request, rep *fsproto.Reply, start uint64) (raced []change) {
	w := s.watch
	learned := func(m *hostMount, p string, a *fsproto.Attr) {
		if !w.learned(m, p, a, start) {
			raced = append(raced, change{w, m, p})
		}
	}
	if rep.Errno == syscall.ENOENT && req.Op == fsproto.OpStat {
		learned(m, req.Path, nil)
		return raced
	}
	if rep.Errno != 0 {
		return nil
	}
	switch req.Op {
	case fsproto.OpStat, fsproto.OpCreate, fsproto.OpMkdir, fsproto.OpMknod, fsproto.OpSymlink:
		learned(m, req.Path, &rep.Attr)
	case fsproto.OpLink:
		learned(m, req.Path, &rep.Attr)
		learned(m, req.Path2, &rep.Attr)
	case fsproto.OpUnlink, fsproto.OpRmdir:
		learned(m, req.Path, nil)
	case fsproto.OpRename:
		w.moved(m, req.Path, req.Path2, req.Flags&unix.RENAME_EXCHANGE != 0)
		for _, p := range []string{req.Path, req.Path2} {
			var a fsproto.Attr
			if m.stat(p, &a) == 0 {
				learned(m, p, &a)
			} else {
				learned(m, p, nil)
			}
		}
	case fsproto.OpSetattr, fsproto.OpFstat, fsproto.OpWrite, fsproto.OpFallocate:
		p := req.Path
		var h *handle
		if req.Handle != 0 {
			var errno syscall.Errno
			if h, errno = s.handles.get(m, req.Handle); errno != 0 {
				return
			}
			p = h.path
		}
		// (A listing's entries are not learned: the guest's kernel takes
		// only those it reads, perhaps much later.)
		switch {
		case req.Op == fsproto.OpWrite || req.Op == fsproto.OpFallocate:
			var a fsproto.Attr
			if h.f != nil && m.fstat(h.f, &a) == 0 {
				learned(m, p, &a)
			}
		default:
			learned(m, p, &rep.Attr)
		}
	}
	return raced
}

func (s *Server) do(m *hostMount, req *fsproto.Request, rep *fsproto.Reply) syscall.Errno {
	switch req.Op {
	case fsproto.OpStat:
		return m.stat(req.Path, &rep.Attr)
	case fsproto.OpReadlink:
		var errno syscall.Errno
		rep.Data, errno = m.readlink(req.Path)
		return errno
	case fsproto.OpOpen, fsproto.OpCreate:
		f, errno := m.open(req, &rep.Attr)
		if errno != 0 {
			return errno
		}
		rep.Handle, errno = s.handles.addOrClose(&handle{m: m, f: f, path: req.Path})
		return errno
	case fsproto.OpOpendir:
		d, errno := m.opendir(req.Path)
		if errno != 0 {
			return errno
		}
		rep.Handle, errno = s.handles.addOrClose(&handle{m: m, dir: d, path: req.Path})
		return errno
	case fsproto.OpSetattr:
		if req.Handle != 0 {
			h, errno := s.handles.get(m, req.Handle)
			if errno != 0 {
				return errno
			}
			if h.f == nil {
				return syscall.EISDIR
			}
			return m.setattrFile(h.f, req, &rep.Attr)
		}
		return m.setattrPath(req, &rep.Attr)
	case fsproto.OpMkdir:
		return m.mkdir(req.Path, req.Mode, &rep.Attr)
	case fsproto.OpMknod:
		return m.mknod(req.Path, req.Mode, &rep.Attr)
	case fsproto.OpSymlink:
		return m.symlink(string(req.Data), req.Path, &rep.Attr)
	case fsproto.OpLink:
		return m.link(req.Path, req.Path2, &rep.Attr)
	case fsproto.OpUnlink:
		return m.unlink(req.Path, 0)
	case fsproto.OpRmdir:
		return m.unlink(req.Path, unix.AT_REMOVEDIR)
	case fsproto.OpRename:
		return m.rename(req.Path, req.Path2, req.Flags)
	case fsproto.OpStatfs:
		return m.statfs(&rep.Statfs)
	case fsproto.OpRelease:
		return s.handles.release(m, req.Handle)
	}
	// The rest work on a handle.
	h, errno := s.handles.get(m, req.Handle)
	if errno != 0 {
		return errno
	}
	if req.Op == fsproto.OpReaddir {
		if h.dir == nil {
			return syscall.ENOTDIR
		}
		rep.Entries, rep.EOF, errno = h.dir.page(m, req.Offset, req.Size)
		return errno
	}
	if req.Op == fsproto.OpFstat && h.dir != nil {
		return h.dir.stat(m, &rep.Attr)
	}
	if req.Op == fsproto.OpFsync && h.dir != nil {
		return h.dir.sync()
	}
	if h.f == nil {
		return syscall.EISDIR
	}
	switch req.Op {
	case fsproto.OpFstat:
		return m.fstat(h.f, &rep.Attr)
	case fsproto.OpRead:
		rep.Data, errno = readAt(h.f, req.Offset, req.Size)
		return errno
	case fsproto.OpWrite:
		var n int
		n, errno = writeAt(h.f, req.Offset, req.Data)
		rep.Size = uint64(n)
		return errno
	case fsproto.OpFsync:
		return fsync(h.f, req.Flags&1 != 0)
	case fsproto.OpLseek:
		rep.Offset, errno = lseek(h.f, req.Offset, req.Flags)
		return errno
	case fsproto.OpFallocate:
		return fallocate(h.f, req.Offset, req.Size, req.Flags)
	}
	return syscall.ENOSYS
}

// logf logs at a bounded rate: the guest can produce errors at will.
func (s *Server) logf(format string, args ...any) {
	if s.limiter.allow() {
		s.log.Printf(format, args...)
	}
}

type logLimiter struct {
	mu     sync.Mutex
	every  time.Duration
	burst  int
	tokens int
	last   time.Time
}

func (l *logLimiter) allow() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if now.Sub(l.last) >= l.every {
		l.tokens, l.last = l.burst, now
	}
	if l.tokens == 0 {
		return false
	}
	l.tokens--
	return true
}

// A handle is an open file or directory of one mount.
type handle struct {
	m   *hostMount
	f   *os.File
	dir *dirStream
	// path is the one it was opened by (the file may have moved since):
	// what the watcher learns about the guest's writes is filed under it.
	path string
}

func (h *handle) close() {
	if h.f != nil {
		h.f.Close()
	}
	if h.dir != nil {
		h.dir.close()
	}
}

// MaxHandles bounds the files and directories one VM can hold open on
// the host; the next open gets EMFILE, in that VM only. Each handle is a
// descriptor of the supervisor, which serves every VM in one process: the
// bound keeps one guest from starving the others (and the supervisor's
// own sockets) of descriptors. 1024 is what a Linux process gets by
// default (the soft RLIMIT_NOFILE), plenty for a VM's builds and editors
// on its host mounts, and small enough that a dozen VMs at the bound fit
// in a limit of 20,000, hundreds in systemd's usual hard limit of 524,288
// (see internal/rlimit). A VM's requests in flight hold a few more for a
// moment (at most 3 each, maxInflight of them), and each mount its root.
const MaxHandles = 1024

// handleTable maps handle numbers to open files. A number carries the
// server's instance in its high half, so that a handle of an earlier
// instance (from before a supervisor restart) is never mistaken for one
// of this instance: it gets ESTALE, and the guest reopens by path.
type handleTable struct {
	mu       sync.Mutex
	instance uint32
	next     uint32
	m        map[uint64]*handle
}

func (t *handleTable) init(instance uint32) {
	t.instance = instance
	t.m = map[uint64]*handle{}
}

// addOrClose adds h as add does; when the table is full, it closes h's
// file or directory, which nothing else holds yet.
func (t *handleTable) addOrClose(h *handle) (uint64, syscall.Errno) {
	id, errno := t.add(h)
	if errno != 0 {
		h.close()
	}
	return id, errno
}

func (t *handleTable) add(h *handle) (uint64, syscall.Errno) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.m) >= MaxHandles {
		return 0, syscall.EMFILE
	}
	for {
		t.next++
		id := uint64(t.instance)<<32 | uint64(t.next)
		if t.next != 0 && t.m[id] == nil {
			t.m[id] = h
			return id, 0
		}
	}
}

func (t *handleTable) get(m *hostMount, id uint64) (*handle, syscall.Errno) {
	t.mu.Lock()
	h := t.m[id]
	t.mu.Unlock()
	switch {
	case h == nil:
		return nil, syscall.ESTALE
	case h.m != m:
		return nil, syscall.EBADF
	}
	return h, 0
}

func (t *handleTable) release(m *hostMount, id uint64) syscall.Errno {
	t.mu.Lock()
	h := t.m[id]
	if h == nil || h.m != m {
		t.mu.Unlock()
		return 0 // released already (a retried release), or never ours
	}
	delete(t.m, id)
	t.mu.Unlock()
	// os.File and dirStream wait for operations still using them.
	h.close()
	return 0
}

func (t *handleTable) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, h := range t.m {
		h.close()
		delete(t.m, id)
	}
}
