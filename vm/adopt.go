package vm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/gondolin/gondolin/internal/layout"
	"golang.org/x/sys/unix"
)

// ErrNotRunning means a VM's QEMU is not running (or its pid now belongs
// to another process).
var ErrNotRunning = errors.New("vm is not running")

// RunningPID returns the pid of the QEMU that runs in dir, checking that
// the process is really that QEMU: after a reboot or a crash the pid file
// may name an unrelated process.
func RunningPID(dir string) (int, error) {
	b, err := os.ReadFile(dir + "/" + layout.QEMUPid)
	if err != nil {
		return 0, fmt.Errorf("%w: no pid file", ErrNotRunning)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%w: bad pid file", ErrNotRunning)
	}
	// A zombie has exited; only its parent has not reaped it yet. (Checked
	// first: a zombie's cmdline is empty, which would read as another
	// process.)
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		if i := bytes.LastIndexByte(st, ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
			return 0, fmt.Errorf("%w: process %d has exited", ErrNotRunning, pid)
		}
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0, fmt.Errorf("%w: process %d is gone", ErrNotRunning, pid)
	}
	if !bytes.Contains(cmdline, []byte("qemu-system")) || !bytes.Contains(cmdline, []byte(dir+"/")) {
		return 0, fmt.Errorf("%w: process %d is not this VM's QEMU", ErrNotRunning, pid)
	}
	return pid, nil
}

// Adopt takes over the running QEMU of a VM started by an earlier process
// (a supervisor that died). It is not this process's child, so its exit is
// watched through a pidfd and its exit status is unknown.
func Adopt(cfg Config) (*Machine, error) {
	cfg.fill()
	pid, err := RunningPID(cfg.Dir)
	if err != nil {
		return nil, err
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("watch qemu %d: %w", pid, err)
	}
	m := &Machine{cfg: cfg, pid: pid, exited: make(chan struct{})}
	// What the guest printed before this process took over concerns the
	// one that started it.
	if st, err := os.Stat(cfg.path(layout.ConsoleLog)); err == nil {
		m.consoleFrom = st.Size()
	}
	go func() {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err == unix.EINTR {
				continue
			}
			break
		}
		m.exitErr = m.describeExit(errors.New("exit status unknown"))
		close(m.exited)
	}()
	go m.capConsole()
	return m, nil
}

// Stats is a QEMU process's resource use.
type Stats struct {
	CPUTicks uint64 // user+system time in clock ticks (USER_HZ)
	RSSBytes int64
}

// ProcessStats reads a process's CPU time and resident memory.
func ProcessStats(pid int) (Stats, error) {
	var s Stats
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return s, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) > 22 {
		utime, _ := strconv.ParseUint(f[11], 10, 64)
		stime, _ := strconv.ParseUint(f[12], 10, 64)
		s.CPUTicks = utime + stime
		rss, _ := strconv.ParseInt(f[21], 10, 64)
		s.RSSBytes = rss * int64(os.Getpagesize())
	}
	return s, nil
}
