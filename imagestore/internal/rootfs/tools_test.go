package rootfs

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/gondolin/gondolin/internal/testreq"
)

func TestMissingToolNamesPackage(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := LookTool("qemu-img")
	if err == nil || err.Error() != "qemu-img not found: install it with: sudo apt-get install qemu-utils" || !errors.Is(err, ErrMissingTool) {
		t.Fatalf("LookTool(qemu-img) = %v", err)
	}
	err = NeedTools("apt-get", "apt-cache", "qemu-img")
	if !errors.Is(err, ErrMissingTool) || err.Error() != "apt-get, apt-cache, qemu-img not found: install them with: sudo apt-get install apt qemu-utils" {
		t.Fatalf("needTools = %v", err)
	}
}

func TestSbinToolsFoundWithoutSbinInPath(t *testing.T) {
	if _, err := os.Stat("/usr/sbin/mke2fs"); err != nil {
		testreq.Skipf(t, "no /usr/sbin/mke2fs")
	}
	t.Setenv("PATH", "/usr/bin:/bin")
	if p, err := LookTool("mke2fs"); err != nil || !strings.HasSuffix(p, "sbin/mke2fs") {
		t.Fatalf("LookTool(mke2fs) = %q, %v", p, err)
	}
}
