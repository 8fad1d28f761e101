package debian

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gondolin/gondolin/imagestore"
	"github.com/gondolin/gondolin/imagestore/internal/rootfs"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/progress"
	"github.com/gondolin/gondolin/internal/testreq"
	"github.com/gondolin/gondolin/internal/testutil"
)

func TestCheckAgent(t *testing.T) {
	dir := t.TempDir()
	notELF := filepath.Join(dir, "script")
	os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755)
	static := filepath.Join(dir, "static")
	os.WriteFile(static, testELF(nil), 0o755)
	tests := []struct {
		path    string
		wantErr string
	}{
		{path: static},
		{path: "", wantErr: "no guest agent"},
		{path: filepath.Join(dir, "missing"), wantErr: "no such file"},
		{path: notELF, wantErr: "guest agent"},
	}
	if _, err := os.Stat("/bin/ls"); err == nil {
		tests = append(tests, struct{ path, wantErr string }{"/bin/ls", "dynamically linked"})
	}
	for _, tt := range tests {
		err := checkAgent(tt.path)
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("checkAgent(%q) = %v; want %q", tt.path, err, tt.wantErr)
		}
	}
}

func TestBuildIDCoversEveryInput(t *testing.T) {
	base := plan{
		config:   imagestore.BuildConfig{Packages: []string{"bash"}, KernelPackage: "linux-image-cloud-amd64", DiskSize: "4G"},
		agentSHA: strings.Repeat("a", 64),
		kernel:   deb{Name: "linux-image-x", Version: "1", SHA256: strings.Repeat("k", 64)},
		debs:     []deb{{Name: "bash", Version: "5", SHA256: strings.Repeat("b", 64)}, {Name: "libc6", Version: "2", SHA256: strings.Repeat("c", 64)}},
	}
	id, err := buildID(base)
	if err != nil || len(id) != 64 {
		t.Fatalf("buildID = %q, %v", id, err)
	}
	reordered := base
	reordered.debs = []deb{base.debs[1], base.debs[0]}
	if again, _ := buildID(reordered); again != id {
		t.Error("package order changed the build ID")
	}
	changes := map[string]func(p *plan){
		"agent":          func(p *plan) { p.agentSHA = strings.Repeat("0", 64) },
		"kernel version": func(p *plan) { p.kernel.Version = "2" },
		"package sha": func(p *plan) {
			p.debs = []deb{p.debs[0], {Name: "libc6", Version: "2", SHA256: strings.Repeat("d", 64)}}
		},
		"package added":  func(p *plan) { p.debs = append(p.debs[:2:2], deb{Name: "git"}) },
		"disk size":      func(p *plan) { p.config.DiskSize = "8G" },
		"config package": func(p *plan) { p.config.Packages = []string{"bash", "git"} },
	}
	for name, change := range changes {
		p := base
		change(&p)
		if other, _ := buildID(p); other == id {
			t.Errorf("changing the %s kept the build ID", name)
		}
	}
}

func TestBuildRejectsBadInputEarly(t *testing.T) {
	store, err := imagestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	agent := filepath.Join(t.TempDir(), "agent")
	os.WriteFile(agent, testELF(nil), 0o755)
	noDownload := func(context.Context, string, []deb, progress.Reporter) error {
		t.Fatal("downloaded")
		return nil
	}
	tests := []struct {
		name    string
		opts    Options
		wantErr string
		class   error
	}{
		{"bad tag", Options{AgentPath: agent, Tag: "Bad/Tag"}, "name", errdefs.ErrInvalid},
		{"no agent", Options{}, "no guest agent", nil},
		{"bad package", Options{AgentPath: agent, Config: imagestore.BuildConfig{Packages: []string{"-oAPT::x=1"}}}, "not a Debian package name", errdefs.ErrInvalid},
		{"bad disk size", Options{AgentPath: agent, Config: imagestore.BuildConfig{DiskSize: "4X"}}, "disk_size", errdefs.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.download = noDownload
			tt.opts.CacheDir = t.TempDir()
			_, _, err := Build(context.Background(), store, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || tt.class != nil && !errors.Is(err, tt.class) {
				t.Fatalf("Build = %v; want %q", err, tt.wantErr)
			}
		})
	}
	testutil.EmptyDir(t, store.TempDir())
}

// TestFinishRootfs runs the post-unpack steps on a tiny tree holding only
// a static busybox and one certificate.
func TestFinishRootfs(t *testing.T) {
	busybox, err := lookTool("busybox")
	if err != nil || checkAgent(busybox) != nil {
		testreq.Skipf(t, "no static busybox on this machine (apt-get install busybox-static)")
	}
	bb, _ := os.ReadFile(busybox)
	staging := filepath.Join(t.TempDir(), "root")
	tr, err := rootfs.New(staging, rootfs.Options{UsrMerged: true, Skip: skipDirs})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for _, f := range []struct {
		path, body string
		mode       os.FileMode
	}{
		{"usr/bin/busybox", string(bb), 0o755},
		{"usr/bin/bash", "not really bash", 0o755},
		{"usr/share/ca-certificates/mozilla/B.crt", "-----B-----", 0o644},
		{"usr/share/ca-certificates/mozilla/A.crt", "-----A-----\n", 0o644},
	} {
		if err := tr.WriteFile(f.path, strings.NewReader(f.body), f.mode, 0, 0, noTime); err != nil {
			t.Fatal(err)
		}
	}
	if err := finishRootfs(context.Background(), tr, staging, busybox, progress.Discard); err != nil {
		t.Fatal(err)
	}
	if err := tr.Finish(); err != nil {
		t.Fatal(err)
	}
	read := func(p string) string { b, _ := os.ReadFile(filepath.Join(staging, p)); return string(b) }
	link := func(p string) string { l, _ := os.Readlink(filepath.Join(staging, p)); return l }
	if got := read("etc/ssl/certs/ca-certificates.crt"); got != "-----A-----\n-----B-----\n" {
		t.Errorf("ca bundle %q", got)
	}
	if link("usr/bin/sh") != "busybox" || link("usr/bin/ls") != "busybox" || link("usr/bin/bash") != "" {
		t.Errorf("applet links: sh -> %q, ls -> %q, bash -> %q", link("usr/bin/sh"), link("usr/bin/ls"), link("usr/bin/bash"))
	}
	if !strings.HasPrefix(read("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n") || read("etc/hostname") != "gondolin\n" {
		t.Errorf("passwd %q hostname %q", read("etc/passwd"), read("etc/hostname"))
	}
	if read("usr/sbin/gondolin-agent") != string(bb) {
		t.Error("agent copy missing")
	}
	for p, want := range map[string]os.FileMode{
		"tmp": os.ModeDir | os.ModeSticky | 0o777, "root": os.ModeDir | 0o700, "etc/shadow": 0o640,
		"proc": os.ModeDir | 0o555, "etc/resolv.conf": 0o644,
	} {
		if st, err := os.Lstat(filepath.Join(staging, p)); err != nil || st.Mode() != want {
			t.Errorf("%s: mode %v, %v; want %v", p, st.Mode(), err, want)
		}
	}
}
