package fsbench

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/testreq"
)

func TestParse(t *testing.T) {
	out := "noise\nfsbench seq_write 200000000 1000000\nfsbench seq_read 300000000 500000\n" +
		"fsbench small_ops 6000 2000000\nfsbench find_cold 10000 250000\nfsbench find_warm 10000 0\n"
	r, err := Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	want := Result{SeqWriteMBps: 200, SeqReadMBps: 600, SmallOpsPerS: 3000, FindCold: 250 * time.Millisecond, FindWarm: time.Microsecond, FindFiles: 10000}
	if r != want {
		t.Fatalf("Parse = %+v, want %+v", r, want)
	}
	if _, err := Parse("fsbench seq_write 1 1\n"); err == nil {
		t.Error("incomplete output accepted")
	}
	if _, err := Parse("fsbench seq_write x 1\n"); err == nil {
		t.Error("bad number accepted")
	}
}

// TestScript runs the script small, with dash and with busybox sh (the
// guest's shell) when they are here.
func TestScript(t *testing.T) {
	o := Options{MB: 4, SmallFiles: 100, Files: 300}
	r, err := Run(context.Background(), t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	if r.FindFiles != 300 || r.SeqWriteMBps <= 0 || r.SmallOpsPerS <= 0 {
		t.Fatalf("result %+v", r)
	}
	t.Log(r)
	bb := testreq.Tool(t, "busybox")
	dir := t.TempDir()
	cmd := exec.Command(bb, "sh", "-c", Script, "fsbench", dir)
	cmd.Env = append([]string{"PATH=/nonexistent"}, o.Env()...)
	// Only busybox applets, as in a minimal guest.
	cmd.Env[0] = "PATH=" + appletDir(t, bb)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("busybox sh: %v\n%s", err, out)
	}
	if r, err := Parse(string(out)); err != nil || r.FindFiles != 300 {
		t.Fatalf("busybox run: %+v %v", r, err)
	}
}

// appletDir makes a directory of busybox applet links.
func appletDir(t *testing.T, bb string) string {
	dir := t.TempDir()
	for _, a := range []string{"dd", "find", "ls", "mkdir", "rm", "sed", "seq", "touch", "wc", "sleep", "date"} {
		if err := exec.Command("ln", "-s", bb, dir+"/"+a).Run(); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
