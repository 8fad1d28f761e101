package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testenv"
	"golang.org/x/sys/unix"
)

// TestCpUsage: bad operands are one-line usage errors, before any VM.
func TestCpUsage(t *testing.T) {
	home := layout.Home(t.TempDir())
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"cp", "a"}, "cp needs a source and a destination"},
		{[]string{"cp", "a", "b", "c"}, "cp needs a source and a destination"},
		{[]string{"cp", "./a", "/tmp/b"}, "name the session's side as SESSION:PATH"},
		{[]string{"cp", "-", "-"}, "name the session's side as SESSION:PATH"},
		{[]string{"cp", "x:/a", "y:/b"}, "not between two sessions"},
		{[]string{"cp", "x:/", "."}, "cannot tell what to name x:/"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := gondolin(t, home, "", tt.args...)
			if r.code != 2 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("code %d stderr %q, want 2 and one line with %q", r.code, r.stderr, tt.want)
			}
		})
	}
	// A tar stream is never read from, or written to, a terminal.
	for _, tt := range []struct{ args []string }{{[]string{"cp", "x:/etc", "-"}}, {[]string{"cp", "-", "x:/etc"}}} {
		tm := startTerm(t, home, tt.args...)
		if code := tm.exit(); code != 2 || !strings.Contains(tm.screen(), "terminal") {
			t.Errorf("%v on a terminal: code %d, screen:\n%s", tt.args, code, tm.screen())
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(string(home), "sessions")); len(entries) > 0 {
		t.Errorf("bad input changed state: %v", entries)
	}
}

