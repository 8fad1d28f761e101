package vm

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/vm/agentproto"
)

// TestTemplateLock: one build per template at a time, and a listing sees
// a build without ever taking its lock.
func TestTemplateLock(t *testing.T) {
	tmpl := &Templates{Dir: t.TempDir(), Label: func(Config) string { return "default:latest" }}
	const key = "0123456789abcdef"
	cfg := Config{CPUs: 2}
	unlock, err := tmpl.lock(key, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		list, err := tmpl.List()
		if err != nil || len(list) != 1 || list[0].State != TemplateBuilding || list[0].Label != "default:latest" || list[0].CPUs != 2 {
			t.Fatalf("List during a build: %+v, %v", list, err)
		}
	}
	if _, err := tmpl.lock(key, cfg); !errors.Is(err, ErrTemplateBusy) {
		t.Fatalf("a second build of one template: %v, want ErrTemplateBusy", err)
	}
	unlock()
	if list, _ := tmpl.List(); len(list) != 0 {
		t.Fatalf("List after the build: %+v", list)
	}
	unlock, err = tmpl.lock(key, cfg)
	if err != nil {
		t.Fatalf("lock after an unlock: %v", err)
	}
	unlock()
}

// TestTemplateBackoff: a template that broke brokenLimit times lately is
// not built again (no VM is started) until the back-off has passed.
func TestTemplateBackoff(t *testing.T) {
	tmpl := &Templates{Dir: t.TempDir()}
	cfg := Config{Dir: t.TempDir(), Kernel: "/nonexistent/kernel", Initramfs: "/nonexistent/initrd"}
	key := tmpl.Key(cfg)
	broken := func(age time.Duration) {
		name := key + "-" + time.Now().Add(-age).UTC().Format(brokenStamp)
		if err := os.MkdirAll(filepath.Join(tmpl.Dir, brokenDir, name), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	broken(time.Hour) // long ago: does not count
	broken(time.Minute)
	// One recent breakage: the build is tried (and fails here: there is
	// no kernel), which is the second.
	if err := tmpl.Build(t.Context(), cfg); !errors.Is(err, ErrTemplateBuild) {
		t.Fatalf("one recent breakage: %v; want a build that fails", err)
	}
	err := tmpl.Build(t.Context(), cfg)
	if !errors.Is(err, ErrTemplateBackoff) || !strings.Contains(err.Error(), "2 broke in the last") {
		t.Fatalf("two recent breakages: %v; want ErrTemplateBackoff", err)
	}
	if _, _, err := tmpl.Clone(t.Context(), cfg, agentproto.Setup{}); !errors.Is(err, ErrTemplateBackoff) {
		t.Fatalf("Clone during the back-off: %v", err)
	}
}
