// Package fsbench measures a directory's filesystem the way a build uses
// it: sequential write and read (a first read of a file the machine has
// not read yet, and a re-read), small-file create+delete, find over
// 10,000 files and, when asked, git status in a 10,000-file repository.
// The measurement is a POSIX shell script, so the same steps run in a
// guest (busybox sh, through a mount or on tmpfs) and on the host; Run
// executes it here, Parse reads its output from anywhere.
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

// ColdFile is the name of the file Script reads first when DIR holds it:
// a file another machine wrote (the host, for a mount), so that the
// read fetches every byte. Without it the script writes its own (a
// tmpfs's first read is from memory anyway).
const ColdFile = "fsbench.cold"

// Script measures the directory given as its first argument, in a
// scratch subdirectory it removes afterwards. Run it as
//
//	sh -c "$Script" fsbench DIR
//
// It needs dd, find, ls, mkdir, rm, sed, seq, sleep, touch and wc
// (busybox has them), and cp and git for the git step. Its clock is
// date +%s%N where date knows %N, else the "now at" line of
// /proc/timer_list (root only), else /proc/uptime (10 ms steps). Sizes
// come from the environment: FSBENCH_MB (sequential file, default 64: it
// must fit a small guest's tmpfs), FSBENCH_SMALL (small files, default
// 1000), FSBENCH_FILES (files for find, default 10000, in directories of
// 100). FSBENCH_GIT, an absolute path, names a git repository to time
// git status in: in place when it lies under DIR, else in a copy (cp -a,
// untimed, then an untimed index refresh: the copy's new inode numbers
// and ctimes would otherwise make its first status re-hash every file).
// It prints one line per measurement:
//
//	fsbench NAME COUNT MICROSECONDS
//
// seq_write, seq_read, read_first and read_again count bytes;
// create_delete and small_ops count operations; find_cold and find_warm
// count files found; git_status_first and git_status_second count the
// repository's tracked files.
//
// seq_write is dd bs=1M with conv=fsync; seq_read reads that file back
// (a new open). read_first reads DIR/fsbench.cold (ColdFile) when it
// exists, else a file the script wrote; read_again reads the same file
// again with a new open. create_delete times touch and rm of
// FSBENCH_SMALL files (two operations per file); small_ops adds an ls -l
// of them between the two (three per file). find_cold runs 2 s after
// the tree was made, when a 1 s attribute cache would have expired (a
// mount that keeps its cache longer, told of host changes, serves it
// from cache then), find_warm right after it.
// git_status_first is the first git status there, git_status_second the
// one right after it.
const Script = `set -e
if d=$(date +%s%N 2>/dev/null) && [ "${d%N}" = "$d" ]; then
	now() { d=$(date +%s%N); echo $((d / 1000)); }
elif [ -r /proc/timer_list ] && { read _a; read _a; read _a _b _c _d; } </proc/timer_list && [ "$_a $_b" = "now at" ]; then
	now() { { read _a; read _a; read _a _b _c _d; } </proc/timer_list; echo $((_c / 1000)); }
else
	now() { read up rest < /proc/uptime; s=${up%.*}; c=${up#*.}; echo $((s * 1000000 + ${c#0} * 10000)); }
fi
mb=${FSBENCH_MB:-64}
small=${FSBENCH_SMALL:-1000}
files=${FSBENCH_FILES:-10000}
dir=$1
top=$dir/fsbench.$$
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

if [ -f "$dir/fsbench.cold" ]; then
	cold=$dir/fsbench.cold
else
	cold=$top/cold
	dd if=/dev/zero of="$cold" bs=1048576 count=$mb
fi
set -- $(ls -ln "$cold")
size=$5
t0=$(now)
dd if="$cold" of=/dev/null bs=1048576
t1=$(now)
echo "fsbench read_first $size $((t1 - t0))"
t0=$(now)
dd if="$cold" of=/dev/null bs=1048576
t1=$(now)
echo "fsbench read_again $size $((t1 - t0))"
rm -f "$top/cold"

mkdir small
cd small
names=$(seq 1 $small | sed 's/^/f/')
t0=$(now)
touch $names
t1=$(now)
ls -l >/dev/null
t2=$(now)
rm -f $names
t3=$(now)
echo "fsbench create_delete $((small * 2)) $((t1 - t0 + t3 - t2))"
echo "fsbench small_ops $((small * 3)) $((t3 - t0))"
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

if [ -n "${FSBENCH_GIT:-}" ]; then
	if ! command -v git >/dev/null; then
		echo "fsbench: FSBENCH_GIT is set and there is no git" >&2
		exit 1
	fi
	g() { git -C "$repo" -c safe.directory='*' "$@"; }
	case $FSBENCH_GIT in
	"$dir"/*) repo=$FSBENCH_GIT ;;
	*)
		repo=$top/repo
		cp -a "$FSBENCH_GIT" "$repo"
		g update-index -q --refresh || :
		;;
	esac
	t0=$(now)
	g status >/dev/null
	t1=$(now)
	g status >/dev/null
	t2=$(now)
	n=$(g ls-files | wc -l)
	echo "fsbench git_status_first $n $((t1 - t0))"
	echo "fsbench git_status_second $n $((t2 - t1))"
fi
`

