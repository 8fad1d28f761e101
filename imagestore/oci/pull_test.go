package oci

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/gondolin/gondolin/imagestore"
	"github.com/gondolin/gondolin/imagestore/internal/rootfs"
	"github.com/gondolin/gondolin/imagestore/internal/tartest"
	"github.com/gondolin/gondolin/imagestore/oci/ocitest"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testutil"
)

func TestLocalRef(t *testing.T) {
	for in, want := range map[string]string{
		"alpine":                        "alpine:latest",
		"alpine:3.20":                   "alpine:3.20",
		"docker.io/library/debian:12":   "debian:12",
		"127.0.0.1:5000/test/img:1":     "img:1",
		"ghcr.io/a/b/c/tool:v1.2_rc-3":  "tool:v1.2_rc-3",
		"example.com/x@sha256:" + hex64: "x:sha256-" + hex64[:12],
	} {
		got, err := LocalRef(in)
		if err != nil || got.String() != want {
			t.Errorf("LocalRef(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "UPPER/case", "a:b:c", "example.com/" + strings.Repeat("x", 70)} {
		if got, err := LocalRef(bad); err == nil {
			t.Errorf("LocalRef(%q) = %v; want an error", bad, got)
		}
	}
}

const hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func needTools(t *testing.T) {
	t.Helper()
	if err := rootfs.NeedTools("mke2fs", "qemu-img", "debugfs"); err != nil {
		t.Skip(err)
	}
}

// storeWithDefault opens a store holding a stand-in default image: Pull
// only points at its boot files, it never reads them.
func storeWithDefault(t *testing.T) (*imagestore.Store, *imagestore.Image) {
	t.Helper()
	s, err := imagestore.Open(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	var m imagestore.Manifest
	for _, part := range []struct {
		f            *imagestore.File
		body, format string
	}{
		{&m.Kernel, "kernel", imagestore.FormatPVH},
		{&m.Initramfs, "initramfs", imagestore.FormatCpio},
		{&m.Agent, "agent", imagestore.FormatELF},
	} {
		f, err := s.PutBlob(strings.NewReader(part.body))
		if err != nil {
			t.Fatal(err)
		}
		f.Format = part.format
		*part.f = f
	}
	m.Created, m.KernelRelease, m.Modules = time.Now().UTC(), "6.1.0-test", []string{"virtio_blk"}
	id, err := s.PutManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Tag(id, imagestore.Ref{Name: "default", Tag: "latest"}); err != nil {
		t.Fatal(err)
	}
	base, err := s.Resolve(layout.DefaultImage)
	if err != nil {
		t.Fatal(err)
	}
	return s, base
}

// rawDisk converts an image's root disk to raw for debugfs.
func rawDisk(t *testing.T, im *imagestore.Image) string {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "disk.raw")
	qemuImg, _ := rootfs.LookTool("qemu-img")
	if out, err := exec.Command(qemuImg, "convert", "-f", "qcow2", "-O", "raw", im.RootfsPath(), raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	return raw
}

func debugfs(t *testing.T, raw, request string) string {
	t.Helper()
	tool, _ := rootfs.LookTool("debugfs")
	out, err := exec.Command(tool, "-R", request, raw).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs %s: %v: %s", request, err, out)
	}
	return string(out)
}

func TestPull(t *testing.T) {
	needTools(t)
	store, base := storeWithDefault(t)
	host := ocitest.Registry(t)
	ref := host + "/test/img:1"
	cfg := v1.Config{Env: []string{"PATH=/usr/bin:/bin", "FOO=bar"}, WorkingDir: "/srv", Entrypoint: []string{"/bin/sh"}, Cmd: []string{"-c", "true"}, User: "1000"}
	img := ocitest.Image(t, cfg,
		ocitest.Layer(t,
			ocitest.Dir("etc/"), ocitest.File("etc/os-release", "ID=test\n"),
			ocitest.File("gone.txt", "deleted by the next layer"),
			ocitest.Dir("opq/"), ocitest.File("opq/old", "hidden by an opaque dir"),
			ocitest.Symlink("etc/resolv.conf", "../run/systemd/resolve/stub-resolv.conf"),
			ocitest.File("proc", "a file where a mount point goes"),
			ocitest.Entry{Name: "home/user/", Type: tar.TypeDir, Mode: 0o750},
		),
		ocitest.Layer(t,
			ocitest.File(".wh.gone.txt", ""),
			ocitest.File("opq/.wh..wh..opq", ""),
			ocitest.File("opq/new", "new"),
			ocitest.File("only-here.txt", "pulled from a registry\n"),
		),
	)
	ocitest.Push(t, ref, img)

	im, reused, err := Pull(context.Background(), store, ref, Options{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	if reused || !reflect.DeepEqual(im.Refs, []string{"img:1"}) {
		t.Fatalf("reused=%v refs=%v", reused, im.Refs)
	}
	m := im.Manifest
	if m.Kernel != base.Manifest.Kernel || m.Initramfs != base.Manifest.Initramfs || m.Agent != base.Manifest.Agent ||
		m.KernelRelease != "6.1.0-test" || m.Rootfs.Format != imagestore.FormatQcow2 {
		t.Errorf("manifest boot files: %+v", m)
	}
	digest, _ := img.Digest()
	wantOCI := &imagestore.OCIConfig{Source: ref, Digest: digest.String(), Env: cfg.Env, WorkingDir: "/srv", User: "1000", Entrypoint: cfg.Entrypoint, Cmd: cfg.Cmd}
	if !reflect.DeepEqual(m.OCI, wantOCI) {
		t.Errorf("oci config %+v, want %+v", m.OCI, wantOCI)
	}

	raw := rawDisk(t, im)
	if got := debugfs(t, raw, "cat /only-here.txt"); !strings.Contains(got, "pulled from a registry") {
		t.Errorf("only-here.txt: %q", got)
	}
	root := debugfs(t, raw, "ls -p /")
	for _, want := range []string{"/dev/", "/proc/", "/sys/", "/tmp/", "/run/", "/root/", "/etc/", "/opq/", "/home/"} {
		name := strings.Trim(want, "/")
		if !strings.Contains(root, "/"+name+"/") {
			t.Errorf("no %s in the root: %s", want, root)
		}
	}
	if strings.Contains(root, "/gone.txt/") {
		t.Error("whited-out gone.txt is on the disk")
	}
	if st := debugfs(t, raw, "stat /proc"); !strings.Contains(st, "Type: directory") {
		t.Errorf("/proc is not a directory: %s", st)
	}
	if st := debugfs(t, raw, "stat /etc/resolv.conf"); !strings.Contains(st, "Type: regular") {
		t.Errorf("/etc/resolv.conf is not a regular file: %s", st)
	}
	if opq := debugfs(t, raw, "ls -p /opq"); !strings.Contains(opq, "/new/") || strings.Contains(opq, "/old/") {
		t.Errorf("opaque dir holds: %s", opq)
	}
	if st := debugfs(t, raw, "stat /tmp"); !strings.Contains(st, "Mode:  01777") {
		t.Errorf("/tmp mode: %s", st)
	}

	// Pulling again is a no-op that only adds the tag.
	again, reused, err := Pull(context.Background(), store, ref, Options{Insecure: true, Tag: "copy:2"})
	if err != nil || !reused || again.ID != im.ID || !reflect.DeepEqual(again.Refs, []string{"copy:2", "img:1"}) {
		t.Fatalf("second pull: %v reused=%v id=%s refs=%v", err, reused, again.ID, again.Refs)
	}
	testutil.EmptyDir(t, store.TempDir())
}

// storeState lists the store's files, to show a failed pull left none.
func storeState(t *testing.T, s *imagestore.Store) []string {
	t.Helper()
	var files []string
	root := filepath.Dir(s.TempDir())
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			files = append(files, rel)
		}
		return nil
	})
	return files
}

func TestPullRejectsEscapes(t *testing.T) {
	needTools(t)
	host := ocitest.Registry(t)
	base := ocitest.Layer(t, ocitest.Dir("etc/"), ocitest.File("etc/passwd", "root:x:0:0::/root:/bin/sh\n"))
	tests := []struct {
		name    string
		layer   []ocitest.Entry
		wantErr string
	}{
		{"dotdot", []ocitest.Entry{ocitest.File("../etc/passwd", "x")},
			`entry "../etc/passwd": path "../etc/passwd" escapes the root`},
		{"dotdot inside", []ocitest.Entry{ocitest.File("usr/../../../etc/shadow", "x")}, "escapes the root"},
		{"hard link absolute", []ocitest.Entry{ocitest.Hardlink("passwd-copy", "/etc/passwd")},
			`entry "passwd-copy": hard link target "/etc/passwd" is absolute`},
		{"hard link up", []ocitest.Entry{ocitest.Hardlink("x", "../../etc/passwd")}, "escapes the root"},
		{"symlink climbs", []ocitest.Entry{ocitest.Symlink("usr/lib/evil", "../../../etc")},
			`entry "usr/lib/evil": symlink target "../../../etc" escapes the root`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store, _ := storeWithDefault(t)
			before := storeState(t, store)
			ref := host + "/evil/" + strings.ReplaceAll(tt.name, " ", "-") + ":1"
			ocitest.Push(t, ref, ocitest.Image(t, v1.Config{}, base, ocitest.Layer(t, tt.layer...)))
			_, _, err := Pull(context.Background(), store, ref, Options{Insecure: true})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "layer 2 of 2 (") ||
				!errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("Pull = %v; want an ErrInvalid naming layer 2 of 2 and %q", err, tt.wantErr)
			}
			if after := storeState(t, store); !reflect.DeepEqual(after, before) {
				t.Fatalf("a rejected pull changed the store:\n%v\n%v", before, after)
			}
		})
	}
}

