package imagestore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/testutil"
)

func openTemp(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// putImage stores a small image whose kernel holds content.
func putImage(t *testing.T, s *Store, content string, created time.Time) string {
	t.Helper()
	k, err := s.PutBlob(strings.NewReader(content))
	if err != nil {
		t.Fatal(err)
	}
	k.Format = FormatPVH
	id, err := s.PutManifest(Manifest{Created: created, Kernel: k, BuildID: strings.Repeat("b", 64)})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestBlobDedup(t *testing.T) {
	s := openTemp(t)
	a, err := s.PutBlob(strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	if a.Digest != "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" || a.Size != 5 {
		t.Fatalf("PutBlob = %+v", a)
	}
	st1, err := os.Stat(s.Path(a))
	if err != nil || st1.Mode().Perm() != 0o444 {
		t.Fatalf("blob mode %v, %v; want 0444", st1.Mode(), err)
	}
	// The same content again, by reader and by file, is the same blob and
	// the existing file is not replaced.
	b, err := s.PutBlob(strings.NewReader("hello"))
	if err != nil || b != a {
		t.Fatalf("second PutBlob = %+v, %v", b, err)
	}
	src := filepath.Join(t.TempDir(), "f")
	os.WriteFile(src, []byte("hello"), 0o644)
	c, err := s.PutFile(src)
	if err != nil || c != a {
		t.Fatalf("PutFile = %+v, %v", c, err)
	}
	st2, _ := os.Stat(s.Path(a))
	if !os.SameFile(st1, st2) {
		t.Fatal("blob was rewritten")
	}
	// PutFile links a file into the store only when it may: a new file in
	// the store's tmp, on its filesystem, with no other name.
	for _, tt := range []struct {
		name   string
		path   string // where the file is made
		mode   os.FileMode
		links  int // how many more names it gets
		linked bool
	}{
		// Outside the store: copied, and left alone.
		{"outside", filepath.Join(t.TempDir(), "tool"), 0o755, 0, false},
		// A new file on the store's filesystem: linked, not copied.
		{"tmp", filepath.Join(s.TempDir(), "new"), 0o644, 0, true},
		// In tmp with another name: copied, since linking would make that
		// other name read-only too.
		{"tmp-shared", filepath.Join(s.TempDir(), "shared"), 0o644, 1, false},
	} {
		if err := os.WriteFile(tt.path, []byte(tt.name), tt.mode); err != nil {
			t.Fatal(err)
		}
		for i := range tt.links {
			if err := os.Link(tt.path, fmt.Sprintf("%s.%d", tt.path, i)); err != nil {
				t.Fatal(err)
			}
		}
		blob, err := s.PutFile(tt.path)
		if err != nil {
			t.Fatal(err)
		}
		src, _ := os.Stat(tt.path)
		stored, _ := os.Stat(s.Path(blob))
		wantPerm := tt.mode
		if tt.linked {
			wantPerm = 0o444 // the store's blobs are read-only
		}
		if os.SameFile(src, stored) != tt.linked || src.Mode().Perm() != wantPerm {
			t.Errorf("%s: PutFile linked=%v, mode %v; want linked=%v, mode %v", tt.name, os.SameFile(src, stored), src.Mode().Perm(), tt.linked, wantPerm)
		}
		os.Remove(tt.path)
		for i := range tt.links {
			os.Remove(fmt.Sprintf("%s.%d", tt.path, i))
		}
	}
	testutil.EmptyDir(t, s.TempDir())
}

// twoImages opens a new store that holds two images.
func twoImages(t *testing.T) (s *Store, id1, id2 string) {
	t.Helper()
	s = openTemp(t)
	return s, putImage(t, s, "k1", time.Unix(1, 0)), putImage(t, s, "k2", time.Unix(2, 0))
}

func TestConcurrentWriters(t *testing.T) {
	s, id1, id2 := twoImages(t)
	ref := Ref{"default", "latest"}
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.PutBlob(strings.NewReader("same content")); err != nil {
				t.Error(err)
			}
			id := id1
			if i%2 == 1 {
				id = id2
			}
			if err := s.writeRef(ref, id); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	im, err := s.Resolve("default")
	if err != nil || (im.ID != id1 && im.ID != id2) {
		t.Fatalf("Resolve = %v, %v", im, err)
	}
	testutil.EmptyDir(t, s.TempDir())
}

func TestRefOverwriteIsAtomic(t *testing.T) {
	s, id1, id2 := twoImages(t)
	ref := Ref{"dev", "v1"}
	if err := s.Tag(id1, ref); err != nil {
		t.Fatal(err)
	}
	if err := s.Tag(id2, ref); err != nil {
		t.Fatal(err)
	}
	im, err := s.Resolve("dev:v1")
	if err != nil || im.ID != id2 {
		t.Fatalf("Resolve after retag = %v, %v; want %s", im, err, id2)
	}
	entries, _ := os.ReadDir(filepath.Join(s.root, "refs", "dev"))
	if len(entries) != 1 {
		t.Fatalf("refs/dev holds %d entries, want 1 (no temp files left)", len(entries))
	}
	// A ref to a manifest that is gone says so.
	os.WriteFile(filepath.Join(s.root, "refs", "dev", "gone"), []byte("sha256:"+strings.Repeat("0", 64)+"\n"), 0o644)
	if _, err := s.Resolve("dev:gone"); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "dev:gone points at sha256:000") {
		t.Fatalf("dangling ref: %v", err)
	}
	// A torn or garbage ref reads as missing, never as a bad path.
	os.WriteFile(filepath.Join(s.root, "refs", "dev", "v2"), []byte("sha256:../../etc"), 0o644)
	if _, err := s.Resolve("dev:v2"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("garbage ref: %v", err)
	}
}

func TestResolve(t *testing.T) {
	s := openTemp(t)
	one := putImage(t, s, "kernel1", time.Unix(1, 0))
	other := putImage(t, s, "kernel2", time.Unix(2, 0))
	hex1 := strings.TrimPrefix(one, idPrefix)
	if err := s.Tag(one, Ref{"default", "latest"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Tag(one, Ref{"dev", "v1"}); err != nil {
		t.Fatal(err)
	}
	// A ref whose name is itself a hex word resolves as the ref.
	if err := s.Tag(other, Ref{hex1[:8], "latest"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		spec    string
		want    string
		wantErr string
		class   error
	}{
		{spec: "default", want: one},
		{spec: "default:latest", want: one},
		{spec: "dev:v1", want: one},
		{spec: one, want: one},
		{spec: hex1, want: one},
		{spec: hex1[:12], want: one},
		{spec: "sha256:" + hex1[:6], want: one},
		{spec: hex1[:8], want: other}, // the ref, not the prefix
		{spec: hex1[:1], wantErr: "image " + hex1[:1] + ":latest not found", class: errdefs.ErrNotFound},
		{spec: "sha256:" + hex1[:1], wantErr: "at least 6 hex", class: errdefs.ErrInvalid},
		{spec: "dev", wantErr: "image dev:latest not found; pull or build it", class: errdefs.ErrNotFound},
		{spec: "dev:v2", wantErr: "image dev:v2 not found", class: errdefs.ErrNotFound},
		{spec: "ffffff", wantErr: "not found", class: errdefs.ErrNotFound},
		{spec: "sha256:" + strings.Repeat("0", 64), wantErr: "not found", class: errdefs.ErrNotFound},
		{spec: "Dev", wantErr: "name", class: errdefs.ErrInvalid},
		{spec: "../x", wantErr: "name", class: errdefs.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			im, err := s.Resolve(tt.spec)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, tt.class) {
					t.Fatalf("Resolve(%q) = %v, %v; want %q", tt.spec, im, err, tt.wantErr)
				}
				return
			}
			if err != nil || im.ID != tt.want {
				t.Fatalf("Resolve(%q) = %v, %v; want %s", tt.spec, im, err, tt.want)
			}
		})
	}
	t.Run("ambiguous prefix", func(t *testing.T) {
		// Force two manifests to share a 6-digit prefix by faking a marker.
		fake := hex1[:6] + strings.Repeat("0", 58)
		if fake == hex1 {
			fake = hex1[:6] + strings.Repeat("1", 58)
		}
		os.WriteFile(filepath.Join(s.manifestDir(), fake), nil, 0o444)
		defer os.Remove(filepath.Join(s.manifestDir(), fake))
		_, err := s.Resolve(hex1[:6])
		if err == nil || !strings.Contains(err.Error(), "ambiguous") || !strings.Contains(err.Error(), "sha256:"+hex1[:12]+" (default:latest, dev:v1)") {
			t.Fatalf("Resolve(prefix) = %v; want ambiguous error listing matches", err)
		}
	})
	t.Run("default hint", func(t *testing.T) {
		empty := openTemp(t)
		_, err := empty.Resolve("default")
		if err == nil || err.Error() != "image default:latest not found; build it with: gondolin image build" || !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("Resolve(default) on empty store = %v", err)
		}
	})
}

func TestListAndTag(t *testing.T) {
	s := openTemp(t)
	old := putImage(t, s, "old", time.Unix(100, 0))
	newer := putImage(t, s, "new", time.Unix(200, 0))
	for _, tag := range []struct {
		src string
		dst Ref
	}{{old, Ref{"base", "v1"}}, {newer, Ref{"base", "latest"}}, {"base", Ref{"default", "latest"}}, {"base:v1", Ref{"old", "latest"}}} {
		if err := s.Tag(tag.src, tag.dst); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Tag("missing", Ref{"x", "latest"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Tag(missing) = %v", err)
	}
	if err := s.Tag(old, Ref{"../x", "latest"}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("Tag to a bad ref = %v", err)
	}
	images, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var got [][]string
	for _, im := range images {
		got = append(got, append([]string{im.ID}, im.Refs...))
	}
	want := [][]string{{newer, "base:latest", "default:latest"}, {old, "base:v1", "old:latest"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("List = %v, want %v", got, want)
	}
	im, ok := s.FindBuild(strings.Repeat("b", 64))
	if !ok || im.ID != newer {
		t.Fatalf("FindBuild = %v, %v; want the newest", im, ok)
	}
	if _, ok := s.FindBuild(strings.Repeat("c", 64)); ok {
		t.Fatal("FindBuild found an unknown build")
	}
	if p := im.KernelPath(); p != s.Path(im.Manifest.Kernel) || p == "" {
		t.Fatalf("KernelPath = %q", p)
	}
	if im.RootfsPath() != "" || im.InitramfsPath() != "" {
		t.Fatal("paths for absent parts must be empty")
	}
	// A build whose blob went missing is not reused.
	os.Remove(im.KernelPath())
	if im, ok := s.FindBuild(strings.Repeat("b", 64)); !ok || im.ID != old {
		t.Fatalf("FindBuild with a missing blob = %v, %v; want the older complete image", im, ok)
	}
}

func TestPutManifestChecks(t *testing.T) {
	s := openTemp(t)
	k, _ := s.PutBlob(strings.NewReader("k"))
	tests := []struct {
		name    string
		m       Manifest
		wantErr string
	}{
		{name: "no kernel", m: Manifest{}, wantErr: "no kernel"},
		{name: "bad format", m: Manifest{Kernel: File{Digest: k.Digest, Size: k.Size, Format: "exe"}}, wantErr: "format"},
		{name: "missing blob", m: Manifest{Kernel: File{Digest: "sha256:" + strings.Repeat("0", 64), Size: 1, Format: FormatPVH}}, wantErr: "not in the store"},
		{name: "bad digest", m: Manifest{Kernel: File{Digest: "sha256:../../x", Format: FormatPVH}}, wantErr: "digest"},
		{name: "wrong size", m: Manifest{Kernel: File{Digest: k.Digest, Size: 2, Format: FormatPVH}}, wantErr: "not in the store"},
		{name: "bad build id", m: Manifest{BuildID: "x", Kernel: File{Digest: k.Digest, Size: 1, Format: FormatPVH}}, wantErr: "build_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.PutManifest(tt.m); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("PutManifest = %v; want %q", err, tt.wantErr)
			}
		})
	}
}

func TestCorruptManifestIsAnError(t *testing.T) {
	s := openTemp(t)
	id := putImage(t, s, "k", time.Unix(1, 0))
	p := s.Path(File{Digest: id})
	os.Chmod(p, 0o644)
	os.WriteFile(p, []byte(`{"schema_version": 1}`), 0o644)
	if _, err := s.Resolve(id); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("Resolve(corrupt) = %v", err)
	}
	if images, err := s.List(); err != nil || len(images) != 0 {
		t.Fatalf("List = %v, %v; want the corrupt image left out", images, err)
	}
}
