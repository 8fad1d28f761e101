package debian

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"
	"github.com/gondolin/gondolin/imagestore"
	"github.com/gondolin/gondolin/internal/kmod"
	"github.com/gondolin/gondolin/internal/progress"
	"github.com/gondolin/gondolin/internal/testutil"
)

// TestBuildDefaultImage really builds the default image from the apt
// mirror (packages are cached in the user's cache directory), then builds
// it again and expects the store's image to be reused.
func TestBuildDefaultImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a real image from apt (skipped with -short)")
	}
	for _, tool := range []string{"apt-get", "apt-cache", "dpkg-deb", "mke2fs", "qemu-img"} {
		if _, err := lookTool(tool); err != nil {
			t.Skip(err)
		}
	}
	agent := "/bin/busybox" // a static stand-in for the agent
	if err := checkAgent(agent); err != nil {
		t.Skip(err)
	}
	store, err := imagestore.Open(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	downloads := 0
	counting := func(ctx context.Context, dir string, debs []deb, p progress.Reporter) error {
		downloads++
		return aptDownload(ctx, dir, debs, p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	opts := Options{AgentPath: agent, Progress: testReporter{t}, download: counting}

	start := time.Now()
	im, reused, err := Build(ctx, store, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built %s in %v (reused=%v)", im.ID, time.Since(start).Round(time.Millisecond), reused)
	m := im.Manifest
	t.Logf("kernel %s %s %d bytes; initramfs %d bytes; rootfs %d bytes; %d packages; modules %v",
		m.KernelRelease, m.Kernel.Format, m.Kernel.Size, m.Initramfs.Size, m.Rootfs.Size, len(m.Packages), m.Modules)
	if !slicesEqual(im.Refs, []string{"default:latest"}) {
		t.Errorf("refs = %v", im.Refs)
	}
	have := map[string]bool{}
	for _, p := range m.Packages {
		have[p.Name] = true
	}
	for _, want := range []string{"bash", "curl", "ca-certificates", "busybox-static", "libc6"} {
		if !have[want] {
			t.Errorf("manifest lacks package %s", want)
		}
	}
	kernelPkg := false
	for name := range have {
		kernelPkg = kernelPkg || strings.HasPrefix(name, "linux-image-")
	}
	if !kernelPkg {
		t.Error("manifest lacks the kernel package")
	}
	if m.Kernel.Format != imagestore.FormatPVH {
		t.Errorf("kernel format %q, want pvh", m.Kernel.Format)
	}
	if m.KernelRelease == "" || m.BuildID == "" {
		t.Errorf("release %q, build id %q", m.KernelRelease, m.BuildID)
	}

	checkInitramfs(t, im.InitramfsPath(), m.KernelRelease)
	checkRootfs(t, im.RootfsPath())
	testutil.EmptyDir(t, store.TempDir())

	before := downloads
	start = time.Now()
	again, reused, err := Build(ctx, store, Options{AgentPath: agent, Tag: "copy", download: counting})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("second build took %v (reused=%v)", took.Round(time.Millisecond), reused)
	if !reused || again.ID != im.ID || downloads != before {
		t.Errorf("second build: reused=%v id=%s downloads %d->%d; want the same image, no download", reused, again.ID, before, downloads)
	}
	// How long the reuse took is logged, not asserted: timings depend on
	// the machine's load; that nothing was downloaded is the no-op check.
	if !slicesEqual(again.Refs, []string{"copy:latest", "default:latest"}) {
		t.Errorf("refs after reuse = %v", again.Refs)
	}
}

func slicesEqual(a, b []string) bool { return strings.Join(a, "\x00") == strings.Join(b, "\x00") }

func checkInitramfs(t *testing.T, path, release string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := map[string]*cpio.Header{}
	var index []byte
	for _, e := range readCpio(t, f) {
		files[e.Name] = e.Header
		if e.Name == "lib/modules/"+kmod.IndexFile {
			index = []byte(e.data)
		}
	}
	if h := files["init"]; h == nil || h.Mode.Perm() != 0o755 || !h.Mode.IsRegular() {
		t.Errorf("init: %+v", h)
	}
	if h := files["dev/console"]; h == nil || h.Mode&^cpio.ModePerm != cpio.TypeChar {
		t.Errorf("dev/console: %+v", h)
	}
	var ix kmod.Index
	if err := json.Unmarshal(index, &ix); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	if ix.Release != release {
		t.Errorf("index release %q, want %q", ix.Release, release)
	}
	order, err := ix.LoadOrder("virtio_blk", "virtio_mmio", "virtio_net", "virtio_console", "virtio_rng", "fuse", "overlay", "virtio_pci")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("load order: %v", order)
	for _, mod := range ix.Modules {
		if files["lib/modules/"+release+"/"+mod.Path] == nil {
			t.Errorf("module %s: %s not in the initramfs", mod.Name, mod.Path)
		}
	}
}

func checkRootfs(t *testing.T, path string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "check", path).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img check: %v\n%s", err, out)
	}
	debugfs, err := lookTool("debugfs")
	if err != nil {
		return
	}
	// Read a few files back out of the filesystem through a raw copy.
	raw := filepath.Join(t.TempDir(), "raw")
	if out, err := exec.Command("qemu-img", "convert", "-O", "raw", path, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	for file, want := range map[string]string{
		"/usr/bin/bash":                      "Type: regular",
		"/usr/bin/curl":                      "Type: regular",
		"/bin":                               "Type: symlink",
		"/usr/bin/sh":                        "Type: symlink",
		"/etc/ssl/certs/ca-certificates.crt": "Type: regular",
		"/etc/passwd":                        "User:     0   Group:     0",
		"/usr/sbin/gondolin-agent":           "Mode:  0755",
		"/tmp":                               "Mode:  01777",
		"/root":                              "Mode:  0700",
		"/usr/share/doc":                     "not found",
	} {
		out, _ := exec.Command(debugfs, "-R", "stat "+file, raw).CombinedOutput()
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("debugfs stat %s: want %q in\n%s", file, want, firstLines(out, 4))
		}
	}
}

func firstLines(b []byte, n int) string {
	lines := strings.SplitN(string(b), "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}

// testReporter logs phases and warnings into the test output.
type testReporter struct{ t *testing.T }

func (r testReporter) Phase(name string) {
	r.t.Logf("%s phase: %s", time.Now().Format("15:04:05.000"), name)
}
func (r testReporter) Step(int, int)                    {}
func (r testReporter) Warnf(format string, args ...any) { r.t.Logf("warning: "+format, args...) }
func (r testReporter) Done()                            {}