// TestPullRejectsSparseBomb pins the sparse-file bomb of the security
// review: a layer of a few KiB whose sparse entry claims more than the
// unpack limit is refused, in every sparse format archive/tar reads,
// before any of it is written, and the store is left as it was.
func TestPullRejectsSparseBomb(t *testing.T) {
	needTools(t)
	limitFileSize(t, 256<<20)
	host := ocitest.Registry(t)
	wantErr := `layer 1 of 1 (`
	wantLimit := fmt.Sprintf("unpack limit of %d GiB", maxUnpackedBytes>>30)
	for _, f := range tartest.SparseFormats {
		t.Run(f.String(), func(t *testing.T) {
			store, _ := storeWithDefault(t)
			before := storeState(t, store)
			ref := host + "/bomb/" + strings.ToLower(strings.ReplaceAll(f.String(), " ", "-")) + ":1"
			ocitest.Push(t, ref, ocitest.Image(t, v1.Config{}, ocitest.TarLayer(t, tartest.Sparse(f, "var/big", 1<<60, "x"))))
			_, _, err := Pull(context.Background(), store, ref, Options{Insecure: true})
			if err == nil || !errors.Is(err, errdefs.ErrInvalid) || strings.Contains(err.Error(), "\n") ||
				!strings.Contains(err.Error(), wantErr) || !strings.Contains(err.Error(), `entry "var/big"`) ||
				!strings.Contains(err.Error(), wantLimit) {
				t.Fatalf("Pull = %v; want one line, an ErrInvalid naming the layer, the entry and the %s", err, wantLimit)
			}
			if after := storeState(t, store); !reflect.DeepEqual(after, before) {
				t.Fatalf("a rejected pull changed the store:\n%v\n%v", before, after)
			}
			testutil.EmptyDir(t, store.TempDir())
		})
	}
}