// RepoScript makes a git repository at its first argument (which must
// not exist) with FSBENCH_FILES files (default 10000, a multiple of 100
// is best) in directories of 100, committed once and packed, for
// FSBENCH_GIT. Run it as
//
//	sh -c "$RepoScript" fsbench-repo DIR
const RepoScript = `set -e
files=${FSBENCH_FILES:-10000}
mkdir "$1"
cd "$1"
git -c init.defaultBranch=main init -q .
git config gc.auto 0
dirs=$(((files + 99) / 100))
i=0
while [ $i -lt $dirs ]; do
	mkdir d$i
	j=0
	while [ $j -lt 100 ]; do
		echo "file $j of directory $i" >d$i/f$j
		j=$((j + 1))
	done
	i=$((i + 1))
done
git add -A
git -c user.name=fsbench -c user.email=fsbench@localhost commit -q -m fsbench
git gc -q
`

// Result is one run of Script.
type Result struct {
	SeqWriteMBps  float64 // MB = 10^6 bytes
	SeqReadMBps   float64 // reading back what seq_write wrote
	ReadFirstMBps float64
	ReadAgainMBps float64
	CreateDelPerS float64 // create and delete each count as one
	SmallOpsPerS  float64 // create, stat and delete each count as one
	FindCold      time.Duration
	FindWarm      time.Duration
	FindFiles     int
	// Git is whether the run timed git status (FSBENCH_GIT).
	Git             bool
	GitStatusFirst  time.Duration
	GitStatusSecond time.Duration
	GitFiles        int
}

func (r Result) String() string {
	s := fmt.Sprintf("write %.0f MB/s, read back %.0f MB/s, first read %.0f MB/s, re-read %.0f MB/s, create+delete %.0f ops/s, small files %.0f ops/s, find %d files %v (cold) %v (warm)",
		r.SeqWriteMBps, r.SeqReadMBps, r.ReadFirstMBps, r.ReadAgainMBps, r.CreateDelPerS, r.SmallOpsPerS, r.FindFiles, r.FindCold, r.FindWarm)
	if r.Git {
		s += fmt.Sprintf(", git status of %d files %v (first) %v (second)", r.GitFiles, r.GitStatusFirst, r.GitStatusSecond)
	}
	return s
}

