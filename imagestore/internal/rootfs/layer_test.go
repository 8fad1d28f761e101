package rootfs

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/imagestore/internal/tartest"
)

// applyLayers applies each entry list as one layer into a fresh tree in
// sandbox/root and returns the first error.
func applyLayers(t *testing.T, sandbox string, layers ...[]tarEntry) (*Tree, error) {
	t.Helper()
	tr, err := New(filepath.Join(sandbox, "root"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	for _, l := range layers {
		if err := tr.ApplyLayer(context.Background(), bytes.NewReader(tarOf(t, l...))); err != nil {
			return tr, err
		}
	}
	return tr, tr.Finish()
}

// listTree returns every path under dir with a one-letter kind and, for
// files, the content; symlinks show their target.
func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case d.Type()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			out = append(out, rel+" -> "+target)
		case d.IsDir():
			out = append(out, rel+"/")
		default:
			b, _ := os.ReadFile(p)
			out = append(out, rel+" = "+string(b))
		}
		return nil
	})
	sort.Strings(out)
	return out
}

func TestApplyLayerWhiteouts(t *testing.T) {
	sandbox := t.TempDir()
	_, err := applyLayers(t, sandbox,
		[]tarEntry{
			dir("etc/"), reg("etc/keep", "k"), reg("etc/gone", "g"),
			dir("etc/sub/"), reg("etc/sub/deep", "d"),
			dir("opq/"), reg("opq/old", "o"), dir("opq/olddir/"), reg("opq/olddir/x", "x"),
			dir("mixed/"), dir("mixed/d/"), reg("mixed/d/old", "o"),
			reg("replaced-by-dir", "f"), dir("dir-replaced-by-file/"), reg("dir-replaced-by-file/x", "x"),
			sym("link-replaced", "etc"),
		},
		[]tarEntry{
			// Whiteouts of a file and of a whole directory.
			reg("etc/.wh.gone", ""),
			reg("etc/.wh.sub", ""),
			// A whiteout of something that never existed is harmless.
			reg(".wh.never", ""),
			// Opaque: the older contents go, this layer's stay, whatever
			// the entry order.
			reg("opq/new", "n"),
			reg("opq/.wh..wh..opq", ""),
			reg("opq/newer", "n2"),
			// A whiteout does not remove what its own layer adds.
			reg("mixed/d/new", "n"),
			reg("mixed/.wh..wh..opq", ""),
			// Replacing across kinds.
			dir("replaced-by-dir/"),
			reg("dir-replaced-by-file", "file now"),
			dir("link-replaced/"),
			// AUFS metadata is ignored.
			reg(".wh..wh.plnk/123", ""),
		},
		[]tarEntry{
			// A later layer may bring a whited-out file back.
			reg("etc/gone", "back"),
		},
	)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(listTree(t, filepath.Join(sandbox, "root")), "\n")
	want := strings.Join([]string{
		"dir-replaced-by-file = file now",
		"etc/",
		"etc/gone = back",
		"etc/keep = k",
		"link-replaced/",
		"mixed/",
		"mixed/d/",
		"mixed/d/new = n",
		"opq/",
		"opq/new = n",
		"opq/newer = n2",
		"replaced-by-dir/",
	}, "\n")
	if got != want {
		t.Errorf("tree:\n%s\nwant:\n%s", got, want)
	}
}

