package sessions

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/rlimit"
	"github.com/gondolin/gondolin/internal/termsafe"
	"github.com/gondolin/gondolin/mounts"
	"github.com/gondolin/gondolin/vm"
)

// ErrSupervisorRunning means another supervisor holds the home's lock.
var ErrSupervisorRunning = errors.New("a supervisor is already running")

// RunSupervisor runs the supervisor for home in this process until it is
// told to stop (API or SIGTERM/SIGINT). VMs keep running after it exits.
func RunSupervisor(home layout.Home, logger *log.Logger, pool PoolOptions) error {
	if err := layout.MkdirPrivate(string(home)); err != nil {
		return err
	}
	lock, err := os.OpenFile(home.SupervisorLock(), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(home.SupervisorLock())
		return fmt.Errorf("%w (pid %s)", ErrSupervisorRunning, strings.TrimSpace(string(b)))
	}
	lock.Truncate(0)
	lock.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)

	rt, err := NewRuntime(home)
	if err != nil {
		return err
	}
	sockPath := home.SupervisorSocket()
	os.Remove(sockPath) // a dead supervisor's; we hold the lock
	ln, err := net.Listen("unix", sockPath)
	if err != nil {
		return err
	}
	defer os.Remove(sockPath)
	if err := os.Chmod(sockPath, 0o600); err != nil {
		ln.Close()
		return err
	}

	sv := NewSupervisor(rt, logger)
	logger.Printf("supervisor %d starting for %s", os.Getpid(), home)
	// Every VM's mount server may hold up to mounts.MaxHandles files:
	// take all the descriptors the system allows this process.
	if limit, err := rlimit.RaiseNOFILE(); err != nil {
		logger.Printf("raise the open-file limit: %v", err)
	} else {
		logger.Printf("open-file limit %d (%d VMs' worth of mount handles)", limit, limit/mounts.MaxHandles)
	}
	rt.Snapshots.SweepScratch() // a dead supervisor's unfinished snapshots
	rt.Pool = NewPool(rt, pool, logger)
	rt.Pool.Sweep() // a dead supervisor's pool, before its sessions are adopted
	sv.Adopt(context.Background())
	logger.Printf("warm pool: %d VMs per shape, at most %d MiB", pool.Size, pool.MemoryMiB)
	rt.Pool.Start()
	api := NewAPI(sv)
	srv := &http.Server{Handler: api, ReadHeaderTimeout: 10 * time.Second}
	stop, shutDown := make(chan struct{}, 1), make(chan struct{})
	api.OnStop = func(bool) { stop <- struct{}{} }
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	go func() {
		select {
		case <-stop:
		case s := <-sigs:
			logger.Printf("supervisor: %v", s)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		srv.Close()
		close(shutDown)
	}()
	logger.Printf("supervisor %d serving on %s", os.Getpid(), sockPath)
	err = srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		// Serve returns as soon as the listener closes: the answers in
		// flight (the one to "stop" included) are written by Shutdown,
		// which this process must not exit before.
		<-shutDown
	}
	sv.Close()
	rt.Pool.Close()
	logger.Printf("supervisor %d exiting; VMs keep running", os.Getpid())
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// WaitStopped waits until no supervisor holds home's lock (one that was
// told to stop has killed its pool and exited), at most until ctx ends:
// a supervisor started right after must not find the lock still held.
func WaitStopped(ctx context.Context, home layout.Home) error {
	for {
		lock, err := os.Open(home.SupervisorLock())
		if err != nil {
			return nil // none ever ran
		}
		free := syscall.Flock(int(lock.Fd()), syscall.LOCK_SH|syscall.LOCK_NB) == nil
		lock.Close()
		if free {
			return nil
		}
		select {
		case <-ctx.Done():
			return errorf(errdefs.ErrUnavailable, "the supervisor did not exit: see %s", home.SupervisorLog())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ConnectOptions says how to reach the supervisor.
type ConnectOptions struct {
	// Start starts a supervisor when none answers.
	Start bool
	// Executable is the gondolin binary to start it with (default: this
	// process's own executable).
	Executable string
}

// Connect returns a client of home's supervisor, starting one (detached:
// its own session, stdin from /dev/null, output to supervisor.log) if
// none answers and opts.Start is set.
func Connect(ctx context.Context, home layout.Home, opts ConnectOptions) (*Client, error) {
	c, _, err := ConnectInfo(ctx, home, opts)
	return c, err
}

// ConnectInfo is Connect, with what the supervisor's ping said.
func ConnectInfo(ctx context.Context, home layout.Home, opts ConnectOptions) (*Client, PingInfo, error) {
	c := NewClient(home)
	if info, err := c.Ping(ctx); err == nil {
		return c, info, nil
	} else if !opts.Start {
		return nil, PingInfo{}, errorf(errdefs.ErrUnavailable, "no supervisor is running for %s (%v)", home, err)
	}
	exited, err := startSupervisor(home, opts.Executable)
	if err != nil {
		return nil, PingInfo{}, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if info, err := c.Ping(ctx); err == nil {
			return c, info, nil
		}
		select {
		case <-exited:
			// It gave up at once (or another one won the race to the
			// lock, which then answers).
			if info, err := c.Ping(ctx); err == nil {
				return c, info, nil
			}
			return nil, PingInfo{}, errorf(errdefs.ErrUnavailable, "the supervisor did not start%s", logTail(home))
		default:
		}
		if time.Now().After(deadline) {
			return nil, PingInfo{}, errorf(errdefs.ErrUnavailable, "the supervisor did not start: see %s", home.SupervisorLog())
		}
		select {
		case <-ctx.Done():
			return nil, PingInfo{}, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// logTail is ": " and the last line of the supervisor's log, made safe to
// print, or "" when there is none.
func logTail(home layout.Home) string {
	b, err := os.ReadFile(home.SupervisorLog())
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b[max(0, len(b)-4096):])), "\n")
	if last := termsafe.String(lines[len(lines)-1]); last != "" {
		return ": " + last
	}
	return ""
}

// OwnPingInfo is what this process would answer.
func OwnPingInfo() PingInfo {
	ns, _ := os.Readlink("/proc/self/ns/net")
	return PingInfo{NetNS: ns, Accel: os.Getenv(layout.EnvAccel), Instance: instance()}
}

// instance is this process's PingInfo.Instance, made when first asked
// (by a supervisor: no other command pays for it).
var instance = sync.OnceValue(rand.Text)

// startSupervisor starts a supervisor; exited is closed if it exits.
func startSupervisor(home layout.Home, executable string) (exited <-chan struct{}, err error) {
	// A bad setting would stop the supervisor at once: say so here.
	if _, err := PoolOptionsFromEnv(); err != nil {
		return nil, err
	}
	if _, _, err := vm.ParseAccel(os.Getenv(layout.EnvAccel)); err != nil {
		return nil, invalidf("%v", err)
	}
	if executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		executable = exe
	}
	if err := layout.MkdirPrivate(string(home)); err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(home.SupervisorLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(executable, "supervisor")
	// The supervisor outlives the command that starts it: it gets only
	// what it needs of that command's environment (no tokens).
	cmd.Env = layout.ServiceEnv(os.Environ(), layout.EnvHome+"="+string(home))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start supervisor: %w", err)
	}
	// Reap it if it exits early (another one won the race, or it could
	// not start); otherwise it is reparented when we exit.
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	return done, nil
}
