package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/creack/pty"
	"github.com/gondolin/gondolin/vm/agentproto"
	"golang.org/x/sys/unix"
)

const (
	// ringSize is how much output a persistent process keeps for a host
	// that reconnects: at least 1 MiB, as sessions promise.
	ringSize = 2 << 20
	// maxProcesses bounds the process table so a confused host cannot
	// exhaust the guest's memory through the agent.
	maxProcesses = 1024
	// keepExited is how many exited persistent processes stay listed, so a
	// host that reconnects late still learns their exit status.
	keepExited = 64
)

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// process is one command the agent started.
type process struct {
	id         uint64
	pid        int
	argv       []string
	tty        bool
	persistent bool

	ptmx   *os.File // the PTY master, for TTY processes
	stdin  *os.File // the write end of a stdin pipe, for pipe processes
	stdout *os.File // read ends of output pipes, for pipe processes
	stderr *os.File
	ring   *ring // output of persistent processes

	mu         sync.Mutex
	stdinTaken bool

	done chan struct{} // closed when the process has been reaped
	exit agentproto.ExitStatus
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the process's group (every process runs in its own
// session), falling back to the process alone.
func (p *process) signal(sig syscall.Signal) error {
	if p.exited() {
		return errors.New("process has exited")
	}
	if err := unix.Kill(-p.pid, sig); err == nil {
		return nil
	}
	return unix.Kill(p.pid, sig)
}

func (p *process) info() agentproto.Process {
	info := agentproto.Process{ID: p.id, PID: p.pid, Argv: p.argv, TTY: p.tty, Running: !p.exited()}
	if !info.Running {
		exit := p.exit
		info.Exit = &exit
	}
	if p.ring != nil {
		info.Offset = p.ring.End()
	}
	return info
}

// procTable holds the processes the agent manages.
type procTable struct {
	reaper *reaper
	env    func() []string // base environment

	mu     sync.Mutex
	nextID uint64
	procs  map[uint64]*process
}

func newProcTable(r *reaper, env func() []string) *procTable {
	return &procTable{reaper: r, env: env, procs: map[uint64]*process{}}
}

func (t *procTable) get(id uint64) (*process, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.procs[id]
	if !ok {
		return nil, fmt.Errorf("no process %d", id)
	}
	return p, nil
}

func (t *procTable) list() []agentproto.Process {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]agentproto.Process, 0, len(t.procs))
	for _, p := range t.procs {
		out = append(out, p.info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// running counts the processes that have not exited.
func (t *procTable) running() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, p := range t.procs {
		if !p.exited() {
			n++
		}
	}
	return n
}

func (t *procTable) remove(id uint64) {
	t.mu.Lock()
	delete(t.procs, id)
	t.mu.Unlock()
}

// prune drops the oldest exited persistent processes beyond keepExited.
func (t *procTable) prune() {
	t.mu.Lock()
	defer t.mu.Unlock()
	var exited []uint64
	for id, p := range t.procs {
		if p.persistent && p.exited() {
			exited = append(exited, id)
		}
	}
	sort.Slice(exited, func(i, j int) bool { return exited[i] < exited[j] })
	for len(exited) > keepExited {
		delete(t.procs, exited[0])
		exited = exited[1:]
	}
}

// startError carries the exit code a shell would give for a command that
// could not start (126 not executable, 127 not found).
type startError struct {
	code int
	err  error
}

func (e *startError) Error() string { return e.err.Error() }

// start launches req as a new process in its own session.
func (t *procTable) start(req *agentproto.Exec) (*process, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if req.Persistent && !req.TTY {
		return nil, errors.New("exec: persistent processes need a TTY")
	}
	t.mu.Lock()
	full := len(t.procs) >= maxProcesses
	t.mu.Unlock()
	if full {
		t.prune()
		t.mu.Lock()
		full = len(t.procs) >= maxProcesses
		t.mu.Unlock()
		if full {
			return nil, fmt.Errorf("exec: too many processes (limit %d)", maxProcesses)
		}
	}

	env := mergeEnv(t.env(), req.Env, req.TTY)
	cwd := req.Cwd
	if cwd == "" {
		cwd = lookupEnv(env, "HOME")
		if cwd == "" {
			cwd = "/"
		}
	}
	if st, err := os.Stat(cwd); err != nil || !st.IsDir() {
		return nil, &startError{code: 126, err: fmt.Errorf("exec: working directory %s does not exist", cwd)}
	}
	path, err := lookPath(req.Argv[0], lookupEnv(env, "PATH"), cwd)
	if err != nil {
		return nil, err
	}

	p := &process{argv: req.Argv, tty: req.TTY, persistent: req.Persistent, done: make(chan struct{})}
	var childFiles []*os.File // closed in the agent once the child has them
	defer func() {
		for _, f := range childFiles {
			f.Close()
		}
	}()
	attr := &os.ProcAttr{Dir: cwd, Env: env, Sys: &syscall.SysProcAttr{Setsid: true}}
	if req.TTY {
		ptmx, tty, err := openPTY()
		if err != nil {
			return nil, fmt.Errorf("exec: open pty: %w", err)
		}
		rows, cols := req.Rows, req.Cols
		if rows == 0 || cols == 0 {
			rows, cols = 24, 80
		}
		setWinsize(ptmx, rows, cols)
		p.ptmx = ptmx
		childFiles = append(childFiles, tty)
		attr.Files = []*os.File{tty, tty, tty}
		attr.Sys.Setctty = true
		attr.Sys.Ctty = 0
	} else {
		stdin, err := os.Open(os.DevNull)
		if err != nil {
			return nil, err
		}
		if req.Stdin {
			stdin.Close()
			var w *os.File
			if stdin, w, err = os.Pipe(); err != nil {
				return nil, err
			}
			p.stdin = w
		}
		childFiles = append(childFiles, stdin)
		outR, outW, err := os.Pipe()
		if err != nil {
			p.closeFiles()
			return nil, err
		}
		errR, errW, err := os.Pipe()
		if err != nil {
			outR.Close()
			outW.Close()
			p.closeFiles()
			return nil, err
		}
		p.stdout, p.stderr = outR, errR
		growPipe(outR)
		growPipe(errR)
		childFiles = append(childFiles, outW, errW)
		attr.Files = []*os.File{stdin, outW, errW}
	}
	if req.Persistent {
		p.ring = newRing(ringSize)
	}

	proc, wait, err := t.reaper.start(func() (*os.Process, error) {
		return os.StartProcess(path, req.Argv, attr)
	})
	if err != nil {
		p.closeFiles()
		code := 126
		if errors.Is(err, fs.ErrNotExist) {
			code = 127
		}
		return nil, &startError{code: code, err: fmt.Errorf("exec %s: %w", req.Argv[0], err)}
	}
	p.pid = proc.Pid
	go func() {
		ws := <-wait
		p.exit.Code, p.exit.Signal = exitStatusOf(ws)
		close(p.done)
	}()

	t.mu.Lock()
	t.nextID++
	p.id = t.nextID
	t.procs[p.id] = p
	t.mu.Unlock()
	return p, nil
}

func (p *process) closeFiles() {
	for _, f := range []*os.File{p.ptmx, p.stdin, p.stdout, p.stderr} {
		if f != nil {
			f.Close()
		}
	}
}

// mergeEnv overlays the request's entries on the base environment, later
// keys winning, and gives TTY processes a TERM when none is set.
func mergeEnv(base, extra []string, tty bool) []string {
	index := map[string]int{}
	var env []string
	for _, kv := range append(append([]string{}, base...), extra...) {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := index[k]; ok {
			env[i] = kv
			continue
		}
		index[k] = len(env)
		env = append(env, kv)
	}
	if _, ok := index["TERM"]; tty && !ok {
		env = append(env, "TERM=xterm-256color")
	}
	return env
}

func lookupEnv(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

// lookPath finds file in the process's PATH (not the agent's), as execvp
// in the child would.
func lookPath(file, pathEnv, cwd string) (string, error) {
	if strings.Contains(file, "/") {
		if !filepath.IsAbs(file) {
			file = filepath.Join(cwd, file)
		}
		if err := executable(file); err != nil {
			return "", err
		}
		return file, nil
	}
	if pathEnv == "" {
		pathEnv = defaultPath
	}
	var firstErr error
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		candidate := filepath.Join(dir, file)
		err := executable(candidate)
		if err == nil {
			return candidate, nil
		}
		var se *startError
		if firstErr == nil && !(errors.As(err, &se) && se.code == 127) {
			firstErr = err
		}
	}
	if firstErr != nil {
		return "", firstErr
	}
	return "", &startError{code: 127, err: fmt.Errorf("exec %s: command not found", file)}
}

func executable(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return &startError{code: 127, err: fmt.Errorf("exec %s: no such file or directory", path)}
		}
		return &startError{code: 126, err: fmt.Errorf("exec %s: %w", path, err)}
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return &startError{code: 126, err: fmt.Errorf("exec %s: permission denied", path)}
	}
	return nil
}

