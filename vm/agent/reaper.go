package agent

import (
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// reaper collects the exit status of every child, including orphans that
// the kernel reparents to the agent when it runs as PID 1 (elsewhere, only
// its own children). Processes are
// started through it and never waited on with os.Process.Wait, so that
// exactly one wait4 call sees each exit.
type reaper struct {
	mu      sync.Mutex
	waiting map[int]chan unix.WaitStatus
}

var (
	theReaper     *reaper
	theReaperOnce sync.Once
)

// processReaper returns the process-wide reaper: wait4(-1) sees every
// child of the process, so there can be only one.
func processReaper() *reaper {
	theReaperOnce.Do(func() { theReaper = newReaper() })
	return theReaper
}

func newReaper() *reaper {
	r := &reaper{waiting: map[int]chan unix.WaitStatus{}}
	sig := make(chan os.Signal, 16)
	signal.Notify(sig, syscall.SIGCHLD)
	go func() {
		for range sig {
			r.reap()
		}
	}()
	return r
}

// start runs spawn with the reaper locked, so that a child that exits at
// once is not reaped before it is registered.
func (r *reaper) start(spawn func() (*os.Process, error)) (*os.Process, <-chan unix.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, err := spawn()
	if err != nil {
		return nil, nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiting[p.Pid] = ch
	return p, ch, nil
}

func (r *reaper) reap() {
	if os.Getpid() != 1 {
		r.reapOwn()
		return
	}
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
		r.mu.Lock()
		ch, ok := r.waiting[pid]
		delete(r.waiting, pid)
		r.mu.Unlock()
		if ok {
			ch <- ws
		}
	}
}

// reapOwn collects only the processes started through the reaper: an
// agent that is not PID 1 (tests run it on the host) inherits no orphans,
// and must not take the exit of a child some other code in its process
// waits for.
func (r *reaper) reapOwn() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for pid, ch := range r.waiting {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if got == pid && err == nil {
			delete(r.waiting, pid)
			ch <- ws
		}
	}
}

// exitStatusOf converts a wait status into the shell's convention.
func exitStatusOf(ws unix.WaitStatus) (code, signal int) {
	if ws.Signaled() {
		return 128 + int(ws.Signal()), int(ws.Signal())
	}
	return ws.ExitStatus(), 0
}
