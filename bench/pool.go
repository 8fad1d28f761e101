package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/gondolin/gondolin/sessions"
	"github.com/gondolin/gondolin/vm"
)

// burst is how many execs the burst figure starts at once: more than the
// pool holds, so that it shows what the claims that miss cost.
const burst = 10

// benchPool measures what the warm pool gives exec and bash: each figure
// is taken with the pool full (the claim latency, not the refill), next
// to a raw QEMU boot and to the floor of any exec through the supervisor
// (a command's round trip in a VM already running, plus the CLI's own
// start-up).
func benchPool(e *env) []row {
	raw := e.rawBootFigure(benchConfig(e, ""))
	rt := e.roundTripFigure()
	bootP50 := raw.pct(0.5)

	st := waitPoolReady(e)
	// The CLI's own cost: process start, connect, one API round trip.
	cli, err := timeN(max(*runs, 20), func() error {
		_, err := gondolinCommand(e, "supervisor", "status", "--json")
		return err
	})
	check("supervisor status", err)
	floor := rt.pct(0.5) + cli.pct(0.5)

	// exec -- true, each run claiming from a full pool.
	before := st.Pool
	var warm durations
	for range *runs {
		waitPoolReady(e)
		start := time.Now()
		check("exec (warm pool)", gondolinExec(e, "--", "true"))
		warm = append(warm, time.Since(start))
	}
	st = waitPoolReady(e)
	seqMisses := st.Pool.Misses - before.Misses

	// bash --detach to a prompt, each from a full pool; every session is
	// removed untimed so that memory does not pile up over the runs.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	client := sessions.NewClient(e.home)
	var bash durations
	for range *runs {
		waitPoolReady(e)
		start := time.Now()
		out, err := gondolinCommand(e, "bash", "--detach", "--", "sh", "-c", "PS1='ready> ' exec sh -i")
		check("bash --detach", err)
		id := strings.TrimSpace(out)
		waitOutput(ctx, client, id, "ready>")
		bash = append(bash, time.Since(start))
		_, err = gondolinCommand(e, "rm", "-f", id)
		check("rm -f "+id, err)
	}

	// A burst of execs started together: the pool serves the first
	// claims, the others boot from the template.
	before = waitPoolReady(e).Pool
	burstD, burstErr := execBurst(e, burst)
	check("burst", burstErr)
	st = waitPoolReady(e)
	burstMisses := st.Pool.Misses - before.Misses

	// Memory with the pool full and idle (its VMs paused).
	time.Sleep(time.Second)
	st = waitPoolReady(e)
	shape := defaultShape(st.Pool)
	perVM := int64(0)
	if shape.Ready > 0 {
		perVM = shape.RSSBytes / int64(shape.Ready)
	}

	return []row{
		{"CLI start-up: supervisor status --json", cli.String(), "-", "-"},
		{fmt.Sprintf("exec -- true, warm pool (%d misses)", seqMisses), warm.String(), "boot " + ms(bootP50), target(warm.pct(0.5), bootP50, 0.10)},
		{"  vs booted-VM round trip + CLI start-up", ms(warm.pct(0.5)), fmt.Sprintf("%s + %s = %s", ms(rt.pct(0.5)), ms(cli.pct(0.5)), ms(floor)), target(warm.pct(0.5), floor, 1.5)},
		{"bash --detach to a prompt, warm pool", bash.String(), "boot " + ms(bootP50), target(bash.pct(0.5), bootP50, 0.15)},
		{fmt.Sprintf("%d execs at once, pool of %d (%d misses)", burst, st.Pool.Size, burstMisses), burstD.String(), "boot " + ms(bootP50), ratio(burstD.pct(0.5), bootP50)},
		{"supervisor RSS, pool full and idle", mib(st.RSSBytes), "-", "-"},
		{fmt.Sprintf("pool RSS, %d paused VMs", poolVMs(st.Pool)), mib(st.Pool.RSSBytes), fmt.Sprintf("guest memory %d MiB", st.Pool.ReservedMiB), fmt.Sprintf("%.2fx", float64(st.Pool.RSSBytes)/float64(int64(st.Pool.ReservedMiB)<<20))},
		{"  per pool VM (default shape)", mib(perVM), fmt.Sprintf("guest memory %d MiB", shape.MemoryMiB), fmt.Sprintf("%.2fx", float64(perVM)/float64(int64(shape.MemoryMiB)<<20))},
		{fmt.Sprintf("live sessions RSS, %d live", st.Live), mib(st.SessionsRSSBytes), "-", "-"},
	}
}

// target is ratio(a, b) with the target it should meet.
func target(a, b time.Duration, want float64) string {
	return fmt.Sprintf("%s (target <= %.2fx)", ratio(a, b), want)
}

func mib(b int64) string {
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

func poolVMs(p sessions.PoolStatus) int {
	n := 0
	for _, sh := range p.Shapes {
		n += sh.Ready
	}
	return n
}

// gondolinCommand runs the CLI in e's home and returns its stdout.
func gondolinCommand(e *env, args ...string) (string, error) {
	cmd := exec.Command(e.bin, args...)
	cmd.Env = e.environ()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("gondolin %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// execBurst starts n `exec -- true` at once and times each; every one
// must exit 0.
func execBurst(e *env, n int) (durations, error) {
	cmds := make([]*exec.Cmd, n)
	outs := make([]bytes.Buffer, n)
	for i := range cmds {
		cmds[i] = exec.Command(e.bin, "exec", "--", "true")
		cmds[i].Env = e.environ()
		cmds[i].Stdout, cmds[i].Stderr = &outs[i], &outs[i]
	}
	d := make(durations, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i, cmd := range cmds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			start := time.Now()
			errs[i] = cmd.Run()
			d[i] = time.Since(start)
		}()
	}
	close(gate)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return d, fmt.Errorf("exec %d of %d: %v: %s", i+1, n, err, outs[i].String())
		}
	}
	return d, nil
}

// defaultShape is the pool's part for the default VM shape.
func defaultShape(p sessions.PoolStatus) sessions.PoolShape {
	for _, sh := range p.Shapes {
		if sh.Image == "" && sh.CPUs == vm.DefaultCPUs && sh.MemoryMiB == vm.DefaultMemoryMiB && sh.Network {
			return sh
		}
	}
	return sessions.PoolShape{}
}

// poolWaits is the time spent in waitPoolReady, for the run's time
// account.
var poolWaits time.Duration

// waitPoolReady starts the home's supervisor if none runs and waits,
// polling its status (what `gondolin supervisor status --json` prints)
// every 50 ms for up to a minute, until the default shape's part of the
// pool is full, so that a timed claim that follows measures the claim,
// not a refill. It returns the last status.
func waitPoolReady(e *env) sessions.SupervisorStatus {
	start := time.Now()
	defer func() { poolWaits += time.Since(start) }()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client, err := sessions.Connect(ctx, e.home, sessions.ConnectOptions{Start: true, Executable: e.bin})
	check("start supervisor", err)
	var st sessions.SupervisorStatus
	for {
		st, err = client.Status(ctx)
		if err == nil {
			if st.Pool.Size == 0 {
				fatal(fmt.Errorf("the supervisor of %s has no warm pool (GONDOLIN_POOL=0?)", e.home))
			}
			if sh := defaultShape(st.Pool); sh.Ready >= st.Pool.Size {
				return st
			}
		}
		select {
		case <-ctx.Done():
			fatal(fmt.Errorf("the warm pool never filled in a minute: %+v (last error %v; see %s)", st.Pool, err, e.home.SupervisorLog()))
		case <-time.After(50 * time.Millisecond):
		}
	}
}