// TestCp copies into and out of one session: a tree with its modes,
// symlinks and times, a directory's contents, tar streams both ways, and
// the errors of missing things.
func TestCp(t *testing.T) {
	home := testenv.Home(t)
	t.Cleanup(func() { stopSupervisor(t, home) })
	if r := gondolin(t, home, "", "bash", "--detach", "--name", "cp"); r.code != 0 {
		t.Fatalf("bash --detach: %+v", r)
	}
	guest := func(script string) string {
		t.Helper()
		r := gondolin(t, home, "", "exec", "--session", "cp", "--", "sh", "-c", script)
		if r.code != 0 {
			t.Fatalf("guest %q: %+v", script, r)
		}
		return r.stdout
	}
	cp := func(stdin string, args ...string) result {
		t.Helper()
		return gondolinWithin(t, 2*time.Minute, home, stdin, append([]string{"cp"}, args...)...)
	}

	host := t.TempDir()
	src := filepath.Join(host, "proj")
	mtime := time.Date(2021, 6, 7, 8, 9, 10, 0, time.UTC)
	os.MkdirAll(filepath.Join(src, "empty"), 0o755)
	os.WriteFile(filepath.Join(src, "secret"), []byte("s3cret\n"), 0o600)
	os.WriteFile(filepath.Join(src, "run.sh"), []byte("#!/bin/sh\necho ran\n"), 0o755)
	os.Symlink("secret", filepath.Join(src, "link"))
	ts := unix.NsecToTimespec(mtime.UnixNano())
	unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(src, "link"), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	for _, name := range []string{"secret", "run.sh", "empty", "."} {
		os.Chtimes(filepath.Join(src, name), mtime, mtime)
	}
	os.Chmod(filepath.Join(src, "empty"), 0o700)
	os.Chmod(src, 0o750)
	os.Chtimes(src, mtime, mtime)

	t.Run("a directory in, then into the directory it made", func(t *testing.T) {
		if r := cp("", src, "cp:/work"); r.code != 0 || r.stdout != "" || r.stderr != "" {
			t.Fatalf("cp in: %+v", r)
		}
		got := guest("cd /work && stat -c '%a %Y %n' . secret run.sh empty && readlink link && ./run.sh && cat secret")
		want := "750 1623053350 .\n600 1623053350 secret\n755 1623053350 run.sh\n700 1623053350 empty\nsecret\nran\ns3cret\n"
		if got != want {
			t.Errorf("in the guest:\n%s\nwant:\n%s", got, want)
		}
		if r := cp("", src, "cp:/work"); r.code != 0 {
			t.Fatalf("cp in again: %+v", r)
		}
		if got := guest("ls /work/proj"); got != "empty\nlink\nrun.sh\nsecret\n" {
			t.Errorf("second copy went to /work/proj: %q", got)
		}
		if r := cp("", src+"/.", "cp:contents"); r.code != 0 {
			t.Fatalf("cp in contents: %+v", r)
		}
		if got := guest("ls /root/contents"); got != "empty\nlink\nrun.sh\nsecret\n" {
			t.Errorf("contents copied to a relative path: %q", got)
		}
	})

	t.Run("a file and a directory out", func(t *testing.T) {
		out := t.TempDir()
		if r := cp("", "cp:/work/secret", out); r.code != 0 || r.stderr != "" {
			t.Fatalf("cp out a file: %+v", r)
		}
		fi, err := os.Stat(filepath.Join(out, "secret"))
		if b, _ := os.ReadFile(filepath.Join(out, "secret")); err != nil || fi.Mode() != 0o600 || string(b) != "s3cret\n" || !fi.ModTime().Equal(mtime) {
			t.Errorf("copied file: %v %q %v", fi, b, err)
		}
		if r := cp("", "cp:/work/secret", filepath.Join(out, "renamed")); r.code != 0 {
			t.Fatalf("cp out to a new name: %+v", r)
		}
		if b, _ := os.ReadFile(filepath.Join(out, "renamed")); string(b) != "s3cret\n" {
			t.Errorf("renamed copy: %q", b)
		}
		guest("chmod u+s /work/run.sh; mkfifo /work/fifo")
		r := cp("", "cp:/work", filepath.Join(out, "back"))
		if r.code != 0 || !strings.Contains(r.stderr, "fifo") {
			t.Fatalf("cp out a directory: %+v", r)
		}
		guest("chmod u-s /work/run.sh; rm /work/fifo")
		if fi, _ := os.Stat(filepath.Join(out, "back", "run.sh")); fi == nil || fi.Mode() != 0o755 {
			t.Errorf("run.sh copied out as %v, want 0755 without its setuid bit", fi)
		}
		os.Remove(filepath.Join(out, "back", "proj"))
		os.RemoveAll(filepath.Join(out, "back", "proj"))
		os.Chtimes(filepath.Join(out, "back"), mtime, mtime)
		if a, b := treeHash(t, src), treeHash(t, filepath.Join(out, "back")); a != b {
			t.Errorf("the tree did not come back as it went in:\n%s\nwant:\n%s", treeList(filepath.Join(out, "back")), treeList(src))
		}
	})

	t.Run("contents, relative paths and directories already there", func(t *testing.T) {
		guest("mkdir -p /root/dotcase/sub && echo a > /root/dotcase/a && chmod 777 /root/dotcase")
		keep := filepath.Join(t.TempDir(), "keep")
		os.Mkdir(keep, 0o700)
		// Relative to the session's home; the contents merge into keep,
		// which keeps its own mode.
		if r := cp("", "cp:dotcase/.", keep); r.code != 0 || r.stderr != "" {
			t.Fatalf("cp out contents: %+v", r)
		}
		if fi, _ := os.Stat(keep); fi == nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("the directory the contents went into is now %v, want 0700 as it was", fi.Mode())
		}
		if b, _ := os.ReadFile(filepath.Join(keep, "a")); string(b) != "a\n" {
			t.Errorf("keep/a: %q", b)
		}
		if fi, err := os.Stat(filepath.Join(keep, "sub")); err != nil || !fi.IsDir() {
			t.Errorf("keep/sub: %v", err)
		}
		// "SESSION:" is the home: its contents, not just a part of them.
		home := filepath.Join(t.TempDir(), "home")
		if r := cp("", "cp:", home); r.code != 0 {
			t.Fatalf("cp out the home: %+v", r)
		}
		if b, _ := os.ReadFile(filepath.Join(home, "dotcase", "a")); string(b) != "a\n" {
			t.Errorf("home/dotcase/a: %q", b)
		}
		guest("rm -r /root/dotcase")
	})

	t.Run("tar streams on stdin and stdout", func(t *testing.T) {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "a/", Mode: 0o710, ModTime: mtime})
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "a/b", Mode: 0o640, Size: 3, ModTime: mtime})
		tw.Write([]byte("abc"))
		tw.Close()
		guest("mkdir -p /tarin")
		if r := cp(buf.String(), "-", "cp:/tarin"); r.code != 0 {
			t.Fatalf("cp - in: %+v", r)
		}
		if got := guest("stat -c '%a %n' /tarin/a /tarin/a/b; cat /tarin/a/b"); got != "710 /tarin/a\n640 /tarin/a/b\nabc" {
			t.Errorf("tar stream in: %q", got)
		}
		r := cp("", "cp:/tarin/a", "-")
		if r.code != 0 {
			t.Fatalf("cp - out: %+v", r)
		}
		var names []string
		tr := tar.NewReader(strings.NewReader(r.stdout))
		for {
			hdr, err := tr.Next()
			if err != nil {
				if err != io.EOF {
					t.Errorf("tar stream out: %v", err)
				}
				break
			}
			names = append(names, hdr.Name)
		}
		if strings.Join(names, " ") != "a/ a/b" {
			t.Errorf("tar stream out holds %q", names)
		}
	})

	t.Run("missing things", func(t *testing.T) {
		dir := t.TempDir()
		for _, tt := range []struct {
			args []string
			want string
		}{
			{[]string{"cp:/no/such", dir}, "no such file or directory"},
			{[]string{"cp:/work/secret", filepath.Join(dir, "no", "dir")}, "no such directory"},
			{[]string{filepath.Join(dir, "nope"), "cp:/tmp"}, "no such file or directory"},
			{[]string{src, "cp:/no/such/dir"}, "no such directory: /no/such"},
			{[]string{"nosuch:/etc/hostname", dir}, "no session"},
		} {
			r := cp("", tt.args...)
			if r.code != 4 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("cp %q: %+v, want 4 (not found) and one line with %q", tt.args, r, tt.want)
			}
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("failed copies left %v", entries)
		}
	})
}

