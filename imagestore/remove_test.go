package imagestore

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
)

// putParts stores an image made of the given kernel and initramfs
// contents and returns its ID.
func putParts(t *testing.T, s *Store, kernel, initramfs string) string {
	t.Helper()
	k, err := s.PutBlob(strings.NewReader(kernel))
	if err != nil {
		t.Fatal(err)
	}
	k.Format = FormatPVH
	m := Manifest{Created: time.Now().UTC(), Kernel: k}
	if initramfs != "" {
		i, err := s.PutBlob(strings.NewReader(initramfs))
		if err != nil {
			t.Fatal(err)
		}
		i.Format = FormatCpio
		m.Initramfs = i
	}
	id, err := s.PutManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func tag(t *testing.T, s *Store, id, ref string) {
	t.Helper()
	r, err := ParseRef(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Tag(id, r); err != nil {
		t.Fatal(err)
	}
}

// blobs lists the store's blob file names.
func blobs(t *testing.T, s *Store) []string {
	t.Helper()
	entries, err := os.ReadDir(s.blobDir())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func hexOf(id string) string { h, _ := digestHex(id); return h }

func TestRemoveRefThenImage(t *testing.T) {
	s := openTemp(t)
	id := putParts(t, s, "kernel", "initramfs")
	tag(t, s, id, "a:1")
	tag(t, s, id, "b:1")
	before := len(blobs(t, s))

	got, err := s.Remove("a:1", RemoveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, Removal{Untagged: []string{"a:1"}}) {
		t.Fatalf("first Remove = %+v", got)
	}
	if len(blobs(t, s)) != before {
		t.Fatal("blobs went while b:1 still points at the image")
	}
	if _, err := s.Resolve("a:1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("a:1 after rm: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.refDir(), "a")); !os.IsNotExist(err) {
		t.Error("empty ref directory left behind")
	}

	got, err = s.Remove("b", RemoveOptions{}) // b means b:latest: not a ref here
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Remove(b) = %+v, %v", got, err)
	}
	got, err = s.Remove("b:1", RemoveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Three blobs: the kernel, the initramfs and the manifest.
	if got.Deleted != id || got.Blobs != 3 || got.Bytes <= int64(len("kernel")+len("initramfs")) {
		t.Fatalf("second Remove = %+v", got)
	}
	if left := blobs(t, s); len(left) != 0 {
		t.Fatalf("blobs left: %v", left)
	}
	if images, _ := s.List(); len(images) != 0 {
		t.Fatalf("images left: %v", images)
	}
}

func TestRemoveKeepsSharedBlobs(t *testing.T) {
	s := openTemp(t)
	x := putParts(t, s, "shared kernel", "x initramfs")
	y := putParts(t, s, "shared kernel", "y initramfs")
	tag(t, s, x, "x")
	tag(t, s, y, "y")
	got, err := s.Remove("x", RemoveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Deleted != x || got.Blobs != 2 { // x's manifest and initramfs
		t.Fatalf("Remove = %+v", got)
	}
	im, err := s.Resolve("y")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{im.KernelPath(), im.InitramfsPath()} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("y lost a blob: %v", err)
		}
	}
}

func TestRemoveByIDTakesAllRefs(t *testing.T) {
	s := openTemp(t)
	id := putParts(t, s, "k", "")
	tag(t, s, id, "one")
	tag(t, s, id, "two:t")
	other := putParts(t, s, "other", "")
	tag(t, s, other, "three")
	got, err := s.Remove(hexOf(id)[:8], RemoveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Untagged, []string{"one:latest", "two:t"}) || got.Deleted != id {
		t.Fatalf("Remove = %+v", got)
	}
	if _, err := s.Resolve("three"); err != nil {
		t.Fatal(err)
	}
	// An untagged image goes by its full ID too.
	untagged := putParts(t, s, "untagged", "")
	if got, err := s.Remove(untagged, RemoveOptions{}); err != nil || got.Deleted != untagged || len(got.Untagged) != 0 {
		t.Fatalf("Remove(untagged) = %+v, %v", got, err)
	}
}

func TestRemoveInUse(t *testing.T) {
	s := openTemp(t)
	id := putParts(t, s, "k", "i")
	tag(t, s, id, "busy")
	before := blobs(t, s)
	var asked string
	inUse := func(imageID string) ([]string, error) {
		asked = imageID
		return []string{"session 0123456789ab (work)", "snapshot s1"}, nil
	}
	_, err := s.Remove("busy", RemoveOptions{InUse: inUse})
	if !errors.Is(err, ErrInUse) || asked != id ||
		err.Error() != "image busy is in use by session 0123456789ab (work), snapshot s1; remove them first, or remove the image anyway with: gondolin image rm -f busy" {
		t.Fatalf("Remove = %v (asked about %s)", err, asked)
	}
	if _, err := s.Resolve("busy"); err != nil || !reflect.DeepEqual(blobs(t, s), before) {
		t.Fatalf("a refused Remove changed the store: %v", err)
	}
	// Only the image's last ref asks: another ref keeps it alive.
	tag(t, s, id, "alias")
	asked = ""
	if _, err := s.Remove("alias", RemoveOptions{InUse: inUse}); err != nil || asked != "" {
		t.Fatalf("Remove(alias) = %v, asked %q", err, asked)
	}
	// A failing scan refuses too, unless forced.
	failing := func(string) ([]string, error) { return nil, errors.New("disk on fire") }
	if _, err := s.Remove("busy", RemoveOptions{InUse: failing}); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("Remove with a failing scan = %v", err)
	}
	got, err := s.Remove("busy", RemoveOptions{InUse: inUse, Force: true})
	if err != nil || got.Deleted != id || len(got.Users) != 2 {
		t.Fatalf("forced Remove = %+v, %v", got, err)
	}
}