func TestApplyLayerConfinement(t *testing.T) {
	sandbox := t.TempDir()
	outside := filepath.Join(t.TempDir(), "outside")
	os.Mkdir(outside, 0o755)
	_, err := applyLayers(t, sandbox,
		[]tarEntry{
			// An absolute symlink is kept as it is: it resolves in the guest.
			sym("evil", "/"),
			sym("host", outside),
			sym("etc/rel", "../usr"),
		},
		[]tarEntry{
			// Entries through those symlinks land inside the tree, never
			// on the host.
			reg("evil/etc/x", "through evil"),
			reg("host/y", "through host"),
			reg("etc/rel/z", "through rel"),
			// A leading slash means the image's root.
			reg("/abs/name", "abs"),
		},
	)
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(sandbox, "root")
	for p, want := range map[string]string{
		"evil":         "-> /",
		"host":         "-> " + outside,
		"etc/rel":      "-> ../usr",
		"etc/x":        "through evil",
		"usr/z":        "through rel",
		"abs/name":     "abs",
		outside + "/y": "through host",
	} {
		got := ""
		if target, err := os.Readlink(filepath.Join(root, p)); err == nil {
			got = "-> " + target
		} else if b, err := os.ReadFile(filepath.Join(root, p)); err == nil {
			got = string(b)
		}
		if got != want {
			t.Errorf("%s: %q, want %q", p, got, want)
		}
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatalf("wrote through a symlink onto the host: %v", entries)
	}
	if entries, _ := os.ReadDir(sandbox); len(entries) != 1 {
		t.Fatalf("sandbox holds %v", entries)
	}
}

func TestApplyLayerRejects(t *testing.T) {
	tests := []struct {
		name    string
		layers  [][]tarEntry
		wantErr string
	}{
		{"dotdot", [][]tarEntry{{reg("../etc/passwd", "x")}}, `entry "../etc/passwd": path "../etc/passwd" escapes the root`},
		{"dotdot inside", [][]tarEntry{{reg("usr/../../etc/passwd", "x")}}, "escapes the root"},
		{"dotdot after slash", [][]tarEntry{{reg("/../etc/passwd", "x")}}, "escapes the root"},
		{"hard link absolute", [][]tarEntry{{hard("x", "/etc/passwd")}}, `entry "x": hard link target "/etc/passwd" is absolute`},
		{"hard link up", [][]tarEntry{{hard("x", "../../etc/passwd")}}, "escapes the root"},
		{"hard link to nothing", [][]tarEntry{{hard("x", "etc/passwd")}}, "not a file in the tree"},
		{"hard link to itself", [][]tarEntry{{reg("x", "1"), hard("x", "x")}}, "links to itself"},
		{"hard link through symlink", [][]tarEntry{{sym("evil", "/"), hard("x", "evil/etc/passwd")}}, "not a file in the tree"},
		{"symlink climbs", [][]tarEntry{{sym("a/b", "../../etc")}}, `symlink target "../../etc" escapes the root`},
		{"symlink empty", [][]tarEntry{{sym("a", "")}}, "bad symlink target"},
		{"whiteout dotdot", [][]tarEntry{{reg("a/.wh...", "")}}, "whiteout names no file"},
		{"control character", [][]tarEntry{{reg("a\nb", "")}}, "control character"},
		{"symlink loop", [][]tarEntry{{sym("a", "b"), sym("b", "a"), reg("a/x", "x")}}, "too many levels"},
		{"opaque in a file", [][]tarEntry{{reg("f", "x")}, {reg("f/.wh..wh..opq", "")}}, "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sandbox := t.TempDir()
			_, err := applyLayers(t, sandbox, tt.layers...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("apply: %v; want error about %q", err, tt.wantErr)
			}
			if entries, _ := os.ReadDir(sandbox); len(entries) != 1 {
				t.Fatalf("sandbox holds %v", entries)
			}
		})
	}
}

func TestApplyLayerKeepsOwnersAndModes(t *testing.T) {
	sandbox := t.TempDir()
	tr, err := applyLayers(t, sandbox, []tarEntry{
		{name: "srv/", typ: tar.TypeDir, mode: 0o750, uid: 101, gid: 102},
		{name: "srv/app", typ: tar.TypeReg, mode: 0o4755, body: "x", uid: 101, gid: 102},
		{name: "srv/l", typ: tar.TypeSymlink, link: "app", uid: 103, gid: 104},
		{name: "dev/null", typ: tar.TypeChar},
	})
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string][2]int{"srv": {101, 102}, "srv/app": {101, 102}, "srv/l": {103, 104}, "etc/none": {0, 0}} {
		if uid, gid := tr.owner(p); uid != want[0] || gid != want[1] {
			t.Errorf("owner(%s) = %d:%d, want %d:%d", p, uid, gid, want[0], want[1])
		}
	}
	root := filepath.Join(sandbox, "root")
	if st, err := os.Stat(filepath.Join(root, "srv/app")); err != nil || st.Mode()&os.ModeSetuid == 0 {
		t.Errorf("srv/app mode %v, %v", st.Mode(), err)
	}
	if st, err := os.Stat(filepath.Join(root, "srv")); err != nil || st.Mode().Perm() != 0o750 {
		t.Errorf("srv mode %v, %v", st.Mode(), err)
	}
	if _, err := os.Lstat(filepath.Join(root, "dev/null")); err == nil {
		t.Error("device node created")
	}
}

