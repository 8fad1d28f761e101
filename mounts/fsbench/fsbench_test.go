package fsbench

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/testreq"
)

// full is a complete run's output without git, noise included.
const full = "noise\nfsbench seq_write 200000000 1000000\nfsbench seq_read 300000000 500000\n" +
	"64+0 records in\nfsbench read_first 100000000 1000000\nfsbench read_again 100000000 250000\n" +
	"fsbench create_delete 2000 500000\nfsbench small_ops 6000 2000000\n" +
	"fsbench find_cold 10000 250000\nfsbench find_warm 10000 0\n"

var fullResult = Result{SeqWriteMBps: 200, SeqReadMBps: 600, ReadFirstMBps: 100, ReadAgainMBps: 400,
	CreateDelPerS: 4000, SmallOpsPerS: 3000, FindCold: 250 * time.Millisecond, FindWarm: time.Microsecond, FindFiles: 10000}

func TestParse(t *testing.T) {
	withGit := fullResult
	withGit.Git, withGit.GitFiles = true, 10000
	withGit.GitStatusFirst, withGit.GitStatusSecond = 2*time.Second, 500*time.Millisecond
	for _, tc := range []struct {
		name, out string
		want      Result
		err       string // a substring of the error; "" for none
	}{
		{name: "complete", out: full, want: fullResult},
		{name: "with git", out: full + "fsbench git_status_first 10000 2000000\nfsbench git_status_second 10000 500000\n", want: withGit},
		{name: "unknown names are skipped", out: full + "fsbench later_figure 1 1\n", want: fullResult},
		{name: "lines of other shapes are skipped", out: full + "fsbench seq_write 1\nfsbench: a message from the script\n", want: fullResult},
		{name: "incomplete", out: "fsbench seq_write 1 1\n", err: "no seq_read, read_first"},
		{name: "no re-read", out: strings.Replace(full, "read_again", "other", 1), err: "no read_again"},
		{name: "no create_delete", out: strings.Replace(full, "create_delete", "other", 1), err: "no create_delete"},
		{name: "half the git figures", out: full + "fsbench git_status_first 10000 2000000\n", err: "no git_status_second"},
		{name: "bad number", out: "fsbench seq_write x 1\n", err: "bad line"},
		{name: "negative time", out: "fsbench seq_write 1 -1\n", err: "bad line"},
		{name: "empty", out: "", err: "incomplete"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Parse(tc.out)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Parse error %v, want one with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r != tc.want {
				t.Fatalf("Parse = %+v, want %+v", r, tc.want)
			}
		})
	}
}

func TestParseDirs(t *testing.T) {
	two := "fsbench-dir /workspace\n" + full + "fsbench-dir /tmp/fsbench\n" + strings.Replace(full, "find_cold 10000", "find_cold 300", 1)
	for _, tc := range []struct {
		name, out string
		want      map[string]int // FindFiles per directory
		err       string
	}{
		{name: "two", out: two, want: map[string]int{"/workspace": 10000, "/tmp/fsbench": 300}},
		{name: "one", out: "fsbench-dir /x\n" + full, want: map[string]int{"/x": 10000}},
		{name: "output before the first is skipped", out: "booting\nfsbench seq_write 1 1\n" + "fsbench-dir /x\n" + full, want: map[string]int{"/x": 10000}},
		{name: "none", out: full, err: "no fsbench-dir"},
		{name: "second incomplete", out: "fsbench-dir /a\n" + full + "fsbench-dir /b\nfsbench seq_write 1 1\n", err: "/b: fsbench: incomplete"},
		{name: "twice", out: "fsbench-dir /a\n" + full + "fsbench-dir /a\n" + full, err: "measured twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := ParseDirs(tc.out)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseDirs error %v, want one with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(res) != len(tc.want) {
				t.Fatalf("ParseDirs = %v, want %d directories", res, len(tc.want))
			}
			for d, n := range tc.want {
				if res[d].FindFiles != n {
					t.Errorf("%s: %d files found, want %d", d, res[d].FindFiles, n)
				}
			}
		})
	}
}

// TestScript runs the script small, with dash and with busybox sh (the
// guest's shell) when they are here, with and without a cold file.
func TestScript(t *testing.T) {
	o := Options{MB: 4, SmallFiles: 100, Files: 300}
	r, err := Run(context.Background(), t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	if r.FindFiles != 300 || r.SeqWriteMBps <= 0 || r.ReadFirstMBps <= 0 || r.ReadAgainMBps <= 0 || r.CreateDelPerS <= 0 || r.SmallOpsPerS <= 0 || r.Git {
		t.Fatalf("result %+v", r)
	}
	t.Log(r)
	bb := testreq.Tool(t, "busybox")
	dir := t.TempDir()
	// A cold file of another size than the script's own: its bytes are
	// what read_first counts.
	if out, err := exec.Command("dd", "if=/dev/zero", "of="+filepath.Join(dir, ColdFile), "bs=1024", "count=1000").CombinedOutput(); err != nil {
		t.Fatalf("dd: %v\n%s", err, out)
	}
	cmd := exec.Command(bb, ArgvDirs(dir, t.TempDir())...)
	// Only busybox applets, as in a minimal guest.
	cmd.Env = append([]string{"PATH=" + appletDir(t, bb)}, o.Env()...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("busybox sh: %v\n%s", err, out)
	}
	res, err := ParseDirs(string(out))
	if err != nil || len(res) != 2 {
		t.Fatalf("busybox run: %v %v", res, err)
	}
	for d, r := range res {
		if r.FindFiles != 300 || r.ReadFirstMBps <= 0 {
			t.Fatalf("busybox run in %s: %+v", d, r)
		}
	}
	if !strings.Contains(string(out), "fsbench read_first 1024000 ") || !strings.Contains(string(out), "fsbench read_first 4194304 ") {
		t.Errorf("read_first did not read the cold file in one run and the script's own in the other:\n%s", out)
	}
}

// TestScriptGit makes a repository with RepoScript and times git status
// in it in place and in a copy.
func TestScriptGit(t *testing.T) {
	testreq.Tool(t, "git")
	ctx := context.Background()
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	if err := MakeRepo(ctx, repo, 300); err != nil {
		t.Fatal(err)
	}
	o := Options{MB: 1, SmallFiles: 10, Files: 100, Git: repo}
	for _, where := range []string{dir, t.TempDir()} {
		r, err := Run(ctx, where, o)
		if err != nil {
			t.Fatal(err)
		}
		if !r.Git || r.GitFiles != 300 || r.GitStatusFirst <= 0 || r.GitStatusSecond <= 0 {
			t.Fatalf("in %s: %+v", where, r)
		}
		t.Log(r)
	}
	// git status must have found the repository clean: nothing the
	// script left behind in it.
	out, err := exec.Command("git", "-C", repo, "status", "--porcelain").CombinedOutput()
	if err != nil || len(out) != 0 {
		t.Fatalf("git status after the runs: %v %q", err, out)
	}
}

// appletDir makes a directory of busybox applet links.
func appletDir(t *testing.T, bb string) string {
	dir := t.TempDir()
	for _, a := range []string{"dd", "find", "ls", "mkdir", "rm", "sed", "seq", "touch", "wc", "sleep", "date", "sh"} {
		if err := exec.Command("ln", "-s", bb, dir+"/"+a).Run(); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
