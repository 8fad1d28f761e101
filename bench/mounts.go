package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/mounts/fsbench"
)

func init() {
	sections = append(sections, section{"mounts: the project inside the VM", benchMounts})
}

// benchMounts runs the same file workload through a host mount in a VM,
// in the guest's tmpfs, and on the host directly.
func benchMounts(e *env) []row {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	opts := fsbench.Options{}
	hostDir, err := os.MkdirTemp("", "gdfs")
	check("host dir", err)
	defer os.RemoveAll(hostDir)
	inGuest := func(dir string, extra ...string) fsbench.Result {
		args := append([]string{"exec", "--memory", "512M"}, extra...)
		for _, kv := range opts.Env() {
			args = append(args, "--env", kv)
		}
		args = append(append(args, "--"), fsbench.Argv(dir)...)
		cmd := exec.CommandContext(ctx, e.bin, args...)
		cmd.Env = append(os.Environ(), layout.EnvHome+"="+string(e.home))
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		check("guest fsbench: "+errb.String(), cmd.Run())
		r, err := fsbench.Parse(out.String())
		check("parse fsbench", err)
		return r
	}
	mount := inGuest("/workspace", "--mount-hostfs", hostDir+":/workspace")
	tmpfs := inGuest("/tmp/fsbench")
	host, err := fsbench.Run(ctx, hostDir, opts)
	check("host fsbench", err)
	line := func(what string, get func(fsbench.Result) string) row {
		return row{what, get(mount), fmt.Sprintf("tmpfs %s, host %s", get(tmpfs), get(host)), "-"}
	}
	return []row{
		line("sequential write through the mount", func(r fsbench.Result) string { return fmt.Sprintf("%.1f MB/s", r.SeqWriteMBps) }),
		line("sequential read through the mount", func(r fsbench.Result) string { return fmt.Sprintf("%.1f MB/s", r.SeqReadMBps) }),
		line("small files create+stat+delete", func(r fsbench.Result) string { return fmt.Sprintf("%.0f ops/s", r.SmallOpsPerS) }),
		line(fmt.Sprintf("find over %d files (cold)", mount.FindFiles), func(r fsbench.Result) string { return ms(r.FindCold) }),
	}
}
