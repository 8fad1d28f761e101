package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/mounts/fsbench"
)

func init() {
	sections = append(sections, section{"mounts: the project inside the VM", benchMounts})
}

// noPool turns the supervisor's warm pool off for the section's execs
// (the first starts the supervisor): a refill after a claim would
// compete with the measured VM for the host's CPUs.
var noPool = layout.EnvPool + "=0"

const (
	coldMB    = 64     // the host-written file of the first read
	repoFiles = 10_000 // the git repository's files
)

// benchMounts runs the same file workload (fsbench) through a host mount
// and in the same VM's tmpfs (the limit; and on the host directly, for
// context), in a VM of an image with git; then measures the fs port
// bare, and how soon host-side changes show in a guest. Every row names
// its target. The fsbench figures are one pass each (a pass through the
// mount takes minutes under TCG); -runs does not repeat them.
func benchMounts(e *env) []row {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	image := ensureGitImage(ctx, e)
	hostDir, err := os.MkdirTemp("", "gdfs")
	check("host dir", err)
	defer os.RemoveAll(hostDir)
	atExit(func() { os.RemoveAll(hostDir) }) // fatal skips defers
	// The first read's file, written here: no guest has it cached.
	check("cold file", writeColdFile(filepath.Join(hostDir, fsbench.ColdFile), coldMB<<20))
	repo := filepath.Join(hostDir, "repo")
	const guestDir, tmpfsDir = "/workspace", "/tmp/fsbench"
	guestRepo := guestDir + "/repo"
	guest := func(argv []string, env ...string) string {
		args := []string{"exec", "--image", image, "--memory", "512M", "--mount-hostfs", hostDir + ":" + guestDir}
		for _, kv := range env {
			args = append(args, "--env", kv)
		}
		cmd := exec.CommandContext(ctx, e.bin, append(append(args, "--"), argv...)...)
		cmd.Env = e.environ(noPool)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		check("guest exec: "+errb.String(), cmd.Run())
		return out.String()
	}
	if _, err := exec.LookPath("git"); err == nil {
		check("host repository", fsbench.MakeRepo(ctx, repo, repoFiles))
	} else {
		// No git here: the guest makes it, through the mount.
		guest([]string{"sh", "-c", fsbench.RepoScript, "fsbench-repo", guestRepo}, fmt.Sprintf("FSBENCH_FILES=%d", repoFiles))
	}
	// One VM: the mount first (its first read and first git status are
	// the guest's first sight of those files), then its tmpfs, with a
	// copy of the repository.
	out := guest(fsbench.ArgvDirs(guestDir, tmpfsDir), fsbench.Options{Git: guestRepo}.Env()...)
	res, err := fsbench.ParseDirs(out)
	check("parse fsbench", err)
	mount, tmpfs := res[guestDir], res[tmpfsDir]
	host, err := fsbench.Run(ctx, hostDir, fsbench.Options{Git: repo})
	check("host fsbench", err)
	changes := measureChangeLatency(ctx, e, 10)
	// What the mount's bytes and requests travel through, bare.
	transport := measureTransport(e)

	// Throughputs: the ratio is mount/tmpfs (higher is better); times:
	// mount/tmpfs time (lower is better). Each label holds its target.
	mbps := func(what string, f func(fsbench.Result) float64) row {
		return row{what, fmt.Sprintf("%.1f MB/s", f(mount)), fmt.Sprintf("tmpfs %.1f MB/s, host %.1f MB/s", f(tmpfs), f(host)), fratio(f(mount), f(tmpfs))}
	}
	ops := func(what string, f func(fsbench.Result) float64) row {
		return row{what, fmt.Sprintf("%.0f ops/s", f(mount)), fmt.Sprintf("tmpfs %.0f ops/s, host %.0f ops/s", f(tmpfs), f(host)), fratio(f(mount), f(tmpfs))}
	}
	took := func(what string, f func(fsbench.Result) time.Duration) row {
		return row{what, ms(f(mount)), fmt.Sprintf("tmpfs %s, host %s", ms(f(tmpfs)), ms(f(host))), ratio(f(mount), f(tmpfs))}
	}
	rows := []row{
		mbps(fmt.Sprintf("first read, %d MB file the host wrote (≥0.5x)", coldMB), func(r fsbench.Result) float64 { return r.ReadFirstMBps }),
		mbps("re-read, same file, new open (≥0.9x)", func(r fsbench.Result) float64 { return r.ReadAgainMBps }),
		mbps("sequential write, dd bs=1M conv=fsync (≥0.5x)", func(r fsbench.Result) float64 { return r.SeqWriteMBps }),
		mbps("  read back what the guest wrote (no target)", func(r fsbench.Result) float64 { return r.SeqReadMBps }),
		{"  the fs port bare, 64 MB each way (context)", fmt.Sprintf("host→guest %.1f MB/s, guest→host %.1f MB/s", transport.toGuestMBs, transport.toHostMBs), "-", "-"},
		ops("1,000 files create+delete (≥0.2x)", func(r fsbench.Result) float64 { return r.CreateDelPerS }),
		ops("  create+stat+delete (no target)", func(r fsbench.Result) float64 { return r.SmallOpsPerS }),
		took(fmt.Sprintf("find over %d files, cold (≤3x)", mount.FindFiles), func(r fsbench.Result) time.Duration { return r.FindCold }),
		took(fmt.Sprintf("find over %d files, warm (≤3x)", mount.FindFiles), func(r fsbench.Result) time.Duration { return r.FindWarm }),
		took(fmt.Sprintf("git status, %d-file repo, first (≤3x)", mount.GitFiles), func(r fsbench.Result) time.Duration { return r.GitStatusFirst }),
		took(fmt.Sprintf("git status, %d-file repo, second (≤3x)", mount.GitFiles), func(r fsbench.Result) time.Duration { return r.GitStatusSecond }),
	}
	for _, c := range changes {
		rows = append(rows, c.row(transport.roundTrip))
	}
	return rows
}

// fratio is a/b as ratio prints it, for throughputs.
func fratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

// writeColdFile writes size bytes (not all zeros) to path and syncs it.
func writeColdFile(path string, size int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for written := 0; written < size; written += len(buf) {
		if _, err := f.Write(buf[:min(len(buf), size-written)]); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