// limitFileSize caps every file the test process writes at n bytes, so
// that code which writes a sparse entry's holes out fails at once with
// EFBIG (Go ignores SIGXFSZ) instead of filling the disk.
func limitFileSize(t *testing.T, n uint64) {
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	lim := old
	lim.Cur = min(n, old.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old) })
}

func TestPullNeedsDefaultImage(t *testing.T) {
	s, err := imagestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = Pull(context.Background(), s, "127.0.0.1:1/x:1", Options{Insecure: true})
	if err == nil || err.Error() != "pull needs the default image for its kernel and agent: run gondolin image build first" ||
		!errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Pull = %v", err)
	}
}

func TestPullRejectsOtherPlatforms(t *testing.T) {
	store, _ := storeWithDefault(t)
	host := ocitest.Registry(t)
	img := ocitest.Image(t, v1.Config{}, ocitest.Layer(t, ocitest.File("x", "x")))
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.Architecture = "arm64"
	img, err := mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	ocitest.Push(t, host+"/arm/img:1", img)
	_, _, err = Pull(context.Background(), store, host+"/arm/img:1", Options{Insecure: true})
	if err == nil || !strings.Contains(err.Error(), "the image is for linux/arm64; gondolin guests are linux/amd64") {
		t.Fatalf("Pull = %v", err)
	}
}

func TestDiskSize(t *testing.T) {
	for usage, want := range map[int64]int64{0: 4 << 30, 1 << 30: 4 << 30, 4 << 30: 6<<30 + 256<<20} {
		if got, err := diskSize(usage); err != nil || got != want {
			t.Errorf("diskSize(%d) = %d, %v; want %d", usage, got, err, want)
		}
	}
	if _, err := diskSize(1 << 40); err == nil {
		t.Error("diskSize(1 TiB) accepted")
	}
}