func TestRemoveDanglingRef(t *testing.T) {
	s := openTemp(t)
	id := putParts(t, s, "k", "")
	tag(t, s, id, "gone")
	os.Remove(filepath.Join(s.manifestDir(), hexOf(id)))
	got, err := s.Remove("gone", RemoveOptions{})
	if err != nil || !reflect.DeepEqual(got.Untagged, []string{"gone:latest"}) {
		t.Fatalf("Remove = %+v, %v", got, err)
	}
}

// TestRemoveWaitsForWriters: a writer's blob that no manifest names yet
// survives a Remove that runs meanwhile, and an orphan left by a crashed
// writer is collected.
func TestRemoveWaitsForWriters(t *testing.T) {
	s := openTemp(t)
	victim := putParts(t, s, "victim", "")
	tag(t, s, victim, "victim")
	orphan, err := s.PutBlob(strings.NewReader("left by a crashed build"))
	if err != nil {
		t.Fatal(err)
	}

	release, err := s.Hold()
	if err != nil {
		t.Fatal(err)
	}
	inFlight, err := s.PutBlob(strings.NewReader("a build's kernel"))
	if err != nil {
		t.Fatal(err)
	}
	waiting := make(chan struct{})
	done := make(chan error)
	go func() {
		_, err := s.Remove("victim", RemoveOptions{Waiting: func() { close(waiting) }})
		done <- err
	}()
	select {
	case <-waiting:
	case <-time.After(5 * time.Second):
		t.Fatal("Remove did not wait for the writer")
	}
	select {
	case err := <-done:
		t.Fatalf("Remove finished while a writer held the store: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	inFlight.Format = FormatPVH
	built, err := s.PutManifest(Manifest{Created: time.Now().UTC(), Kernel: inFlight})
	if err != nil {
		t.Fatal(err)
	}
	tag(t, s, built, "built")
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.Path(inFlight)); err != nil {
		t.Fatalf("the writer's blob was collected: %v", err)
	}
	if _, err := os.Stat(s.Path(orphan)); !os.IsNotExist(err) {
		t.Fatalf("orphan blob survived: %v", err)
	}
	if _, err := s.Resolve("built"); err != nil {
		t.Fatal(err)
	}
}