// TestApplyLayerLimit checks that Options.MaxUsage counts a sparse
// entry's apparent size, in every sparse format, and every path, and
// that a refused entry leaves nothing on disk.
func TestApplyLayerLimit(t *testing.T) {
	const limit = 1 << 20
	type test struct {
		name    string
		layer   []byte
		wantErr string // "" when the layer fits
	}
	var tests []test
	for _, f := range tartest.SparseFormats {
		// The report's case: a layer of 1.5 KiB, a file of 64 MiB.
		tests = append(tests, test{"sparse " + f.String(), tartest.Sparse(f, "big", 64<<20, "x"),
			`entry "big": a file of 64 MiB would take the image past its unpack limit of 1 MiB`})
	}
	var many []tarEntry
	for i := range limit / pathUsage {
		many = append(many, dir(strconv.Itoa(i)+"/"))
	}
	tests = append(tests,
		test{"plain file", tarOf(t, reg("big", strings.Repeat("x", limit))), "a file of 1 MiB would take the image past"},
		test{"many empty paths", tarOf(t, many...), `entry "255/": the files would take the image past its unpack limit of 1 MiB`},
		test{"fits", tarOf(t, reg("a", strings.Repeat("x", limit/2)), sym("l", "a"), hard("h", "a"), dir("d/")), ""},
	)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sandbox := t.TempDir()
			root := filepath.Join(sandbox, "root")
			tr, err := New(root, Options{MaxUsage: limit})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			err = tr.ApplyLayer(context.Background(), bytes.NewReader(tt.layer))
			var le *LimitError
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatal(err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.As(err, &le) || le.Limit != limit):
				t.Fatalf("apply: %v; want a *LimitError about %q", err, tt.wantErr)
			}
			if u := tr.Usage(); u > limit {
				t.Errorf("Usage %d over the limit", u)
			}
			if _, err := os.Lstat(filepath.Join(root, "big")); !os.IsNotExist(err) {
				t.Errorf("the refused file is on disk: %v", err)
			}
			if n := diskBytes(t, sandbox); n > limit {
				t.Errorf("%d bytes on disk", n)
			}
		})
	}
}

// TestWriteFileLimit checks the bound on content whose size no header
// states: the write is cut at the limit and leaves no file.
func TestWriteFileLimit(t *testing.T) {
	const limit = 1 << 20
	root := filepath.Join(t.TempDir(), "root")
	tr, err := New(root, Options{MaxUsage: limit})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var le *LimitError
	err = tr.WriteFile("f", strings.NewReader(strings.Repeat("x", 2*limit)), 0o644, 0, 0, time.Time{})
	if !errors.As(err, &le) || err.Error() != "the files would take the image past its unpack limit of 1 MiB" {
		t.Fatalf("WriteFile: %v", err)
	}
	if tr.Exists("f") || tr.Usage() > limit {
		t.Errorf("after a refused write: exists %v, usage %d", tr.Exists("f"), tr.Usage())
	}
	if _, err := os.Lstat(filepath.Join(root, "f")); !os.IsNotExist(err) {
		t.Errorf("the refused file is on disk: %v", err)
	}
}

// diskBytes sums the sizes of the files under dir.
func diskBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// fuzzLimit bounds the fuzzed tree, so that an entry of any size (a
// sparse one costs a few bytes of input) is cheap to refuse.
const fuzzLimit = 4 << 20

