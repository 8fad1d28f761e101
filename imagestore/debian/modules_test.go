package debian

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestSelectModules(t *testing.T) {
	rel := filepath.Join(t.TempDir(), "6.1.0-test")
	mods := map[string][]string{
		"kernel/drivers/virtio/virtio_ring.ko":        {"name=virtio_ring", "depends="},
		"kernel/drivers/virtio/virtio.ko":             {"name=virtio", "depends=virtio_ring"},
		"kernel/drivers/block/virtio_blk.ko":          {"name=virtio_blk", "depends=virtio,virtio_ring", "alias=virtio:d00000002v*"},
		"kernel/drivers/char/hw_random/virtio-rng.ko": {"name=virtio_rng", "depends=virtio,virtio_ring"},
		"kernel/drivers/net/unrelated.ko":             {"name=unrelated"},
		"kernel/drivers/net/broken.ko":                {"name=broken", "depends=missing"},
	}
	for p, fields := range mods {
		full := filepath.Join(rel, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		os.WriteFile(full, testModule(fields...), 0o644)
	}
	ix, files, err := selectModules(rel, []string{"virtio_blk", "virtio-rng"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range ix.Modules {
		names = append(names, m.Name)
	}
	if want := []string{"virtio", "virtio_blk", "virtio_ring", "virtio_rng"}; !slices.Equal(names, want) {
		t.Fatalf("modules %v, want %v", names, want)
	}
	if ix.Release != "6.1.0-test" || len(files) != 4 {
		t.Fatalf("release %q, %d files", ix.Release, len(files))
	}
	rng, _ := ix.Find("virtio_rng")
	if rng.Path != "kernel/drivers/char/hw_random/virtio-rng.ko" {
		t.Errorf("virtio_rng path %q", rng.Path)
	}
	blk, _ := ix.Find("virtio_blk")
	if !slices.Equal(blk.Aliases, []string{"virtio:d00000002v*"}) {
		t.Errorf("virtio_blk aliases %v", blk.Aliases)
	}

	for _, tt := range []struct {
		want    string
		wantErr string
	}{
		{"nope", "has no module nope"},
		{"broken", "broken needs missing"},
	} {
		if _, _, err := selectModules(rel, []string{tt.want}); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("selectModules(%s): %v; want %q", tt.want, err, tt.wantErr)
		}
	}
}