// growPipe raises a pipe's capacity to readChunk so a fast producer fills
// it in fewer, larger writes (best effort: the limit is
// /proc/sys/fs/pipe-max-size).
func growPipe(f *os.File) {
	// Not f.Fd(): that would switch the pipe to blocking mode, and a
	// blocked read could no longer be interrupted by Close.
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.FcntlInt(fd, unix.F_SETPIPE_SZ, readChunk) })
	}
}

// openPTY opens a pseudo-terminal whose master stays in non-blocking mode:
// pty.Open leaves it blocking (it calls Fd), and a blocking read can then
// not be interrupted by Close when a background process keeps the
// terminal open after the command exits.
func openPTY() (ptmx, tty *os.File, err error) {
	m, tty, err := pty.Open()
	if err != nil {
		return nil, nil, err
	}
	defer m.Close()
	fd, err := unix.Dup(int(m.Fd()))
	if err != nil {
		tty.Close()
		return nil, nil, err
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		tty.Close()
		return nil, nil, err
	}
	return os.NewFile(uintptr(fd), "/dev/ptmx"), tty, nil
}

// setWinsize sets a terminal's size without switching it to blocking mode.
func setWinsize(f *os.File, rows, cols uint16) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ioctlErr error
	err = rc.Control(func(fd uintptr) {
		ioctlErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	})
	if err != nil {
		return err
	}
	return ioctlErr
}