// required are the measurements every run of Script prints; gitNames
// those it prints with FSBENCH_GIT.
var (
	required = []string{"seq_write", "seq_read", "read_first", "read_again", "create_delete", "small_ops", "find_cold", "find_warm"}
	gitNames = []string{"git_status_first", "git_status_second"}
)

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
		mbps := float64(count) / 1e6 / secs
		switch f[1] {
		case "seq_write":
			r.SeqWriteMBps = mbps
		case "seq_read":
			r.SeqReadMBps = mbps
		case "read_first":
			r.ReadFirstMBps = mbps
		case "read_again":
			r.ReadAgainMBps = mbps
		case "create_delete":
			r.CreateDelPerS = float64(count) / secs
		case "small_ops":
			r.SmallOpsPerS = float64(count) / secs
		case "find_cold":
			r.FindCold, r.FindFiles = d, int(count)
		case "find_warm":
			r.FindWarm = d
		case "git_status_first":
			r.GitStatusFirst, r.GitFiles = d, int(count)
		case "git_status_second":
			r.GitStatusSecond = d
		default:
			continue
		}
		seen[f[1]] = true
	}
	var missing []string
	for _, n := range required {
		if !seen[n] {
			missing = append(missing, n)
		}
	}
	if seen[gitNames[0]] || seen[gitNames[1]] {
		r.Git = true
		for _, n := range gitNames {
			if !seen[n] {
				missing = append(missing, n)
			}
		}
	}
	if len(missing) > 0 {
		return r, fmt.Errorf("fsbench: incomplete output (no %s):\n%s", strings.Join(missing, ", "), out)
	}
	return r, nil
}

// Options size a Run; zero fields take Script's defaults.
type Options struct {
	MB, SmallFiles, Files int
	// Git is FSBENCH_GIT: an absolute path to a repository to time git
	// status in ("": none).
	Git string
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
	if o.Git != "" {
		env = append(env, "FSBENCH_GIT="+o.Git)
	}
	return env
}

// Env returns o as environment assignments for Script, for running it
// elsewhere (in a guest).
func (o Options) Env() []string { return o.env() }

// Argv is the command that runs Script on dir, for a guest's exec (with
// Options.Env added to its environment).
func Argv(dir string) []string { return []string{"sh", "-c", Script, "fsbench", dir} }

// ArgvDirs is the command that runs Script on each dir in turn (in one
// guest, so that a mount and the same guest's tmpfs are measured side by
// side), each run's output after a line "fsbench-dir DIR"; ParseDirs
// reads it. It stops at the first run that fails. The dirs must not
// hold white space.
func ArgvDirs(dirs ...string) []string {
	const each = `script=$1
shift
for d; do
	echo "fsbench-dir $d"
	sh -c "$script" fsbench "$d" || exit
done`
	return append([]string{"sh", "-c", each, "fsbench-dirs", Script}, dirs...)
}

// ParseDirs reads ArgvDirs's output: one Result per directory.
func ParseDirs(out string) (map[string]Result, error) {
	parts := map[string]*strings.Builder{}
	var order []string
	var cur *strings.Builder
	for line := range strings.Lines(out) {
		if d, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "fsbench-dir "); ok {
			if parts[d] != nil {
				return nil, fmt.Errorf("fsbench: directory %s measured twice", d)
			}
			cur = &strings.Builder{}
			parts[d] = cur
			order = append(order, d)
			continue
		}
		if cur != nil {
			cur.WriteString(line)
		}
	}
	if len(order) == 0 {
		return nil, fmt.Errorf("fsbench: no fsbench-dir line in:\n%s", out)
	}
	res := map[string]Result{}
	for _, d := range order {
		r, err := Parse(parts[d].String())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", d, err)
		}
		res[d] = r
	}
	return res, nil
}

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

// MakeRepo runs RepoScript on this machine with /bin/sh (git needed).
func MakeRepo(ctx context.Context, dir string, files int) error {
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", RepoScript, "fsbench-repo", dir)
	cmd.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/nonexistent", "GIT_CONFIG_NOSYSTEM=1"}, Options{Files: files}.env()...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("make repository %s: %v:\n%s", dir, err, out)
	}
	return nil
}
