package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// changeTarget is how soon a host-side change must be visible in the
// guest.
const changeTarget = 100 * time.Millisecond

// changeLatency is how long a host-side change of a file takes to show in
// the guest, for one way of changing it.
type changeLatency struct {
	how    string
	seen   durations
	missed int // changes not seen within changeWait
}

const changeWait = 10 * time.Second

// pollLoop runs in the guest: it reads /m/flag over and over (read is a
// shell builtin: no process per poll) and prints each new non-empty
// value; "stop" ends it.
const pollLoop = `last=
while :; do
	v=
	read -r v </m/flag 2>/dev/null || :
	if [ -n "$v" ] && [ "$v" != "$last" ]; then
		echo "seen $v"
		last=$v
		[ "$v" = stop ] && exit 0
	fi
done`

// measureChangeLatency runs pollLoop in a VM with a host directory
// mounted and rewrites the file on the host n times per way (as an
// editor does: a temp file renamed over it; and in place: truncate and
// write), each time once the guest has reported the previous value,
// timing from the host's write to the guest's "seen" line on the exec's
// stdout (so the figure includes the output path back to the host).
func measureChangeLatency(ctx context.Context, e *env, n int) []changeLatency {
	dir, err := os.MkdirTemp("", "gdfs-change")
	check("change dir", err)
	defer os.RemoveAll(dir)
	atExit(func() { os.RemoveAll(dir) }) // fatal skips defers
	flag := filepath.Join(dir, "flag")
	check("flag", os.WriteFile(flag, []byte("0\n"), 0o644))
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, "exec", "--timeout", "4m", "--mount-hostfs", dir+":/m", "--", "sh", "-c", pollLoop)
	cmd.Env = e.environ(noPool)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	stdout, err := cmd.StdoutPipe()
	check("exec stdout", err)
	check("exec poll loop", cmd.Start())
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	// Nothing is left running on any way out: the loop ends on "stop";
	// otherwise the exec is killed (its VM goes with it, and the
	// section's shutdown stops whatever would remain).
	finished := false
	defer func() {
		if !finished {
			cmd.Process.Kill()
			for range lines {
			}
			cmd.Wait()
		}
	}()
	await := func(want string, within time.Duration) (time.Duration, bool) {
		start := time.Now()
		timer := time.NewTimer(within)
		defer timer.Stop()
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					cmd.Wait()
					finished = true
					fatal(fmt.Errorf("poll loop ended before it saw %q: %s", want, errb.String()))
				}
				if l == "seen "+want {
					return time.Since(start), true
				}
			case <-timer.C:
				return within, false
			}
		}
	}
	// The VM's start and the loop's first read.
	if _, ok := await("0", 3*time.Minute); !ok {
		fatal(fmt.Errorf("poll loop: no first value within 3 min: %s", errb.String()))
	}
	writes := []struct {
		how   string
		write func(v string) error
	}{
		{"rename", func(v string) error {
			tmp := flag + ".tmp"
			if err := os.WriteFile(tmp, []byte(v+"\n"), 0o644); err != nil {
				return err
			}
			return os.Rename(tmp, flag)
		}},
		{"in place", func(v string) error { return os.WriteFile(flag, []byte(v+"\n"), 0o644) }},
	}
	var out []changeLatency
	v := 0
	for _, w := range writes {
		c := changeLatency{how: w.how}
		for range n {
			v++
			// Changes at no fixed phase of the guest's caches.
			time.Sleep(time.Duration(20+(v*37)%100) * time.Millisecond)
			want := strconv.Itoa(v)
			start := time.Now()
			check("host write", w.write(want))
			_, ok := await(want, changeWait)
			if !ok {
				c.missed++
			}
			c.seen = append(c.seen, time.Since(start))
		}
		out = append(out, c)
	}
	check("stop poll loop", os.WriteFile(flag, []byte("stop\n"), 0o644))
	if _, ok := await("stop", time.Minute); ok {
		for range lines {
		}
		err := cmd.Wait()
		finished = true
		check("poll loop: "+strings.TrimSpace(errb.String()), err)
	}
	return out
}

// row shows c next to its target, with the exec round trip (the output
// path's share of the figure) for context.
func (c changeLatency) row(roundTrip durations) row {
	value := fmt.Sprintf("p50 %s  max %s", ms(c.seen.pct(0.5)), ms(c.seen.pct(1)))
	if c.missed > 0 {
		value += fmt.Sprintf(" (%d of %d not seen within %s)", c.missed, len(c.seen), changeWait)
	}
	return row{fmt.Sprintf("host change seen in guest, %s (%d changes, max ≤100ms)", c.how, len(c.seen)), value,
		fmt.Sprintf("target %s; exec round trip p50 %s", ms(changeTarget), ms(roundTrip.pct(0.5))), ratio(c.seen.pct(1), changeTarget)}
}
