package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/testutil"
)

// treeHash hashes every path, mode, link target and file content under
// dir, to show that a read-only mount left the host tree untouched.
func treeHash(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, _ := d.Info()
		rel, _ := filepath.Rel(dir, p)
		fmt.Fprintf(h, "%s %v %d\n", rel, info.Mode(), info.ModTime().UnixNano())
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			fmt.Fprintln(h, target)
		case d.Type().IsRegular():
			b, _ := os.ReadFile(p)
			h.Write(b)
		}
		return nil
	})
	return hex.EncodeToString(h.Sum(nil))
}

func TestMounts(t *testing.T) {
	home := gitHome(t)
	t.Cleanup(func() { stopSupervisor(t, home) })
	// inImage runs gondolin exec in the image that has git.
	inImage := func(args ...string) []string { return append([]string{"exec", "--image", "gitssh:latest"}, args...) }

	t.Run("git init, add and commit in a read-write mount", func(t *testing.T) {
		proj := t.TempDir()
		os.WriteFile(filepath.Join(proj, "main.c"), []byte("int main(void) { return 0; }\n"), 0o644)
		os.MkdirAll(filepath.Join(proj, "docs"), 0o755)
		os.WriteFile(filepath.Join(proj, "docs", "README"), []byte("docs\n"), 0o644)
		out := mustRun(t, home, inImage("--mount-hostfs", proj+":/workspace", "--cwd", "/workspace", "--",
			"sh", "-c", "git init -q && git add -A && git -c user.email=g@g -c user.name=g commit -q -m first && git log --oneline | wc -l && git status --porcelain | wc -l")...)
		if out != "1\n0" {
			t.Fatalf("guest git: %q", out)
		}
		host, err := exec.Command("git", "-C", proj, "log", "--format=%s").Output()
		if err != nil || strings.TrimSpace(string(host)) != "first" {
			t.Fatalf("the host does not see the guest's commit: %q %v", host, err)
		}
	})

	t.Run("a mount reads ahead as far as one request goes", func(t *testing.T) {
		dir := t.TempDir()
		out := mustRun(t, home, "exec", "--mount-hostfs", dir+":/m:ro", "--",
			"sh", "-c", `cat /sys/class/bdi/$(awk '$5 == "/m" { print $3 }' /proc/self/mountinfo)/read_ahead_kb`)
		if out != "1024" {
			t.Fatalf("read_ahead_kb of the mount: %q, want 1024 (fsproto.MaxData)", out)
		}
	})

	t.Run("tar x of a source tree into a read-write mount", func(t *testing.T) {
		src, _ := filepath.Abs("../..") // this repository's own source
		tarball := filepath.Join(t.TempDir(), "src.tar")
		if out, err := exec.Command("tar", "-C", src, "--exclude=.git", "--exclude=bin", "-cf", tarball, "vm", "sessions", "mounts").CombinedOutput(); err != nil {
			t.Fatalf("tar: %v: %s", err, out)
		}
		dest := t.TempDir()
		mustRun(t, home, inImage("--mount-hostfs", filepath.Dir(tarball)+":/in:ro", "--mount-hostfs", dest+":/out", "--",
			"tar", "-C", "/out", "-xf", "/in/src.tar")...)
		if out, err := exec.Command("diff", "-r", filepath.Join(src, "vm"), filepath.Join(dest, "vm")).CombinedOutput(); err != nil {
			t.Fatalf("extracted tree differs: %v: %s", err, out)
		}
	})

	t.Run("a build reads a read-only mount and writes to /tmp", func(t *testing.T) {
		src := t.TempDir()
		for i := range 20 {
			os.WriteFile(filepath.Join(src, fmt.Sprintf("f%02d.c", i)), []byte(fmt.Sprintf("int f%d(void) { return %d; }\n", i, i)), 0o644)
		}
		want := sha256.New()
		for i := range 20 {
			b, _ := os.ReadFile(filepath.Join(src, fmt.Sprintf("f%02d.c", i)))
			want.Write(b)
		}
		before := treeHash(t, src)
		out := mustRun(t, home, inImage("--mount-hostfs", src+":/src:ro", "--",
			"sh", "-c", "cat /src/*.c > /tmp/build.out && sha256sum /tmp/build.out | cut -d' ' -f1")...)
		if out != hex.EncodeToString(want.Sum(nil)) {
			t.Fatalf("build output %s", out)
		}
		if treeHash(t, src) != before {
			t.Fatal("the read-only source tree changed")
		}
	})

	t.Run("a read-only mount refuses every write and the host tree is byte-identical", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "keep"), []byte("keep\n"), 0o644)
		os.Mkdir(filepath.Join(dir, "sub"), 0o755)
		before := treeHash(t, dir)
		script := `cd /ro; n=0
for op in "echo x > keep" "echo x > new" "rm keep" "mkdir d" "rmdir sub" "mv keep moved" "chmod 777 keep" "touch keep" "ln keep hard" "ln -s keep soft" "truncate -s 0 keep"; do
  if sh -c "$op" 2>/tmp/err; then echo "ALLOWED: $op"; elif ! grep -q "Read-only file system" /tmp/err; then echo "OTHER ERROR: $op: $(cat /tmp/err)"; else n=$((n+1)); fi
done; echo refused=$n`
		out := mustRun(t, home, inImage("--mount-hostfs", dir+":/ro:ro", "--", "sh", "-c", script)...)
		if out != "refused=11" {
			t.Fatalf("read-only mount: %s", out)
		}
		if treeHash(t, dir) != before {
			t.Fatal("the host tree changed")
		}
	})

	t.Run("symlinks and .. cannot reach host files", func(t *testing.T) {
		dir := t.TempDir()
		marker := filepath.Join(t.TempDir(), "host-only-secret")
		os.WriteFile(marker, []byte("HOST SECRET\n"), 0o644)
		os.Symlink(marker, filepath.Join(dir, "abs"))
		os.Symlink("../../../../../../"+strings.TrimPrefix(marker, "/"), filepath.Join(dir, "rel"))
		os.Symlink("inside.txt", filepath.Join(dir, "ok"))
		os.WriteFile(filepath.Join(dir, "inside.txt"), []byte("inside\n"), 0o644)
		r := gondolin(t, home, "", inImage("--mount-hostfs", dir+":/w", "--", "sh", "-c",
			"cat /w/ok; cat /w/abs /w/rel /w/../"+filepath.Base(marker)+" 2>/dev/null; ls /w/.. | head -3")...)
		if strings.Contains(r.stdout, "HOST SECRET") || !strings.HasPrefix(r.stdout, "inside\n") {
			t.Fatalf("escape: %+v", r)
		}
	})

	t.Run("host changes show up in the guest", func(t *testing.T) {
		dir := t.TempDir()
		mustRun(t, home, "bash", "--detach", "--keep", "--name", "mnt", "--mount-hostfs", dir+":/w", "--", "sleep", "100000")
		os.WriteFile(filepath.Join(dir, "late"), []byte("written on the host\n"), 0o644)
		testutil.WaitFor(t, 10*time.Second, "the host's file in the guest", func() bool {
			r := gondolin(t, home, "", "exec", "--session", "mnt", "--", "cat", "/w/late")
			return r.stdout == "written on the host\n"
		})
		// A live snapshot does not hold the mount's files: a resume
		// mounts the same host directory again and sees it as it is now.
		mustRun(t, home, "snapshot", "mnt", "--live", "--name", "with-mount")
		os.WriteFile(filepath.Join(dir, "after-snapshot"), []byte("newer\n"), 0o644)
		mustRun(t, home, "bash", "--detach", "--resume", "with-mount", "--name", "mnt2")
		if out := mustRun(t, home, "exec", "--session", "mnt2", "--", "cat", "/w/after-snapshot"); out != "newer" {
			t.Fatalf("resumed mount: %q", out)
		}
		mustRun(t, home, "exec", "--session", "mnt2", "--", "sh", "-c", "echo from-resumed > /w/back")
		if b, _ := os.ReadFile(filepath.Join(dir, "back")); string(b) != "from-resumed\n" {
			t.Fatalf("write from the resumed session: %q", b)
		}
	})

	t.Run("each side sees the other's changes at once, through the guest's caches", func(t *testing.T) {
		dir := t.TempDir()
		h := func(p string) string { return filepath.Join(dir, p) }
		os.MkdirAll(h("d"), 0o755)
		os.WriteFile(h("d/edit"), []byte("old contents\n"), 0o644)
		os.WriteFile(h("d/gone"), []byte("x\n"), 0o644)
		os.WriteFile(h("d/moved"), []byte("moved\n"), 0o644)
		mustRun(t, home, "bash", "--detach", "--keep", "--name", "coh", "--mount-hostfs", dir+":/w", "--", "sleep", "100000")
		guest := func(script string) string {
			t.Helper()
			return mustRun(t, home, "exec", "--session", "coh", "--", "sh", "-c", script)
		}
		// The guest looks at everything, so that its kernel caches it
		// (names and attributes for a minute, and "new" as missing).
		// Only what the kernel answers from its caches is asked: names
		// and sizes (an open or a listing always asks the host).
		look := "for f in edit gone moved new renamed; do test -e /w/d/$f && echo $f $(stat -c %s /w/d/$f); done; true"
		if out := guest(look); out != "edit 13\ngone 2\nmoved 6" {
			t.Fatalf("guest's first look: %q", out)
		}
		// The host edits in place, removes, creates and renames.
		os.WriteFile(h("d/edit"), []byte("newer contents\n"), 0o644)
		os.Remove(h("d/gone"))
		os.WriteFile(h("d/new"), []byte("new\n"), 0o644)
		os.Rename(h("d/moved"), h("d/renamed"))
		testutil.WaitFor(t, 30*time.Second, "the host's changes in the guest", func() bool {
			r := gondolin(t, home, "", "exec", "--session", "coh", "--", "sh", "-c", look)
			return r.stdout == "edit 15\nnew 4\nrenamed 6\n"
		})
		// The guest's changes, each seen on the host when exec returns.
		guest("echo from-guest > /w/d/g && mv /w/d/renamed /w/d/by-guest && rm /w/d/new && mkdir /w/d/sub")
		names, _ := os.ReadDir(h("d"))
		var got []string
		for _, n := range names {
			got = append(got, n.Name())
		}
		if b, _ := os.ReadFile(h("d/g")); string(b) != "from-guest\n" || strings.Join(got, " ") != "by-guest edit g sub" {
			t.Fatalf("host sees %q and %v", b, got)
		}
		// No write is held back in the guest: what it wrote just before a
		// live snapshot, and just before it stops, is on the host.
		sum := guest("head -c 8388608 /dev/urandom > /w/before-snapshot && sha256sum /w/before-snapshot | cut -d' ' -f1")
		mustRun(t, home, "snapshot", "coh", "--live", "--name", "coh-snap")
		if b, _ := os.ReadFile(h("before-snapshot")); fmt.Sprintf("%x", sha256.Sum256(b)) != sum {
			t.Fatalf("a write before the snapshot is not on the host (%d bytes)", len(b))
		}
		sum = guest("head -c 8388608 /dev/urandom > /w/before-stop && sha256sum /w/before-stop | cut -d' ' -f1")
		mustRun(t, home, "stop", "coh")
		if b, _ := os.ReadFile(h("before-stop")); fmt.Sprintf("%x", sha256.Sum256(b)) != sum {
			t.Fatalf("a write before stop is not on the host (%d bytes)", len(b))
		}
	})

	t.Run("a 1 GiB file has the same sha256 on both sides", func(t *testing.T) {
		if testing.Short() {
			t.Skip("slow")
		}
		dir := t.TempDir()
		f, _ := os.Create(filepath.Join(dir, "big"))
		h := sha256.New()
		io.CopyN(io.MultiWriter(f, h), rand.Reader, 1<<30)
		f.Close()
		out := mustRun(t, home, inImage("--memory", "512M", "--mount-hostfs", dir+":/data:ro", "--", "sh", "-c", "sha256sum /data/big | cut -d' ' -f1")...)
		if out != hex.EncodeToString(h.Sum(nil)) {
			t.Fatalf("guest sha256 %s, host %x", out, h.Sum(nil))
		}
	})
}
