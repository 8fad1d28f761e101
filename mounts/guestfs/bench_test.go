package guestfs_test

import (
	"context"
	"os"
	"testing"

	"github.com/gondolin/gondolin/mounts/fsbench"
)

// BenchmarkMounts runs fsbench through a FUSE mount of a host directory
// (the guest's code, mounted on the host), directly on that host
// filesystem, and on tmpfs, in one run:
//
//	go test -run XXX -bench Mounts -benchtime 1x ./mounts/guestfs
//
// In-guest figures come from running fsbench.Script inside a VM.
func BenchmarkMounts(b *testing.B) {
	needFUSE(b)
	shm, err := os.MkdirTemp("/dev/shm", "fsbench")
	if err != nil {
		b.Skip("no tmpfs at /dev/shm")
	}
	defer os.RemoveAll(shm)
	places := []struct {
		name string
		dir  func(b *testing.B) string
	}{
		{"host", func(b *testing.B) string { return b.TempDir() }},
		{"tmpfs", func(b *testing.B) string { return shm }},
		{"fuse", func(b *testing.B) string { return mount(b, false).guest }},
	}
	for _, p := range places {
		b.Run(p.name, func(b *testing.B) {
			dir := p.dir(b)
			for b.Loop() {
				r, err := fsbench.Run(context.Background(), dir, fsbench.Options{})
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(r.SeqWriteMBps, "write-MB/s")
				b.ReportMetric(r.SeqReadMBps, "read-MB/s")
				b.ReportMetric(r.SmallOpsPerS, "small-ops/s")
				b.ReportMetric(float64(r.FindCold.Milliseconds()), "find-cold-ms")
				b.ReportMetric(float64(r.FindWarm.Milliseconds()), "find-warm-ms")
				b.Logf("%s: %v", p.name, r)
			}
		})
	}
}
