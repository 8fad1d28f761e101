// Command bench measures gondolin and prints one table per capability,
// each figure next to the raw limit measured in the same run (a bare QEMU
// boot of the same kernel, the same work done without gondolin).
//
//	go run ./bench [-runs 10] [-gondolin bin/gondolin]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testenv"
)

var (
	runs        = flag.Int("runs", 10, "runs per timed figure")
	gondolinBin = flag.String("gondolin", "bin/gondolin", "gondolin binary to measure")
	only        = flag.String("only", "", "run only the sections whose name contains this")
)

// section is one capability's measurements.
type section struct {
	name string
	run  func(env *env) []row
}

var sections = []section{
	{"foundation: boot and exec", benchFoundation},
	{"warm pool: exec and bash from paused VMs", benchPool},
}

// env is what every section shares: a private home with the default
// image linked in.
type env struct {
	home layout.Home
	bin  string
	// Figures more than one section shows or compares to, measured once
	// (by foundation, or on first use when it did not run): a raw QEMU
	// boot to the agent, exec --cold, and an exec round trip in a booted
	// VM.
	rawBoot, coldExec, roundTrip durations
}

func main() {
	flag.Parse()
	bin, err := filepath.Abs(*gondolinBin)
	if err != nil {
		fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		fatal(fmt.Errorf("%s not found: run make first", bin))
	}
	src, err := layout.DefaultHome()
	if err != nil {
		fatal(err)
	}
	// Which exec path is measured is the bench's choice, figure by
	// figure, not the caller's shell's.
	os.Unsetenv(layout.EnvNoSupervisor)
	dir, err := os.MkdirTemp("", "gdbench")
	if err != nil {
		fatal(err)
	}
	e := &env{home: layout.Home(dir), bin: bin}
	// The execs start a supervisor in the temp home, and it and its VMs
	// outlive the commands that started them: they are stopped before the
	// home is removed, on every way out (fatal and signals included).
	atExit(func() {
		e.shutdown()
		os.RemoveAll(dir)
	})
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		fatal(fmt.Errorf("%v", s))
	}()
	if err := testenv.LinkImages(src, e.home); err != nil {
		fatal(fmt.Errorf("link images from %s (run make image): %w", src, err))
	}
	fmt.Printf("gondolin bench, %s, %d runs per figure, %s\n\n", time.Now().Format("2006-01-02 15:04"), *runs, hostInfo())
	for _, s := range sections {
		if *only != "" && !strings.Contains(s.name, *only) {
			continue
		}
		fmt.Printf("## %s\n\n", s.name)
		start, waited := time.Now(), poolWaits
		rows := s.run(e)
		// Each section starts without a supervisor: none inherits
		// another's sessions, pool shapes or background work.
		e.shutdown()
		// Where the run's time goes, apart from the figures.
		fmt.Fprintf(os.Stderr, "bench: %s took %s, %s of it waiting for the warm pool to fill\n",
			s.name, time.Since(start).Round(time.Second), (poolWaits - waited).Round(time.Second))
		printTable(rows)
		fmt.Println()
	}
	runCleanups()
}

var (
	cleanupMu sync.Mutex
	cleanups  []func()
)

// atExit adds f to what runs before the bench exits, fatal included
// (os.Exit skips deferred calls).
func atExit(f func()) {
	cleanupMu.Lock()
	defer cleanupMu.Unlock()
	cleanups = append(cleanups, f)
}

// runCleanups runs the atExit functions once, newest first. A fatal
// from another goroutine meanwhile waits for them, then exits.
func runCleanups() {
	cleanupMu.Lock()
	defer cleanupMu.Unlock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	cleanups = nil
}

var fatalOnce sync.Once

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "bench: %v\n", err)
	// Only the first fatal cleans up; another goroutine's (a failed check
	// while cleaning up included) just exits once that is done.
	fatalOnce.Do(runCleanups)
	cleanupMu.Lock()
	os.Exit(1)
}

// shutdown stops the home's supervisor and every VM it holds, as a user
// would (gondolin supervisor stop --all), waits for it to exit, then
// kills whatever process of this home is still running. It never calls
// fatal: it runs from fatal.
func (e *env) shutdown() {
	pid := 0
	if b, err := os.ReadFile(e.home.SupervisorLock()); err == nil {
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, "supervisor", "stop", "--all")
	cmd.Env = e.environ()
	// Its error is expected when no supervisor runs; one that did not
	// stop is killed below.
	cmd.Run()
	// The stop is answered before the supervisor has killed its pool.
	for deadline := time.Now().Add(30 * time.Second); pid > 0 && isHomeProcess(e.home, pid) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	left := homeProcesses(e.home)
	for _, p := range left {
		fmt.Fprintf(os.Stderr, "bench: killing leftover process %d of %s: %s\n", p.pid, e.home, p.cmdline)
		syscall.Kill(p.pid, syscall.SIGKILL)
	}
	for deadline := time.Now().Add(5 * time.Second); len(left) > 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		left = homeProcesses(e.home)
	}
}

// environ is the bench's environment with GONDOLIN_HOME set to e's home.
func (e *env) environ(extra ...string) []string {
	return append(append(os.Environ(), layout.EnvHome+"="+string(e.home)), extra...)
}

type proc struct {
	pid     int
	cmdline string
}

// homeProcesses lists the processes other than this one that belong to
// home: those whose command line names a path in it (QEMU) or whose
// environment sets GONDOLIN_HOME to it (a supervisor, a gondolin
// command).
func homeProcesses(home layout.Home) []proc {
	entries, _ := os.ReadDir("/proc")
	var out []proc
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == os.Getpid() || !isHomeProcess(home, pid) {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		out = append(out, proc{pid, strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))})
	}
	return out
}

func isHomeProcess(home layout.Home, pid int) bool {
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	if st, err := os.ReadFile(filepath.Join(dir, "stat")); err != nil || zombie(string(st)) {
		return false
	}
	cmdline, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
	if strings.Contains(string(cmdline), string(home)+"/") {
		return true
	}
	environ, _ := os.ReadFile(filepath.Join(dir, "environ"))
	for _, kv := range strings.Split(string(environ), "\x00") {
		if kv == layout.EnvHome+"="+string(home) {
			return true
		}
	}
	return false
}

// zombie reads the state field of /proc/PID/stat (after the command
// name, which may hold spaces and parentheses).
func zombie(stat string) bool {
	i := strings.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}

func hostInfo() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	model := ""
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "model name") {
			_, model, _ = strings.Cut(line, ":")
			break
		}
	}
	return strings.TrimSpace(model)
}

// row is one line of a table: a figure, and the limit it is compared to.
type row struct {
	what  string
	value string
	limit string
	ratio string
}

func printTable(rows []row) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "measure\tgondolin\traw limit\tratio")
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.what, r.value, r.limit, r.ratio)
	}
	w.Flush()
}

// durations summarises timings.
type durations []time.Duration

func (d durations) pct(p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append(durations(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p*float64(len(s))+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

func (d durations) String() string {
	return fmt.Sprintf("p50 %s  p90 %s", ms(d.pct(0.5)), ms(d.pct(0.9)))
}

func ms(d time.Duration) string {
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%dms", d.Milliseconds())
}

func ratio(a, b time.Duration) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", float64(a)/float64(b))
}

func timeN(n int, f func() error) (durations, error) {
	var d durations
	for range n {
		start := time.Now()
		if err := f(); err != nil {
			return d, err
		}
		d = append(d, time.Since(start))
	}
	return d, nil
}
