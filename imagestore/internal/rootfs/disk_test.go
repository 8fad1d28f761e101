package rootfs

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestChownRoot makes a small ext4 image from files that do not belong
// to root (as in a build without root) and checks that every inode ends
// up owned by 0:0, names with spaces and quotes included.
func TestChownRoot(t *testing.T) {
	for _, tool := range []string{"mke2fs", "debugfs", "qemu-img"} {
		if _, err := LookTool(tool); err != nil {
			t.Skip(err)
		}
	}
	dir := t.TempDir()
	staging := filepath.Join(dir, "staging")
	files := []string{"etc/passwd", `odd name "quoted"`, "usr/bin/tool"}
	for _, f := range files {
		p := filepath.Join(staging, f)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(f), 0o644)
	}
	os.Symlink("usr/bin", filepath.Join(staging, "bin"))
	if os.Getuid() == 0 {
		// Stand in for a user's build: hand everything to nobody.
		filepath.Walk(staging, func(p string, _ os.FileInfo, _ error) error { return os.Lchown(p, 65534, 65534) })
	}
	ctx := context.Background()
	raw := filepath.Join(dir, "raw")
	if err := makeExt4(ctx, staging, raw, 64<<20); err != nil {
		t.Fatal(err)
	}
	stat := func(p string) string {
		debugfs, _ := LookTool("debugfs")
		out, _ := exec.Command(debugfs, "-R", `stat "`+strings.ReplaceAll(p, `"`, `""`)+`"`, raw).CombinedOutput()
		return string(out)
	}
	if !strings.Contains(stat("/usr/bin/tool"), "User: ") || strings.Contains(stat("/usr/bin/tool"), "User:     0   Group:     0") {
		t.Fatalf("before the fixup /usr/bin/tool is already root's:\n%s", stat("/usr/bin/tool"))
	}
	if err := setOwners(ctx, staging, raw, rootOwner); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/", "/etc", "/etc/passwd", `/odd name "quoted"`, "/usr", "/usr/bin", "/usr/bin/tool", "/bin"} {
		if out := stat(p); !strings.Contains(out, "User:     0   Group:     0") {
			t.Errorf("%s not owned by root:\n%s", p, out)
		}
	}
	qcow2 := filepath.Join(dir, "disk.qcow2")
	if err := toQcow2(ctx, raw, qcow2); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(qcow2)
	if err != nil || st.Size() > 8<<20 {
		t.Fatalf("qcow2 of a nearly empty 64M filesystem: %v, %v", st.Size(), err)
	}
}

func TestChownRootReportsDebugfsErrors(t *testing.T) {
	if _, err := LookTool("debugfs"); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	staging := filepath.Join(dir, "staging")
	os.MkdirAll(filepath.Join(staging, "only-in-staging"), 0o755)
	raw := filepath.Join(dir, "raw")
	if err := makeExt4(context.Background(), filepath.Join(dir, "empty"), raw, 64<<20); err == nil {
		t.Fatal("mke2fs -d accepted a missing directory")
	}
	os.Mkdir(filepath.Join(dir, "empty"), 0o755)
	if err := makeExt4(context.Background(), filepath.Join(dir, "empty"), raw, 64<<20); err != nil {
		t.Fatal(err)
	}
	err := setOwners(context.Background(), staging, raw, rootOwner)
	if err == nil || !strings.Contains(err.Error(), "only-in-staging") {
		t.Fatalf("setOwners on a mismatched image: %v", err)
	}
}

func rootOwner(string) (int, int) { return 0, 0 }
