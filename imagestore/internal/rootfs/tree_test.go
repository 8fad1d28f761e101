package rootfs

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gondolin/gondolin/imagestore/internal/tartest"
)

func TestCleanName(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  string
	}{
		{in: "./usr/bin/bash", want: "usr/bin/bash"},
		{in: "usr/bin/", want: "usr/bin"},
		{in: "./", want: ""},
		{in: ".", want: ""},
		{in: "./a//b/./c", want: "a/b/c"},
		{in: "", wantErr: "empty"},
		{in: "/etc/passwd", wantErr: "absolute"},
		{in: ".//etc", wantErr: "absolute"},
		{in: "../x", wantErr: "escapes"},
		{in: "./a/../../x", wantErr: "escapes"},
		{in: "a/..", wantErr: "escapes"},
		{in: "a/b\nc", wantErr: "control"},
	}
	for _, tt := range tests {
		got, err := cleanName(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("cleanName(%q) = %q, %v; want error about %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("cleanName(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// tarEntry is one entry of a test archive.
type tarEntry struct {
	name, link string
	typ        byte
	mode       int64
	body       string
	uid, gid   int
}

func tarOf(t testing.TB, entries ...tarEntry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		mode := e.mode
		if mode == 0 {
			mode = 0o644
			if e.typ == tar.TypeDir {
				mode = 0o755
			}
		}
		hdr := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: mode, Size: int64(len(e.body)), Uid: e.uid, Gid: e.gid}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		if e.typ == tar.TypeChar {
			hdr.Devmajor, hdr.Devminor = 1, 3
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Size > 0 {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func reg(name, body string) tarEntry { return tarEntry{name: name, typ: tar.TypeReg, body: body} }
func dir(name string) tarEntry       { return tarEntry{name: name, typ: tar.TypeDir} }
func sym(name, target string) tarEntry {
	return tarEntry{name: name, typ: tar.TypeSymlink, link: target}
}
func hard(name, target string) tarEntry { return tarEntry{name: name, typ: tar.TypeLink, link: target} }

func extractInto(t *testing.T, staging string, entries ...tarEntry) error {
	t.Helper()
	tr, err := New(staging, Options{UsrMerged: true, Skip: []string{"usr/share/doc", "usr/share/man"}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Extract(context.Background(), bytes.NewReader(tarOf(t, entries...)), nil); err != nil {
		return err
	}
	return tr.Finish()
}

func TestExtract(t *testing.T) {
	// Everything an attacker might try lands inside the staging directory,
	// which itself sits inside a sandbox directory we can check.
	sandbox := t.TempDir()
	staging := filepath.Join(sandbox, "root")
	err := extractInto(t, staging,
		dir("./"),
		dir("./bin/"),
		reg("./bin/tool", "tool"),
		tarEntry{name: "./usr/bin/suid", typ: tar.TypeReg, mode: 0o4755, body: "s"},
		tarEntry{name: "./usr/lib/ro/", typ: tar.TypeDir, mode: 0o555},
		reg("./usr/lib/ro/file", "inside a read-only dir"),
		hard("./usr/bin/tool2", "./bin/tool"),
		// An absolute symlink is resolved against the staging root...
		sym("./usr/lib/etc", "/etc"),
		reg("./usr/lib/etc/through-abs", "abs"),
		// ...and ".." stops at the root.
		sym("./up", "../../../.."),
		reg("./up/through-up", "up"),
		// A file replaces a symlink instead of writing through it.
		sym("./usr/bin/hostname", "/etc/hostname"),
		reg("./usr/bin/hostname", "replaced"),
		sym("./lib64/ld.so", "/lib/x86_64-linux-gnu/ld.so"),
		reg("./usr/share/doc/pkg/README", "skipped"),
		reg("./usr/share/man/man1/x.1", "skipped"),
		tarEntry{name: "./dev/null", typ: tar.TypeChar},
		reg("./etc/overwritten", "one"),
		reg("./etc/overwritten", "two"),
	)
	if err != nil {
		t.Fatal(err)
	}
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(staging, p))
		if err != nil {
			return "<" + err.Error() + ">"
		}
		return string(b)
	}
	for p, want := range map[string]string{
		"usr/bin/tool":             "tool",
		"bin/tool":                 "tool", // through the merged-/usr link
		"usr/bin/tool2":            "tool",
		"usr/lib/ro/file":          "inside a read-only dir",
		"etc/through-abs":          "abs",
		"through-up":               "up",
		"usr/bin/hostname":         "replaced",
		"etc/overwritten":          "two",
		"usr/lib64/ld.so":          "<stat " + filepath.Join(staging, "usr/lib64/ld.so") + ": no such file or directory>",
		"usr/share/doc/pkg/README": "<open " + filepath.Join(staging, "usr/share/doc/pkg/README") + ": no such file or directory>",
	} {
		if p == "usr/lib64/ld.so" {
			if target, err := os.Readlink(filepath.Join(staging, p)); err != nil || target != "/lib/x86_64-linux-gnu/ld.so" {
				t.Errorf("%s -> %q, %v", p, target, err)
			}
			continue
		}
		if got := read(p); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	for _, link := range []string{"bin", "sbin", "lib", "lib64"} {
		if target, err := os.Readlink(filepath.Join(staging, link)); err != nil || target != "usr/"+link {
			t.Errorf("%s -> %q, %v; want usr/%s", link, target, err, link)
		}
	}
	st1, _ := os.Stat(filepath.Join(staging, "usr/bin/tool"))
	st2, _ := os.Stat(filepath.Join(staging, "usr/bin/tool2"))
	if !os.SameFile(st1, st2) {
		t.Error("hard link is a copy")
	}
	if st, _ := os.Lstat(filepath.Join(staging, "usr/bin/suid")); st.Mode()&os.ModeSetuid == 0 || st.Mode().Perm() != 0o755 {
		t.Errorf("suid mode %v", st.Mode())
	}
	if st, _ := os.Stat(filepath.Join(staging, "usr/lib/ro")); st.Mode().Perm() != 0o555 {
		t.Errorf("read-only dir mode %v", st.Mode())
	}
	if _, err := os.Lstat(filepath.Join(staging, "dev/null")); err == nil {
		t.Error("device node was created")
	}
	// Nothing outside the staging directory.
	entries, _ := os.ReadDir(sandbox)
	if len(entries) != 1 {
		t.Errorf("sandbox holds %v", entries)
	}
	if err := RemoveAll(staging); err != nil {
		t.Fatalf("removeAll: %v", err)
	}
}

func TestExtractRejects(t *testing.T) {
	tests := []struct {
		name    string
		entries []tarEntry
		wantErr string
	}{
		{"dotdot", []tarEntry{reg("../escape", "x")}, "escapes"},
		{"dotdot inside", []tarEntry{reg("./usr/../../escape", "x")}, "escapes"},
		{"absolute", []tarEntry{reg("/etc/passwd", "x")}, "absolute"},
		{"hard link out", []tarEntry{hard("./x", "../../etc/passwd")}, "escapes"},
		{"hard link absolute", []tarEntry{hard("./x", "/etc/passwd")}, "absolute"},
		{"hard link to nothing", []tarEntry{hard("./x", "./missing")}, "not a file in the tree"},
		{"hard link to dir", []tarEntry{dir("./d"), hard("./x", "./d")}, "not a file in the tree"},
		{"symlink loop", []tarEntry{sym("./a", "b"), sym("./b", "a"), reg("./a/x", "x")}, "too many levels"},
		{"file over dir", []tarEntry{dir("./d"), reg("./d", "x")}, "directory is in the way"},
		{"dir under file", []tarEntry{reg("./f", "x"), reg("./f/g", "y")}, "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sandbox := t.TempDir()
			err := extractInto(t, filepath.Join(sandbox, "root"), tt.entries...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("extract: %v; want error about %q", err, tt.wantErr)
			}
			if entries, _ := os.ReadDir(sandbox); len(entries) != 1 {
				t.Fatalf("sandbox holds %v", entries)
			}
		})
	}
}

// TestExtractLimit checks that a package's sparse entry counts with its
// apparent size too. Extract takes PAX sparse entries, which are
// TypeReg, as files, and skips old GNU ones (type 'S') as dpkg would
// not unpack them.
func TestExtractLimit(t *testing.T) {
	for _, f := range tartest.SparseFormats {
		t.Run(f.String(), func(t *testing.T) {
			staging := filepath.Join(t.TempDir(), "root")
			tr, err := New(staging, Options{MaxUsage: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			err = tr.Extract(context.Background(), bytes.NewReader(tartest.Sparse(f, "./big", 64<<20, "x")), nil)
			want := "./big: a file of 64 MiB would take the image past its unpack limit of 1 MiB"
			if f == tartest.GNU {
				want = ""
			}
			if (err == nil) != (want == "") || err != nil && err.Error() != want {
				t.Fatalf("Extract: %v; want %q", err, want)
			}
			if _, err := os.Lstat(filepath.Join(staging, "big")); !os.IsNotExist(err) {
				t.Errorf("big is on disk: %v", err)
			}
		})
	}
}

// FuzzPlace checks that no entry name, whatever symlinks the tree holds,
// resolves to a path outside the tree.
func FuzzPlace(f *testing.F) {
	for _, s := range []string{"./bin/sh", "../x", "./abs/../../x", "./up/up/etc/passwd", "./loop/x", "/x", "./a\x00b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		tr := &Tree{nodes: map[string]*node{}, opts: Options{UsrMerged: true}}
		for p, target := range map[string]string{
			"bin": "usr/bin", "lib": "usr/lib", "up": "../..", "abs": "/usr/lib", "usr/lib/rel": "../../..",
			"loop": "loop", "dotdot": "..", "empty": "", "usr/lib/deep": "/up/abs/rel",
		} {
			tr.nodes[p] = &node{kind: kindSymlink, target: target}
		}
		p, err := tr.place(name)
		if err != nil || p == "" {
			return
		}
		if !filepath.IsLocal(p) || path.Clean(p) != p || strings.HasPrefix(p, "../") || p == ".." {
			t.Fatalf("place(%q) = %q escapes the root", name, p)
		}
		for el := range strings.SplitSeq(p, "/") {
			if el == ".." || el == "." || el == "" {
				t.Fatalf("place(%q) = %q has element %q", name, p, el)
			}
		}
	})
}
