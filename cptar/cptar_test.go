package cptar

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// entry is one header of a hand-made stream, with its file's content.
type entry struct {
	typ      byte
	name     string
	mode     int64
	linkname string
	body     string
}

// stream makes a tar stream of entries, the way a hostile guest would.
func stream(t testing.TB, entries ...entry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		hdr := &tar.Header{Typeflag: e.typ, Name: e.name, Mode: mode, Linkname: e.linkname, Size: int64(len(e.body)),
			ModTime: time.Unix(1e9, 0), Format: tar.FormatPAX}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
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

func TestRoundTrip(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	mtime := time.Date(2020, 1, 2, 3, 4, 5, 123456789, time.UTC)
	files := []struct {
		name string
		mode fs.FileMode
		body string
		link string
	}{
		{name: ".", mode: 0o750 | fs.ModeDir},
		{name: "secret", mode: 0o600, body: "s3cret\n"},
		{name: "run.sh", mode: 0o755, body: "#!/bin/sh\n"},
		{name: "empty", mode: 0o700 | fs.ModeDir},
		{name: "ro", mode: 0o555 | fs.ModeDir},
		{name: "sub", mode: 0o755 | fs.ModeDir},
		{name: "sub/deep", mode: 0o640, body: strings.Repeat("x", 100000)},
		{name: "link", mode: fs.ModeSymlink, link: "secret"},
		{name: "dangling", mode: fs.ModeSymlink, link: "/no/such/file"},
		{name: "suid", mode: 0o755 | fs.ModeSetuid, body: "elf"},
		{name: "sticky", mode: 0o777 | fs.ModeSticky | fs.ModeDir},
		{name: strings.Repeat("n", 200), mode: 0o644, body: "long"},
	}
	for _, f := range files {
		p := filepath.Join(src, f.name)
		switch {
		case f.mode.IsDir():
			os.MkdirAll(p, 0o700)
		case f.mode&fs.ModeSymlink != 0:
			if err := os.Symlink(f.link, p); err != nil {
				t.Fatal(err)
			}
			continue
		default:
			if err := os.WriteFile(p, []byte(f.body), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Modes and times last: a read-only directory, and times the
	// writes above would change.
	for i := len(files) - 1; i >= 0; i-- {
		f := files[i]
		p := filepath.Join(src, f.name)
		if f.mode&fs.ModeSymlink == 0 {
			os.Chmod(p, f.mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSticky))
			os.Chtimes(p, mtime, mtime)
		} else {
			ts := unix.NsecToTimespec(mtime.UnixNano())
			unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
		}
	}
	var buf bytes.Buffer
	if err := Write(&buf, src, "src", nil); err != nil {
		t.Fatal(err)
	}
	for _, special := range []bool{false, true} {
		t.Run("special="+map[bool]string{false: "dropped", true: "kept"}[special], func(t *testing.T) {
			dst := t.TempDir()
			root, err := os.OpenRoot(dst)
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			if err := Extract(bytes.NewReader(buf.Bytes()), root, Options{Name: "copy", SpecialBits: special}); err != nil {
				t.Fatal(err)
			}
			for _, f := range files {
				p := filepath.Join(dst, "copy", f.name)
				fi, err := os.Lstat(p)
				if err != nil {
					t.Errorf("%s: %v", f.name, err)
					continue
				}
				want := f.mode
				if !special {
					want &^= fs.ModeSetuid | fs.ModeSticky | 0o022
				}
				if f.mode&fs.ModeSymlink != 0 {
					if got, _ := os.Readlink(p); got != f.link {
						t.Errorf("%s: link to %q, want %q", f.name, got, f.link)
					}
					if !fi.ModTime().Equal(mtime) {
						t.Errorf("%s: mtime %v, want %v", f.name, fi.ModTime(), mtime)
					}
					continue
				}
				if fi.Mode() != want {
					t.Errorf("%s: mode %v, want %v", f.name, fi.Mode(), want)
				}
				if !fi.ModTime().Equal(mtime) {
					t.Errorf("%s: mtime %v, want %v", f.name, fi.ModTime(), mtime)
				}
				if !f.mode.IsDir() {
					if b, _ := os.ReadFile(p); string(b) != f.body {
						t.Errorf("%s: content %.20q, want %.20q", f.name, b, f.body)
					}
				}
			}
			os.Chmod(filepath.Join(dst, "copy", "ro"), 0o755) // for t.TempDir's cleanup
		})
	}
}

// TestWriteSource: what a stream holds for a file, a symlink, a
// directory's contents, and a source that is missing.
func TestWriteSource(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644)
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	os.WriteFile(filepath.Join(dir, "d", "in"), []byte("y"), 0o644)
	os.Symlink("d", filepath.Join(dir, "ld"))
	tests := []struct {
		src  string
		want []string
	}{
		{"f", []string{"f"}},
		{"ld", []string{"ld"}},
		{"ld/", []string{"ld/", "ld/in"}},
		{"d/.", []string{"d/", "d/in"}},
	}
	for _, tt := range tests {
		t.Run(tt.src, func(t *testing.T) {
			var buf bytes.Buffer
			base, _ := SourceName(tt.src)
			if err := Write(&buf, dir+"/"+tt.src, base, nil); err != nil {
				t.Fatal(err)
			}
			var got []string
			tr := tar.NewReader(&buf)
			for {
				hdr, err := tr.Next()
				if err != nil {
					break
				}
				got = append(got, hdr.Name)
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("entries %q, want %q", got, tt.want)
			}
		})
	}
	if err := Write(&bytes.Buffer{}, filepath.Join(dir, "nope"), "nope", nil); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing source: %v, want fs.ErrNotExist", err)
	}
}

// hostileCases are streams a guest could send instead of its files. want
// lists paths under the root and what each must be afterwards ("" for
// absent; "dir"; "link:TARGET"; anything else is a file's content).
var hostileCases = []struct {
	name     string
	rename   string
	entries  []entry
	want     map[string]string
	skips    int
	wantErr  bool
	prepared bool // the root holds victim (a file) and pre -> ../outside beforehand
}{
	{name: "dotdot", entries: []entry{{typ: tar.TypeReg, name: "../x", body: "evil"}, {typ: tar.TypeReg, name: "a/../../x", body: "evil"}},
		want: map[string]string{"x": ""}, skips: 2},
	{name: "absolute", entries: []entry{{typ: tar.TypeReg, name: "/etc/gondolin-cptar-test", body: "evil"}},
		want: map[string]string{"etc": ""}, skips: 1},
	{name: "symlink then write through", entries: []entry{
		{typ: tar.TypeSymlink, name: "l", linkname: "../outside"},
		{typ: tar.TypeReg, name: "l/secret", body: "evil"},
		{typ: tar.TypeSymlink, name: "abs", linkname: "/"},
		{typ: tar.TypeReg, name: "abs/tmp/gondolin-cptar-test", body: "evil"},
	}, want: map[string]string{"l": "link:../outside", "abs": "link:/"}, skips: 2},
	{name: "symlink in root then write through", entries: []entry{
		{typ: tar.TypeReg, name: "victim", body: "orig"},
		{typ: tar.TypeSymlink, name: "l", linkname: "victim"},
		{typ: tar.TypeReg, name: "l", body: "new"},
		{typ: tar.TypeSymlink, name: "d", linkname: "."},
		{typ: tar.TypeReg, name: "d/victim", body: "evil"},
	}, want: map[string]string{"victim": "orig", "l": "new", "d": "link:."}, skips: 1},
	{name: "symlink already there", prepared: true, entries: []entry{
		{typ: tar.TypeReg, name: "pre/secret", body: "evil"},
		{typ: tar.TypeReg, name: "pre", body: "replaced"},
	}, want: map[string]string{"pre": "replaced"}, skips: 1},
	{name: "hard links", prepared: true, entries: []entry{
		{typ: tar.TypeLink, name: "h1", linkname: "../outside/secret"},
		{typ: tar.TypeLink, name: "h2", linkname: "victim"},
		{typ: tar.TypeLink, name: "h3", linkname: "/etc/passwd"},
		{typ: tar.TypeReg, name: "mine", body: "mine"},
		{typ: tar.TypeLink, name: "h4", linkname: "mine"},
		{typ: tar.TypeReg, name: "h4", body: "new"},
	}, want: map[string]string{"h1": "", "h2": "", "h3": "", "victim": "victim", "mine": "mine", "h4": "new"}, skips: 3},
	{name: "devices and fifos", entries: []entry{
		{typ: tar.TypeChar, name: "null"},
		{typ: tar.TypeBlock, name: "sda"},
		{typ: tar.TypeFifo, name: "fifo"},
		{typ: 'V', name: "volume"},
	}, want: map[string]string{"null": "", "sda": "", "fifo": "", "volume": ""}, skips: 4},
	{name: "setuid", entries: []entry{{typ: tar.TypeReg, name: "su", mode: 0o4755, body: "elf"}, {typ: tar.TypeDir, name: "sg", mode: 0o2777}},
		want: map[string]string{"su": "elf", "sg": "dir"}},
	{name: "very long name", entries: []entry{
		{typ: tar.TypeReg, name: strings.Repeat("a/", 2100) + "x", body: "evil"},
		{typ: tar.TypeSymlink, name: "l", linkname: strings.Repeat("b", 5000)},
	}, want: map[string]string{"a": "", "l": ""}, skips: 2},
	{name: "file over directory", entries: []entry{
		{typ: tar.TypeDir, name: "d"},
		{typ: tar.TypeReg, name: "d/keep", body: "keep"},
		{typ: tar.TypeReg, name: "d", body: "evil"},
	}, want: map[string]string{"d": "dir", "d/keep": "keep"}, skips: 1},
	{name: "renamed", rename: "out", entries: []entry{
		{typ: tar.TypeDir, name: "whatever"},
		{typ: tar.TypeReg, name: "other/f", body: "f"},
		{typ: tar.TypeReg, name: ".", body: "evil"},
	}, want: map[string]string{"out": "dir", "out/f": "f", "whatever": "", "other": ""}, skips: 1},
	{name: "renamed top is a symlink", rename: "out", entries: []entry{
		{typ: tar.TypeSymlink, name: "top", linkname: "."},
		{typ: tar.TypeReg, name: "top/victim", body: "evil"},
	}, prepared: true, want: map[string]string{"out": "link:.", "victim": "victim"}, skips: 1},
	{name: "truncated", entries: []entry{{typ: tar.TypeReg, name: "f", body: strings.Repeat("z", 2000)}},
		want: map[string]string{}, wantErr: true},
}

// checkOutside fails t if base holds anything but root and outside (with
// its secret, unchanged).
func checkOutside(t testing.TB, base string) {
	t.Helper()
	entries, _ := os.ReadDir(base)
	for _, e := range entries {
		if e.Name() != "root" && e.Name() != "outside" {
			t.Errorf("%s appeared beside the root", e.Name())
		}
	}
	entries, _ = os.ReadDir(filepath.Join(base, "outside"))
	if len(entries) != 1 {
		t.Errorf("outside holds %d entries, want 1", len(entries))
	}
	if b, err := os.ReadFile(filepath.Join(base, "outside", "secret")); string(b) != "secret" {
		t.Errorf("outside/secret: %q %v", b, err)
	}
	if _, err := os.Lstat("/etc/gondolin-cptar-test"); err == nil {
		t.Errorf("/etc/gondolin-cptar-test was written")
	}
	if _, err := os.Lstat("/tmp/gondolin-cptar-test"); err == nil {
		t.Errorf("/tmp/gondolin-cptar-test was written")
	}
}

// hostileBase makes base/root (the extraction's root) and base/outside.
func hostileBase(t testing.TB, prepared bool) (base string, root *os.Root) {
	base = t.TempDir()
	os.Mkdir(filepath.Join(base, "root"), 0o755)
	os.Mkdir(filepath.Join(base, "outside"), 0o755)
	os.WriteFile(filepath.Join(base, "outside", "secret"), []byte("secret"), 0o600)
	if prepared {
		os.WriteFile(filepath.Join(base, "root", "victim"), []byte("victim"), 0o644)
		os.Symlink("../outside", filepath.Join(base, "root", "pre"))
	}
	root, err := os.OpenRoot(filepath.Join(base, "root"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	return base, root
}

// TestExtractHostileIntoRoot sends every hostile stream in the mode that
// copies a directory's contents into an existing one (cp SESSION:d/. DIR):
// whatever lands inside, nothing lands or changes outside.
func TestExtractHostileIntoRoot(t *testing.T) {
	for _, tt := range hostileCases {
		t.Run(tt.name, func(t *testing.T) {
			base, root := hostileBase(t, tt.prepared)
			data := stream(t, tt.entries...)
			if tt.wantErr {
				data = data[:700]
			}
			err := Extract(bytes.NewReader(data), root, Options{Name: IntoRoot, Skipped: func(string, string) {}})
			if (err != nil) != tt.wantErr {
				t.Fatalf("error %v, want one: %v", err, tt.wantErr)
			}
			checkOutside(t, base)
			filepath.WalkDir(filepath.Join(base, "root"), func(p string, d fs.DirEntry, err error) error {
				if fi, err := os.Lstat(p); err == nil && fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky|fs.ModeDevice|fs.ModeNamedPipe) != 0 {
					t.Errorf("%s: mode %v", p, fi.Mode())
				}
				return nil
			})
		})
	}
}

func TestExtractHostile(t *testing.T) {
	for _, tt := range hostileCases {
		t.Run(tt.name, func(t *testing.T) {
			base, root := hostileBase(t, tt.prepared)
			data := stream(t, tt.entries...)
			if tt.wantErr {
				data = data[:700]
			}
			var skips []string
			err := Extract(bytes.NewReader(data), root, Options{Name: tt.rename, Skipped: func(name, why string) {
				skips = append(skips, name+": "+why)
			}})
			if (err != nil) != tt.wantErr {
				t.Fatalf("error %v, want one: %v", err, tt.wantErr)
			}
			if len(skips) != tt.skips {
				t.Errorf("skipped %q, want %d", skips, tt.skips)
			}
			checkOutside(t, base)
			for name, want := range tt.want {
				p := filepath.Join(base, "root", name)
				fi, err := os.Lstat(p)
				switch {
				case want == "":
					if err == nil {
						t.Errorf("%s exists", name)
					}
				case err != nil:
					t.Errorf("%s: %v", name, err)
				case want == "dir":
					if !fi.IsDir() {
						t.Errorf("%s: %v, want a directory", name, fi.Mode())
					}
				case strings.HasPrefix(want, "link:"):
					if got, _ := os.Readlink(p); got != strings.TrimPrefix(want, "link:") {
						t.Errorf("%s: %v -> %q, want %s", name, fi.Mode(), got, want)
					}
				default:
					if b, _ := os.ReadFile(p); !fi.Mode().IsRegular() || string(b) != want {
						t.Errorf("%s: %v %q, want %q", name, fi.Mode(), b, want)
					}
				}
				if fi != nil && fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
					t.Errorf("%s: mode %v keeps a special bit", name, fi.Mode())
				}
			}
		})
	}
}

// TestExtractKeepsWhatWasThere: a stream merges into the user's
// directories without changing their modes (a guest must not open up a
// home directory or take /tmp's sticky bit), and does not replace a
// device, fifo or socket that sits at one of its names.
func TestExtractKeepsWhatWasThere(t *testing.T) {
	base, root := hostileBase(t, false)
	dir := filepath.Join(base, "root")
	os.Mkdir(filepath.Join(dir, "keep"), 0o700)
	os.Chmod(filepath.Join(dir, "keep"), 0o700|fs.ModeSticky)
	os.Chmod(dir, 0o750)
	if err := unix.Mkfifo(filepath.Join(dir, "pipe"), 0o600); err != nil {
		t.Fatal(err)
	}
	var skips []string
	data := stream(t,
		entry{typ: tar.TypeDir, name: "src", mode: 0o777},
		entry{typ: tar.TypeDir, name: "src/keep", mode: 0o777},
		entry{typ: tar.TypeReg, name: "src/keep/f", body: "f"},
		entry{typ: tar.TypeReg, name: "src/pipe", body: "evil"},
		entry{typ: tar.TypeReg, name: "src/" + strings.Repeat("d/", 1000) + "deep", body: "deep"},
	)
	if err := Extract(bytes.NewReader(data), root, Options{Name: IntoRoot, Skipped: func(name, why string) {
		skips = append(skips, why)
	}}); err != nil {
		t.Fatal(err)
	}
	checkOutside(t, base)
	for name, want := range map[string]fs.FileMode{".": 0o750 | fs.ModeDir, "keep": 0o700 | fs.ModeSticky | fs.ModeDir, "pipe": 0o600 | fs.ModeNamedPipe} {
		if fi, err := os.Lstat(filepath.Join(dir, name)); err != nil || fi.Mode() != want {
			t.Errorf("%s: %v %v, want %v as it was", name, fi.Mode(), err, want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "keep", "f")); string(b) != "f" {
		t.Errorf("keep/f: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, strings.Repeat("d/", 1000)+"deep")); string(b) != "deep" {
		t.Errorf("the deep file: %q", b)
	}
	if len(skips) != 1 || skips[0] != "would replace a fifo" {
		t.Errorf("skipped %q, want the fifo", skips)
	}
}

func TestSourceName(t *testing.T) {
	wd, _ := os.Getwd()
	tests := []struct {
		src, base string
		contents  bool
	}{
		{"a/b", "b", false},
		{"a/b/", "b", false},
		{"a/b/.", "b", true},
		{".", filepath.Base(wd), true},
		{"..", filepath.Base(filepath.Dir(wd)), false},
		{"/.", "root", true},
		{"/", "root", false},
	}
	for _, tt := range tests {
		if base, contents := SourceName(tt.src); base != tt.base || contents != tt.contents {
			t.Errorf("SourceName(%q) = %q %v, want %q %v", tt.src, base, contents, tt.base, tt.contents)
		}
	}
}

func TestExtractGarbage(t *testing.T) {
	base, root := hostileBase(t, false)
	for _, data := range [][]byte{[]byte("not a tar stream at all"), bytes.Repeat([]byte{0xff}, 1024)} {
		if err := Extract(bytes.NewReader(data), root, Options{}); err == nil {
			t.Errorf("%.10q: no error", data)
		}
	}
	checkOutside(t, base)
	if err := Extract(bytes.NewReader(nil), root, Options{Name: "../x"}); err == nil {
		t.Errorf("a Name with a slash: no error")
	}
}

func TestDestination(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	os.WriteFile(filepath.Join(dir, "f"), nil, 0o644)
	os.Symlink("d", filepath.Join(dir, "link"))
	tests := []struct {
		dest, base string
		kind       Kind
		dir, name  string
		notFound   bool
		fails      bool
	}{
		{dest: "d", base: "src", kind: KindEntry, dir: "d", name: "src"},
		{dest: "new", base: "src", kind: KindEntry, dir: ".", name: "new"},
		{dest: "f", base: "src", kind: KindEntry, dir: ".", name: "f"},
		{dest: "d/new", base: "src", kind: KindEntry, dir: "d", name: "new"},
		{dest: "nodir/new", base: "src", kind: KindEntry, notFound: true},
		{dest: "new/", base: "src", kind: KindEntry, notFound: true},
		{dest: "f/x", base: "src", kind: KindEntry, fails: true},
		{dest: "d", base: "src", kind: KindContents, dir: "d", name: IntoRoot},
		{dest: "link", base: "src", kind: KindContents, dir: "link", name: IntoRoot}, // link -> d: into d, the link kept
		{dest: ".", base: "src", kind: KindContents, dir: ".", name: IntoRoot},
		{dest: "new", base: "src", kind: KindContents, dir: ".", name: "new"},
		{dest: "f", base: "src", kind: KindContents, fails: true},
		{dest: "d", kind: KindTar, dir: "d"},
		{dest: "f", kind: KindTar, fails: true},
		{dest: "nope", kind: KindTar, notFound: true},
		{dest: "d", base: "..", kind: KindEntry, fails: true},
		{dest: "d", kind: "bogus", fails: true},
	}
	for _, tt := range tests {
		t.Run(string(tt.kind)+" "+tt.dest, func(t *testing.T) {
			gotDir, gotName, err := Destination(dir+"/"+tt.dest, tt.base, tt.kind)
			switch {
			case tt.notFound:
				if !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("error %v, want fs.ErrNotExist", err)
				}
			case tt.fails:
				if err == nil || errors.Is(err, fs.ErrNotExist) {
					t.Errorf("error %v, want one", err)
				}
			case err != nil:
				t.Errorf("error %v", err)
			case filepath.Clean(gotDir) != filepath.Join(dir, tt.dir) || gotName != tt.name:
				t.Errorf("got %s %q, want %s %q", gotDir, gotName, filepath.Join(dir, tt.dir), tt.name)
			}
		})
	}
}

// TestAgentMain: the agent's argv, exit codes and messages.
func TestAgentMain(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o755)
	os.Chmod(filepath.Join(dir, "f"), 0o755|fs.ModeSetuid)
	var out, errb bytes.Buffer
	if code, ok := AgentMain([]string{"agent", CopyOutArg, filepath.Join(dir, "f")}, nil, &out, &errb); !ok || code != 0 {
		t.Fatalf("cp-out: %d %v %s", code, ok, errb.String())
	}
	os.Mkdir(filepath.Join(dir, "in"), 0o755)
	var said bytes.Buffer
	if code, _ := AgentMain([]string{"agent", CopyInArg, string(KindEntry), filepath.Join(dir, "in"), "f"}, &out, &said, &errb); code != 0 {
		t.Fatalf("cp-in: %d %s", code, errb.String())
	}
	if said.String() != ReadyLine {
		t.Errorf("cp-in said %q on stdout, want only %q", said.String(), ReadyLine)
	}
	if fi, err := os.Stat(filepath.Join(dir, "in", "f")); err != nil || fi.Mode() != 0o755|fs.ModeSetuid {
		t.Errorf("the guest's copy: %v %v, want setuid kept", fi.Mode(), err)
	}
	if code, _ := AgentMain([]string{"agent", CopyOutArg, filepath.Join(dir, "nope")}, nil, &out, &errb); code != ExitNotFound {
		t.Errorf("missing source: code %d", code)
	}
	if code, _ := AgentMain([]string{"agent", CopyInArg, string(KindEntry), filepath.Join(dir, "no", "dir"), "f"}, &out, io.Discard, &errb); code != ExitNotFound {
		t.Errorf("missing destination: code %d", code)
	}
	if code, ok := AgentMain([]string{"agent", CopyInArg}, nil, nil, &errb); !ok || code != 2 {
		t.Errorf("usage: %d %v", code, ok)
	}
	if _, ok := AgentMain([]string{"agent"}, nil, nil, &errb); ok {
		t.Errorf("no command taken as cp")
	}
}

// TestExtractSparse: a PAX sparse file of an exabyte of holes, in a few
// blocks of stream, is skipped rather than written out.
func TestExtractSparse(t *testing.T) {
	base, root := hostileBase(t, false)
	skipped := 0
	err := Extract(bytes.NewReader(sparseStream()), root, Options{Skipped: func(string, string) { skipped++ }})
	if err != nil || skipped != 1 {
		t.Errorf("extract: %v, %d skipped, want 1", err, skipped)
	}
	if _, err := os.Lstat(filepath.Join(base, "root", "huge")); err == nil {
		t.Errorf("the sparse file was written")
	}
	checkOutside(t, base)
}

// sparseStream is a PAX 0.1 sparse file of 2^60 bytes whose one byte of
// data is its last. (tar.Writer does not write sparse files.)
func sparseStream() []byte {
	var records string
	for _, kv := range []string{"GNU.sparse.size=1152921504606846976", "GNU.sparse.numblocks=1", "GNU.sparse.map=1152921504606846975,1"} {
		rec := " " + kv + "\n"
		n := len(rec) + 2
		if len(strconv.Itoa(n)) != 2 {
			panic(rec)
		}
		records += strconv.Itoa(n) + rec
	}
	var b bytes.Buffer
	b.Write(ustarBlock("PaxHeaders/huge", 'x', len(records)))
	b.Write(pad([]byte(records)))
	b.Write(ustarBlock("huge", '0', 1))
	b.Write(pad([]byte("x")))
	b.Write(make([]byte, 1024))
	return b.Bytes()
}

// ustarBlock is a USTAR header block.
func ustarBlock(name string, typ byte, size int) []byte {
	h := make([]byte, 512)
	copy(h, name)
	copy(h[100:], "0000644\x00")
	copy(h[108:], "0000000\x00")
	copy(h[116:], "0000000\x00")
	copy(h[124:], fmt.Sprintf("%011o\x00", size))
	copy(h[136:], "00000000000\x00")
	h[156] = typ
	copy(h[257:], "ustar\x0000")
	copy(h[148:], "        ")
	sum := 0
	for _, c := range h {
		sum += int(c)
	}
	copy(h[148:], fmt.Sprintf("%06o\x00 ", sum))
	return h
}

func pad(b []byte) []byte {
	return append(b, make([]byte, (512-len(b)%512)%512)...)
}

func TestFromHome(t *testing.T) {
	t.Setenv("HOME", "/root")
	for in, want := range map[string]string{"/abs": "/abs", "rel": "/root/rel", "d/.": "/root/d/.", ".": "/root/.", "../x": "/root/../x"} {
		if got := fromHome(in); got != want {
			t.Errorf("fromHome(%q) = %q, want %q", in, got, want)
		}
	}
}
