// Package testutil holds the helpers that tests across gondolin's packages
// would otherwise each keep a copy of: polling for a condition, and
// servers on a listener that live as long as the test. (A buffer that
// goroutines share is internal/syncbuf.)
package testutil

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Poll calls cond until it returns true or d has passed, and reports
// whether it did. It polls often at first and backs off to every 50ms, so
// that a quick condition costs little time and a slow one (a VM booting, a
// tmux capture) little CPU. It is for callers that fail with their own
// message; WaitFor is the usual form.
func Poll(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	sleep := 5 * time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(sleep)
		sleep = min(2*sleep, 50*time.Millisecond)
	}
	return true
}

// WaitFor fails t unless cond returns true within d; what names the
// condition in the failure.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Poll(d, cond) {
		t.Fatalf("%s: not within %v", what, d)
	}
}

// EmptyDir fails t if dir holds anything: a store's temporary
// directory, say, after an operation that must clean up after itself. A
// dir that does not exist is empty.
func EmptyDir(t testing.TB, dir string) {
	t.Helper()
	left, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Error(err)
	}
	if len(left) != 0 {
		names := make([]string, len(left))
		for i, e := range left {
			names[i] = e.Name()
		}
		t.Errorf("%s not empty: it holds %v", dir, names)
	}
}

// Listen listens on network and address, failing t if it cannot; the
// listener is closed when the test ends.
func Listen(t testing.TB, network, address string) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// Serve accepts connections on ln until it is closed, and gives each to
// handle in a goroutine of its own. When the test ends it closes ln and
// waits for the accepting goroutine to return (handle's goroutines end
// when their connections do).
func Serve(t testing.TB, ln net.Listener, handle func(net.Conn)) {
	t.Helper()
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	})
}

// TCPEcho serves raw TCP on a port of 127.0.0.1, which it returns, for
// the length of the test: it answers the first line of each connection
// with "echo: " and the line, and closes it.
func TCPEcho(t testing.TB) int {
	t.Helper()
	ln := Listen(t, "tcp", "127.0.0.1:0")
	Serve(t, ln, func(c net.Conn) {
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Fprintf(c, "echo: %s", line)
	})
	return ln.Addr().(*net.TCPAddr).Port
}

// StartNamed starts sleep for secs under the name argv0 (its
// /proc/PID/cmdline is argv0, NUL, secs), as `exec -a argv0 sleep secs`
// would: a stand-in for a process found by its command line, such as a
// VM's QEMU. It returns once the name is in place (or the process has
// ended). Unless the test reaps it first, it is killed and reaped when
// the test ends.
func StartNamed(t testing.TB, argv0, secs string) *exec.Cmd {
	t.Helper()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	cmd := &exec.Cmd{Path: sleep, Args: []string{argv0, secs}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	t.Cleanup(func() {
		once.Do(func() {
			cmd.Process.Kill()
			cmd.Wait()
		})
	})
	// Start returns before the new program's command line is in place.
	WaitFor(t, 10*time.Second, "the process's command line", func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", cmd.Process.Pid))
		return err != nil || bytes.HasPrefix(b, []byte(argv0+"\x00")) || ProcState(cmd.Process.Pid) == "Z"
	})
	return cmd
}

// ProcState is the state letter of pid in /proc/PID/stat: "Z" for a
// zombie, "" when it is gone.
func ProcState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return ""
	}
	return string(b[i+2])
}

// Procs are the processes for which match says yes, given each one's
// command line and environment (NUL-separated, as /proc has them) and
// the base name of its executable. Processes that end meanwhile, or
// that this user cannot read, are left out.
func Procs(match func(cmdline, environ []byte, exe string) bool) (pids []int) {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range dirs {
		cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
		if err != nil {
			continue
		}
		environ, _ := os.ReadFile(filepath.Join(dir, "environ"))
		exe, _ := os.Readlink(filepath.Join(dir, "exe"))
		if match(cmdline, environ, filepath.Base(exe)) {
			pid, _ := strconv.Atoi(filepath.Base(dir))
			pids = append(pids, pid)
		}
	}
	return pids
}

// Children are the processes whose parent is pid.
func Children(pid int) (kids []int) {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, _ := os.ReadFile(p)
		// pid (comm) state ppid ...: comm may hold spaces and ')'.
		if i := bytes.LastIndexByte(b, ')'); i > 0 {
			if f := strings.Fields(string(b[i+1:])); len(f) > 1 && f[1] == strconv.Itoa(pid) {
				kid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
				kids = append(kids, kid)
			}
		}
	}
	return kids
}