// FuzzApplyLayer feeds arbitrary tar streams (after a fixed first layer
// full of symlinks) and checks that nothing appears outside the tree and
// that the tree stays within its MaxUsage.
func FuzzApplyLayer(f *testing.F) {
	f.Add(tarOf(f, reg("evil/etc/x", "x"), sym("a", "/"), reg("a/b", "y")))
	f.Add(tarOf(f, reg("../x", "x")))
	f.Add(tarOf(f, hard("h", "up/etc/passwd"), reg("opq/.wh..wh..opq", ""), reg("rel/.wh.x", "")))
	for _, sf := range tartest.SparseFormats {
		f.Add(tartest.Sparse(sf, "evil/sparse", 1<<40, "data"))
		f.Add(tartest.Sparse(sf, "small", 3<<10, "data"))
	}
	f.Fuzz(func(t *testing.T, layer []byte) {
		sandbox := t.TempDir()
		tr, err := New(filepath.Join(sandbox, "root"), Options{MaxUsage: fuzzLimit})
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		base := tarOf(t, sym("evil", "/"), sym("up", "/.."), sym("rel", "usr/../etc"), dir("opq/"), reg("opq/f", "f"))
		if err := tr.ApplyLayer(context.Background(), bytes.NewReader(base)); err != nil {
			t.Fatal(err)
		}
		tr.ApplyLayer(context.Background(), bytes.NewReader(layer))
		tr.Finish()
		if entries, _ := os.ReadDir(sandbox); len(entries) != 1 {
			t.Fatalf("sandbox holds %v", entries)
		}
		if u, n := tr.Usage(), diskBytes(t, sandbox); u > fuzzLimit || n > fuzzLimit {
			t.Fatalf("usage %d, %d bytes on disk; limit %d", u, n, fuzzLimit)
		}
	})
}

// TestMakeDiskOwnersWithoutRoot builds a disk as a build without root
// does (staging files owned by the builder) and checks that the layers'
// owners reach the disk through debugfs.
func TestMakeDiskOwnersWithoutRoot(t *testing.T) {
	for _, tool := range []string{"mke2fs", "debugfs", "qemu-img"} {
		if _, err := LookTool(tool); err != nil {
			t.Skip(err)
		}
	}
	dir := t.TempDir()
	tr, err := New(filepath.Join(dir, "root"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	tr.chown = false // as when not root, whoever runs the test
	layer := tarOf(t,
		tarEntry{name: "home/app/", typ: tar.TypeDir, mode: 0o750, uid: 1000, gid: 1001},
		tarEntry{name: "home/app/data", typ: tar.TypeReg, body: "x", uid: 1000, gid: 1001},
		tarEntry{name: "home/app/link", typ: tar.TypeSymlink, link: "data", uid: 1002, gid: 1003},
		tarEntry{name: "home/app/hard", typ: tar.TypeLink, link: "home/app/data"},
		reg("etc/passwd", "root"),
	)
	if err := tr.ApplyLayer(context.Background(), bytes.NewReader(layer)); err != nil {
		t.Fatal(err)
	}
	if err := tr.Finish(); err != nil {
		t.Fatal(err)
	}
	qcow2 := filepath.Join(dir, "disk.qcow2")
	if err := tr.MakeDisk(context.Background(), qcow2, 64<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(qcow2 + ".raw"); !os.IsNotExist(err) {
		t.Errorf("raw image left behind: %v", err)
	}
	raw := filepath.Join(dir, "raw")
	qemuImg, _ := LookTool("qemu-img")
	if out, err := exec.Command(qemuImg, "convert", "-f", "qcow2", "-O", "raw", qcow2, raw).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	debugfs, _ := LookTool("debugfs")
	for p, want := range map[string]string{
		"/home/app":      "User:  1000   Group:  1001",
		"/home/app/data": "User:  1000   Group:  1001",
		"/home/app/hard": "User:  1000   Group:  1001",
		"/home/app/link": "User:  1002   Group:  1003",
		"/etc/passwd":    "User:     0   Group:     0",
		"/home":          "User:     0   Group:     0",
	} {
		out, _ := exec.Command(debugfs, "-R", "stat "+p, raw).CombinedOutput()
		if !strings.Contains(string(out), want) {
			t.Errorf("%s: want %q in\n%s", p, want, out)
		}
	}
}
