// Package fsbench measures a directory's filesystem the way a build uses
// it: sequential write and read, small-file create+stat+delete, and find
// over 10,000 files. The measurement is a POSIX shell script, so the same
// steps run in a guest (busybox sh, through a mount or on tmpfs) and on
// the host; Run executes it here, Parse reads its output from anywhere.
package fsbench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Script measures the directory given as its first argument, in a
// scratch subdirectory it removes afterwards. Run it as
//
//	sh -c "$Script" fsbench DIR
//
// It needs dd, find, ls, mkdir, rm, sed, seq, sleep, touch and wc
// (busybox has them). Its clock is date +%s%N where date knows %N, else
// /proc/uptime (10 ms steps: the default sizes keep guest steps well
// above that). Sizes come from the environment: FSBENCH_MB (sequential
// file, default 64: it must fit a small guest's tmpfs), FSBENCH_SMALL (small files, default 2000),
// FSBENCH_FILES (files for find, default 10000, in directories of 100).
// It prints one line per measurement:
//
//	fsbench NAME COUNT MICROSECONDS
//
// seq_write and seq_read count bytes; small_ops counts operations (three
// per file); find_cold and find_warm count files found. The write
// includes an fsync. The read opens the file afresh: a FUSE mount then
// fetches it from its host, a local filesystem from its page cache.
// find_cold runs after the guest's attribute cache (1 s) has expired,
// find_warm right after it.
const Script = `set -e
if d=$(date +%s%N 2>/dev/null) && [ "${d%N}" = "$d" ]; then
	now() { d=$(date +%s%N); echo $((d / 1000)); }
else
	now() { read up rest < /proc/uptime; s=${up%.*}; c=${up#*.}; echo $((s * 1000000 + ${c#0} * 10000)); }
fi
mb=${FSBENCH_MB:-64}
small=${FSBENCH_SMALL:-2000}
files=${FSBENCH_FILES:-10000}
top=$1/fsbench.$$
mkdir -p "$top"
trap 'cd /; rm -rf "$top"' EXIT
cd "$top"

t0=$(now)
dd if=/dev/zero of=seq bs=1048576 count=$mb conv=fsync
t1=$(now)
echo "fsbench seq_write $((mb * 1048576)) $((t1 - t0))"
t0=$(now)
dd if=seq of=/dev/null bs=1048576
t1=$(now)
echo "fsbench seq_read $((mb * 1048576)) $((t1 - t0))"
rm -f seq

mkdir small
cd small
names=$(seq 1 $small | sed 's/^/f/')
t0=$(now)
touch $names
ls -l >/dev/null
rm -f $names
t1=$(now)
echo "fsbench small_ops $((small * 3)) $((t1 - t0))"
cd ..

mkdir tree
dirs=$(((files + 99) / 100))
per=$(seq 1 100 | sed 's/^/f/')
i=0
while [ $i -lt $dirs ]; do
	mkdir tree/d$i
	(cd tree/d$i && touch $per)
	i=$((i + 1))
done
sleep 2
t0=$(now)
n=$(find tree -type f | wc -l)
t1=$(now)
echo "fsbench find_cold $n $((t1 - t0))"
t0=$(now)
n=$(find tree -type f | wc -l)
t1=$(now)
echo "fsbench find_warm $n $((t1 - t0))"
`

// Result is one run of Script.
type Result struct {
	SeqWriteMBps float64 // MB = 10^6 bytes
	SeqReadMBps  float64
	SmallOpsPerS float64 // create, stat and delete each count as one
	FindCold     time.Duration
	FindWarm     time.Duration
	FindFiles    int
}

func (r Result) String() string {
	return fmt.Sprintf("write %.0f MB/s, read %.0f MB/s, small files %.0f ops/s, find %d files %v (cold) %v (warm)",
		r.SeqWriteMBps, r.SeqReadMBps, r.SmallOpsPerS, r.FindFiles, r.FindCold, r.FindWarm)
}

// Parse reads Script's output.
func Parse(out string) (Result, error) {
	var r Result
	seen := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 4 || f[0] != "fsbench" {
			continue
		}
		count, err1 := strconv.ParseInt(f[2], 10, 64)
		us, err2 := strconv.ParseInt(f[3], 10, 64)
		if err1 != nil || err2 != nil || count < 0 || us < 0 {
			return r, fmt.Errorf("fsbench: bad line %q", sc.Text())
		}
		us = max(us, 1) // a step under the clock's resolution
		secs := float64(us) / 1e6
		d := time.Duration(us) * time.Microsecond
		switch f[1] {
		case "seq_write":
			r.SeqWriteMBps = float64(count) / 1e6 / secs
		case "seq_read":
			r.SeqReadMBps = float64(count) / 1e6 / secs
		case "small_ops":
			r.SmallOpsPerS = float64(count) / secs
		case "find_cold":
			r.FindCold, r.FindFiles = d, int(count)
		case "find_warm":
			r.FindWarm = d
		default:
			continue
		}
		seen[f[1]] = true
	}
	if len(seen) != 5 {
		return r, fmt.Errorf("fsbench: incomplete output (%d of 5 measurements):\n%s", len(seen), out)
	}
	return r, nil
}

// Options size a Run; zero fields take Script's defaults.
type Options struct {
	MB, SmallFiles, Files int
}

func (o Options) env() []string {
	var env []string
	if o.MB > 0 {
		env = append(env, fmt.Sprintf("FSBENCH_MB=%d", o.MB))
	}
	if o.SmallFiles > 0 {
		env = append(env, fmt.Sprintf("FSBENCH_SMALL=%d", o.SmallFiles))
	}
	if o.Files > 0 {
		env = append(env, fmt.Sprintf("FSBENCH_FILES=%d", o.Files))
	}
	return env
}

// Env returns o as environment assignments for Script, for running it
// elsewhere (in a guest).
func (o Options) Env() []string { return o.env() }

// Argv is the command that runs Script on dir, for a guest's exec (with
// Options.Env added to its environment).
func Argv(dir string) []string { return []string{"sh", "-c", Script, "fsbench", dir} }

// Run measures dir on this machine with /bin/sh.
func Run(ctx context.Context, dir string, o Options) (Result, error) {
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", Script, "fsbench", dir)
	cmd.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}, o.env()...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return Result{}, fmt.Errorf("fsbench in %s: %v:\n%s", dir, err, out)
		}
		return Result{}, err
	}
	return Parse(string(out))
}