// treeList is what treeHash hashes but file contents, for a message.
func treeList(dir string) string {
	var b strings.Builder
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, _ := d.Info()
		rel, _ := filepath.Rel(dir, p)
		target, _ := os.Readlink(p)
		fmt.Fprintf(&b, "%s %v %s %s\n", rel, info.Mode(), info.ModTime().UTC().Format(time.RFC3339Nano), target)
		return nil
	})
	return b.String()
}

// TestHostileCp (issue 16, item 12): a guest answers gondolin cp with a
// tar stream of its own making. As root it hides PID 1's directory under
// a bind mount, so that /proc/1/exe, the agent the host runs, is its
// script. Whatever the stream says, the copy stays inside its
// destination, drops setuid bits and devices, writes through no symlink
// or hard link, and says what it skipped in plain text.
func TestHostileCp(t *testing.T) {
	home := testenv.Home(t)
	t.Cleanup(func() { stopSupervisor(t, home) })
	if r := gondolin(t, home, "", "bash", "--detach", "--name", "evil"); r.code != 0 {
		t.Fatalf("bash --detach: %+v", r)
	}
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	os.Mkdir(outside, 0o755)
	secret := filepath.Join(outside, "secret")
	os.WriteFile(secret, []byte("secret"), 0o600)

	// serve makes the guest answer the next copies with stream.
	serve := func(t *testing.T, stream []byte) {
		t.Helper()
		r := gondolinWithin(t, hangLimit, home, string(stream), "exec", "--session", "evil", "--", "sh", "-c",
			`cat > /tmp/evil.tar && mkdir -p /tmp/fake1 && `+
				`printf '#!/bin/sh\nif [ -e /tmp/old ]; then while :; do echo "gondolin-agent: open channel: busy" >&2; sleep 0.2; done; fi\n`+
				`printf "\\033]52;c;cHduZWQ=\\a\\n" >&2\ncat /tmp/evil.tar\nif [ -e /tmp/endless ]; then exec yes; fi\n' > /tmp/fake1/exe && chmod 755 /tmp/fake1/exe && `+
				`{ mountpoint -q /proc/1 || mount --bind /tmp/fake1 /proc/1; } && echo hijacked`)
		if r.stdout != "hijacked\n" {
			t.Fatalf("attack set-up: %+v", r)
		}
	}
	craft := func(entries ...tar.Header) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, h := range entries {
			body := h.Linkname
			if h.Typeflag == tar.TypeReg {
				h.Size, h.Linkname = int64(len(body)), ""
			}
			h.Format = tar.FormatPAX
			if err := tw.WriteHeader(&h); err != nil {
				t.Fatal(err)
			}
			if h.Typeflag == tar.TypeReg {
				tw.Write([]byte(body))
			}
		}
		tw.Close()
		return buf.Bytes()
	}
	// A regular file's Linkname here is its content.
	attack := craft(
		tar.Header{Typeflag: tar.TypeDir, Name: "top/", Mode: 0o755},
		tar.Header{Typeflag: tar.TypeReg, Name: "top/suid", Mode: 0o4755, Linkname: "elf"},
		tar.Header{Typeflag: tar.TypeChar, Name: "top/\x1b]0;pwned\x07null", Mode: 0o666, Devmajor: 1, Devminor: 3},
		tar.Header{Typeflag: tar.TypeFifo, Name: "top/fifo", Mode: 0o644},
		// A name in the reason for a skip, not only in the name skipped.
		tar.Header{Typeflag: tar.TypeReg, Name: "top/\x1b]52;c;cHduZWQ=\x07", Mode: 0o644, Linkname: "f"},
		tar.Header{Typeflag: tar.TypeReg, Name: "top/\x1b]52;c;cHduZWQ=\x07/y", Mode: 0o644, Linkname: "f"},
		tar.Header{Typeflag: tar.TypeSymlink, Name: "top/up", Linkname: "../.."},
		tar.Header{Typeflag: tar.TypeReg, Name: "top/up/outside/pwned", Mode: 0o644, Linkname: "evil"},
		tar.Header{Typeflag: tar.TypeReg, Name: "../pwned", Mode: 0o644, Linkname: "evil"},
		tar.Header{Typeflag: tar.TypeReg, Name: "/tmp/gondolin-hostile-cp", Mode: 0o644, Linkname: "evil"},
		tar.Header{Typeflag: tar.TypeLink, Name: "top/h", Linkname: "../outside/secret"},
		tar.Header{Typeflag: tar.TypeSymlink, Name: "top/l", Linkname: secret},
		tar.Header{Typeflag: tar.TypeReg, Name: "top/l", Mode: 0o644, Linkname: "evil"},
		// Beside the top: renamed to it, and a file does not replace a
		// directory.
		tar.Header{Typeflag: tar.TypeReg, Name: "elsewhere", Mode: 0o644, Linkname: "evil"},
	)
	checkOutside := func(t *testing.T, want ...string) {
		t.Helper()
		entries, _ := os.ReadDir(base)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		want = append(want, "outside")
		slices.Sort(want)
		if strings.Join(names, " ") != strings.Join(want, " ") {
			t.Errorf("beside the copy: %q", names)
		}
		if entries, _ := os.ReadDir(outside); len(entries) != 1 {
			t.Errorf("outside holds %d entries", len(entries))
		}
		if b, _ := os.ReadFile(secret); string(b) != "secret" {
			t.Errorf("the secret now reads %q", b)
		}
		if _, err := os.Lstat("/tmp/gondolin-hostile-cp"); err == nil {
			os.Remove("/tmp/gondolin-hostile-cp")
			t.Errorf("an absolute name was written")
		}
	}

	t.Run("a stream that aims outside", func(t *testing.T) {
		serve(t, attack)
		r := gondolinWithin(t, hangLimit, home, "", "cp", "evil:/srv/app", filepath.Join(base, "copy"))
		checkOutside(t, "copy")
		if strings.Contains(r.stderr, "\x1b") || !strings.Contains(r.stderr, `\x1b]0;pwned\x07`) || !strings.Contains(r.stderr, `\x1b]52;c;`) {
			t.Errorf("stderr does not show the guest's names and notes escaped: %q", r.stderr)
		}
		for _, note := range []string{"device node", "fifo", "copy/up is not a directory", "../pwned: name with ..", "absolute name",
			"top/h: name with ..", "elsewhere: would replace a directory"} {
			if !strings.Contains(r.stderr, note) {
				t.Errorf("no note of %q: %q", note, r.stderr)
			}
		}
		if fi, err := os.Stat(filepath.Join(base, "copy", "suid")); err != nil || fi.Mode() != 0o755 {
			t.Errorf("suid copied as %v %v, want 0755", fi, err)
		}
		if fi, err := os.Lstat(filepath.Join(base, "copy", "l")); err != nil || !fi.Mode().IsRegular() {
			t.Errorf("l: %v %v, want the file that replaced the symlink", fi, err)
		}
		if _, err := os.Lstat(filepath.Join(base, "copy", "h")); err == nil {
			t.Errorf("the hard link was made")
		}
	})

	t.Run("a cut stream and garbage", func(t *testing.T) {
		serve(t, attack[:3000])
		r := gondolinWithin(t, hangLimit, home, "", "cp", "evil:/srv/app", filepath.Join(base, "cut"))
		lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
		last := lines[len(lines)-1]
		if r.code != 125 || !strings.HasPrefix(last, "gondolin: copy evil:/srv/app: ") || !strings.HasSuffix(last, "(what was written before stays)") {
			t.Errorf("cut stream: %+v", r)
		}
		t.Logf("cut stream: %s", last)
		if b, _ := os.ReadFile(filepath.Join(base, "cut", "suid")); string(b) != "elf" {
			t.Errorf("what was written before the cut: %q", b)
		}
		serve(t, []byte("this is not a tar stream\n"))
		r = gondolinWithin(t, hangLimit, home, "", "cp", "evil:/srv/app", filepath.Join(base, "garbage"))
		if r.code != 125 || !strings.HasSuffix(r.stderr, "(what was written before stays)\n") {
			t.Errorf("garbage: %+v", r)
		}
		checkOutside(t, "copy", "cut")
	})

	t.Run("an archive followed by endless bytes", func(t *testing.T) {
		serve(t, craft(tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644, Linkname: "whole"}))
		if r := gondolin(t, home, "", "exec", "--session", "evil", "--", "touch", "/tmp/endless"); r.code != 0 {
			t.Fatalf("touch: %+v", r)
		}
		r := gondolinWithin(t, hangLimit, home, "", "cp", "evil:/srv/f", filepath.Join(base, "whole"))
		if b, _ := os.ReadFile(filepath.Join(base, "whole")); r.code != 0 || string(b) != "whole" {
			t.Errorf("cp: %+v, copied %q", r, b)
		}
		checkOutside(t, "copy", "cut", "whole")
	})

	// Not an attack: what an agent from before gondolin cp does, run as
	// a command (it looks for PID 1's port forever).
	t.Run("an agent from before cp", func(t *testing.T) {
		if r := gondolin(t, home, "", "exec", "--session", "evil", "--", "touch", "/tmp/old"); r.code != 0 {
			t.Fatalf("touch: %+v", r)
		}
		big := filepath.Join(t.TempDir(), "big")
		os.WriteFile(big, bytes.Repeat([]byte("x"), 8<<20), 0o644)
		for _, args := range [][]string{{"evil:/srv/app", filepath.Join(base, "old")}, {big, "evil:/srv"}} {
			r := gondolinWithin(t, hangLimit, home, "", append([]string{"cp"}, args...)...)
			if r.code != 125 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "agent from before gondolin cp") {
				t.Errorf("cp %v: %+v", args, r)
			}
		}
		checkOutside(t, "copy", "cut", "whole")
	})
}
