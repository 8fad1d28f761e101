package imagestore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
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

	"github.com/gondolin/gondolin/imagestore/internal/format/elftest"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/testreq"
)

// Guest files that pass the import checks.
var (
	testKernel = elftest.ELF(elftest.Note("Xen", elftest.XenPVHNote, []byte{0, 0, 0, 1}),
		elftest.Section{Name: ".text", Type: 1, Data: bytes.Repeat([]byte{0x90}, 512)})
	testAgent = elftest.ELF(nil, elftest.Section{Name: ".text", Type: 1, Data: []byte{0xc3}})
)

// testCpio is a newc archive holding the given regular files.
func testCpio(files ...string) []byte {
	var b bytes.Buffer
	pad := func() {
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	for i, name := range append(files, "TRAILER!!!") {
		mode, data := 0o100755, "#!agent"
		if name == "TRAILER!!!" {
			mode, data = 0, ""
		}
		fmt.Fprintf(&b, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
			i+1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
		b.WriteString(name + "\x00")
		pad()
		b.WriteString(data)
		pad()
	}
	return b.Bytes()
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	return testreq.Tool(t, name)
}

// testQcow2 makes a small empty qcow2 disk (with args, e.g. a backing
// file) and returns its path.
func testQcow2(t *testing.T, dir string, args ...string) string {
	t.Helper()
	qemuImg := needTool(t, "qemu-img")
	p := filepath.Join(dir, "disk.qcow2")
	args = append([]string{"create", "-q", "-f", "qcow2"}, append(args, p, "64M")...)
	if out, err := exec.Command(qemuImg, args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	return p
}

func writeFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	os.MkdirAll(dir, 0o755)
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// storeState is everything in a store that an import may change.
func storeState(t *testing.T, s *Store) string {
	t.Helper()
	var out []string
	for _, d := range []string{s.blobDir(), s.manifestDir(), s.refDir(), s.TempDir()} {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			out = append(out, filepath.Base(d)+"/"+e.Name())
		}
	}
	return strings.Join(out, " ")
}

func TestExportImportRoundTrip(t *testing.T) {
	needTool(t, "qemu-img")
	src := openTemp(t)
	var m Manifest
	for _, part := range []struct {
		f      *File
		data   []byte
		format string
	}{
		{&m.Kernel, testKernel, FormatPVH},
		{&m.Initramfs, testCpio("init"), FormatCpio},
		{&m.Agent, testAgent, FormatELF},
	} {
		f, err := src.PutBlob(bytes.NewReader(part.data))
		if err != nil {
			t.Fatal(err)
		}
		f.Format = part.format
		*part.f = f
	}
	disk, err := src.PutFile(testQcow2(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	disk.Format = FormatQcow2
	m.Rootfs = disk
	m.SchemaVersion = SchemaVersion
	m.Created = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	m.KernelRelease = "6.1.0-test"
	m.OCI = &OCIConfig{Source: "example.com/x:1", Digest: "sha256:" + strings.Repeat("c", 64), Env: []string{"PATH=/bin"}}
	id, err := src.PutManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	tag(t, src, id, "orig")

	dir := filepath.Join(t.TempDir(), "export")
	if _, err := src.Export("orig", dir); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"agent", "initramfs", "kernel", "manifest.json", "rootfs.qcow2"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("export holds %v, want %v", names, want)
	}
	if _, err := src.Export("orig", dir); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("export into a full directory: %v", err)
	}

	dst := openTemp(t)
	im, err := dst.Import(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	// Without a build id the manifest is the same, so is the ID.
	if im.ID != id || !reflect.DeepEqual(im.Manifest, m) {
		t.Fatalf("imported %s %+v, want %s", im.ID, im.Manifest, id)
	}
	for _, p := range []string{im.KernelPath(), im.InitramfsPath(), im.RootfsPath()} {
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
	if left, _ := os.ReadDir(dst.TempDir()); len(left) != 0 {
		t.Errorf("import left %v in tmp", left)
	}
}

func TestImportDropsBuildID(t *testing.T) {
	s := openTemp(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string][]byte{"kernel": testKernel})
	k := File{Digest: digestOfBytes(testKernel), Size: int64(len(testKernel)), Format: FormatPVH}
	data, _ := json.Marshal(Manifest{SchemaVersion: 1, BuildID: strings.Repeat("d", 64), Kernel: k})
	writeFiles(t, dir, map[string][]byte{"manifest.json": data})
	im, err := s.Import(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if im.Manifest.BuildID != "" {
		t.Fatalf("build id kept: %q", im.Manifest.BuildID)
	}
	if _, ok := s.FindBuild(strings.Repeat("d", 64)); ok {
		t.Fatal("FindBuild finds an imported image")
	}
}

func digestOfBytes(b []byte) string {
	return idPrefix + fmt.Sprintf("%x", sha256.Sum256(b))
}

func TestImportBare(t *testing.T) {
	mke2fs := needTool(t, "mke2fs")
	needTool(t, "qemu-img")
	s := openTemp(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string][]byte{"vmlinux": testKernel, "initramfs.cpio": testCpio("dev", "init")})
	raw := filepath.Join(dir, "rootfs.img")
	if out, err := exec.Command(mke2fs, "-q", "-t", "ext4", raw, "8M").CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v: %s", err, out)
	}
	im, err := s.Import(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	m := im.Manifest
	if m.Kernel.Format != FormatPVH || m.Initramfs.Format != FormatCpio || m.Rootfs.Format != FormatQcow2 || !m.Agent.IsZero() {
		t.Fatalf("manifest %+v", m)
	}
	out, err := exec.Command(needTool(t, "qemu-img"), "info", "--output=json", im.RootfsPath()).Output()
	if err != nil || !strings.Contains(string(out), `"format": "qcow2"`) {
		t.Fatalf("converted disk: %v %s", err, out)
	}
}

func TestImportRejects(t *testing.T) {
	needTool(t, "qemu-img")
	goodBare := map[string][]byte{"vmlinux": testKernel, "initramfs.cpio": testCpio("init")}
	outside := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(outside, testKernel, 0o600)
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir string)
		wantErr string
	}{
		{"empty dir", func(t *testing.T, dir string) {}, "not an image directory"},
		{"no initramfs", func(t *testing.T, dir string) {
			writeFiles(t, dir, map[string][]byte{"vmlinux": testKernel})
		}, "no initramfs.cpio"},
		{"two kernels", func(t *testing.T, dir string) {
			writeFiles(t, dir, goodBare)
			writeFiles(t, dir, map[string][]byte{"bzImage": testKernel})
		}, "keep one"},
		{"kernel not pvh", func(t *testing.T, dir string) {
			writeFiles(t, dir, goodBare)
			writeFiles(t, dir, map[string][]byte{"vmlinux": testAgent})
		}, "kernel: kernel has no PVH entry note"},
		{"bzImage is not", func(t *testing.T, dir string) {
			writeFiles(t, dir, map[string][]byte{"bzImage": testKernel, "initramfs.cpio": testCpio("init")})
		}, "not a bzImage"},
		{"compressed initramfs", func(t *testing.T, dir string) {
			writeFiles(t, dir, goodBare)
			writeFiles(t, dir, map[string][]byte{"initramfs.cpio": {0x1f, 0x8b, 8, 0}})
		}, "not an uncompressed newc cpio"},
		{"initramfs without init", func(t *testing.T, dir string) {
			writeFiles(t, dir, goodBare)
			writeFiles(t, dir, map[string][]byte{"initramfs.cpio": testCpio("bin")})
		}, "no /init"},
		{"symlink out", func(t *testing.T, dir string) {
			writeFiles(t, dir, map[string][]byte{"initramfs.cpio": testCpio("init")})
			os.Symlink(outside, filepath.Join(dir, "vmlinux"))
		}, "vmlinux is a symlink that leaves the directory"},
		{"symlink up", func(t *testing.T, dir string) {
			writeFiles(t, dir, map[string][]byte{"initramfs.cpio": testCpio("init")})
			os.Symlink("../secret", filepath.Join(dir, "vmlinux"))
		}, "symlink that leaves"},
		{"fifo", func(t *testing.T, dir string) {
			writeFiles(t, dir, map[string][]byte{"initramfs.cpio": testCpio("init")})
			syscall.Mkfifo(filepath.Join(dir, "vmlinux"), 0o600)
		}, "not a regular file"},
		{"raw disk not ext4", func(t *testing.T, dir string) {
			writeFiles(t, dir, goodBare)
			writeFiles(t, dir, map[string][]byte{"rootfs.img": make([]byte, 8192)})
		}, "no superblock magic"},
		{"qcow2 with backing file", func(t *testing.T, dir string) {
			writeFiles(t, dir, goodBare)
			base := testQcow2(t, t.TempDir())
			over := testQcow2(t, t.TempDir(), "-b", base, "-F", "qcow2")
			data, _ := os.ReadFile(over)
			writeFiles(t, dir, map[string][]byte{"rootfs.qcow2": data})
		}, "backing file"},
		{"qcow2 is raw", func(t *testing.T, dir string) {
			writeFiles(t, dir, goodBare)
			writeFiles(t, dir, map[string][]byte{"rootfs.qcow2": make([]byte, 8192)})
		}, "no QFI magic"},
		{"manifest digest lies", func(t *testing.T, dir string) {
			other := testKernel[:len(testKernel)-1]
			k := File{Digest: digestOfBytes(testKernel), Size: int64(len(testKernel)), Format: FormatPVH}
			data, _ := json.Marshal(Manifest{SchemaVersion: 1, Kernel: k})
			writeFiles(t, dir, map[string][]byte{"manifest.json": data, "kernel": append(bytes.Clone(other), 0x90)})
		}, "but manifest.json says"},
		{"manifest file missing", func(t *testing.T, dir string) {
			k := File{Digest: digestOfBytes(testKernel), Size: int64(len(testKernel)), Format: FormatPVH}
			i := File{Digest: digestOfBytes(testKernel), Size: 1, Format: FormatCpio}
			data, _ := json.Marshal(Manifest{SchemaVersion: 1, Kernel: k, Initramfs: i})
			writeFiles(t, dir, map[string][]byte{"manifest.json": data, "kernel": testKernel})
		}, "initramfs is missing"},
		{"manifest agent is dynamic", func(t *testing.T, dir string) {
			ls, err := os.ReadFile("/bin/ls")
			if err != nil {
				t.Skip(err)
			}
			k := File{Digest: digestOfBytes(testKernel), Size: int64(len(testKernel)), Format: FormatPVH}
			a := File{Digest: digestOfBytes(ls), Size: int64(len(ls)), Format: FormatELF}
			data, _ := json.Marshal(Manifest{SchemaVersion: 1, Kernel: k, Agent: a})
			writeFiles(t, dir, map[string][]byte{"manifest.json": data, "kernel": testKernel, "agent": ls})
		}, "dynamically linked"},
		{"manifest path digest", func(t *testing.T, dir string) {
			data := []byte(`{"schema_version":1,"kernel":{"digest":"sha256:../../etc/passwd","size":1,"format":"pvh"}}`)
			writeFiles(t, dir, map[string][]byte{"manifest.json": data})
		}, "is not sha256:<hex>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openTemp(t)
			before := storeState(t, s)
			dir := filepath.Join(t.TempDir(), "in")
			os.Mkdir(dir, 0o755)
			tt.setup(t, dir)
			_, err := s.Import(context.Background(), dir)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Import = %v; want error about %q", err, tt.wantErr)
			}
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("error is not errdefs.ErrInvalid: %v", err)
			}
			if after := storeState(t, s); after != before {
				t.Fatalf("a rejected import changed the store:\n%s\n%s", before, after)
			}
		})
	}
}
