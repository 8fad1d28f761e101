package snapshots

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/testreq"
)

// fakeSnapshot commits a snapshot whose disk and state are plain files.
func fakeSnapshot(t *testing.T, st *Store, name string, kind Kind) *Snapshot {
	t.Helper()
	id, dir, err := st.Begin()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, DiskFile), []byte("disk of "+name), 0o600)
	if kind == Live {
		os.WriteFile(filepath.Join(dir, StateFile), []byte("state of "+name), 0o600)
	}
	s := &Snapshot{ID: id, Name: name, Kind: kind, Created: time.Now()}
	if err := st.Commit(s, dir); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStoreResolveVerifyRemove(t *testing.T) {
	st := &Store{Dir: t.TempDir()}
	a := fakeSnapshot(t, st, "alpha", Live)
	b := fakeSnapshot(t, st, "beta", Disk)
	list, err := st.List()
	if err != nil || len(list) != 2 {
		t.Fatalf("List: %v %v", list, err)
	}
	tests := []struct {
		ref  string
		want string
		err  error
	}{
		{a.ID, a.ID, nil},
		{"alpha", a.ID, nil},
		{"beta", b.ID, nil},
		{b.ID[:6], b.ID, nil},
		{"nope", "", errNoSnapshot},
		{"", "", errNoSnapshot},
	}
	for _, tt := range tests {
		got, err := st.Resolve(tt.ref)
		if tt.err != nil {
			if !errors.Is(err, tt.err) {
				t.Errorf("Resolve(%q) err = %v, want %v", tt.ref, err, tt.err)
			}
			continue
		}
		if err != nil || got.ID != tt.want {
			t.Errorf("Resolve(%q) = %v, %v; want %s", tt.ref, got, err, tt.want)
		}
	}
	got, _ := st.Resolve("alpha")
	if err := Verify(got); err != nil {
		t.Fatalf("a whole snapshot fails Verify: %v", err)
	}
	if len(got.Files) != 2 || got.Size() == 0 {
		t.Fatalf("files %+v", got.Files)
	}
	// Truncation and tampering are reported, naming the file.
	os.Truncate(got.StatePath(), 3)
	if err := Verify(got); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("truncated state: %v", err)
	}
	os.WriteFile(got.StatePath(), []byte("state of alphX"), 0o600)
	if err := Verify(got); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("tampered state: %v", err)
	}
	os.Remove(got.DiskPath())
	if err := Verify(got); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("missing disk: %v", err)
	}
	if err := st.Remove("alpha"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Resolve("alpha"); !errors.Is(err, errNoSnapshot) {
		t.Fatalf("removed snapshot still resolves: %v", err)
	}
	// A corrupt metadata file hides that snapshot and no other.
	os.WriteFile(filepath.Join(st.Dir, b.ID, MetaFile), []byte("{"), 0o600)
	if list, _ := st.List(); len(list) != 0 {
		t.Fatalf("corrupt meta listed: %v", list)
	}
}

func TestOutputSnapshotAndOpenPath(t *testing.T) {
	st := &Store{Dir: t.TempDir()}
	out := filepath.Join(t.TempDir(), "env.qcow2")
	id, dir, _ := st.Begin()
	os.WriteFile(filepath.Join(dir, DiskFile), []byte("disk"), 0o600)
	os.WriteFile(filepath.Join(dir, StateFile), []byte("state"), 0o600)
	s := &Snapshot{ID: id, Kind: Live, Created: time.Now(), Path: out}
	if err := st.Commit(s, dir); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{out, out + SidecarMeta, out + SidecarState} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
	}
	// Moved with its sidecars, it opens by path and verifies.
	moved := filepath.Join(t.TempDir(), "moved.qcow2")
	for _, suffix := range []string{"", SidecarMeta, SidecarState} {
		os.Rename(out+suffix, moved+suffix)
	}
	got, err := st.Resolve(moved)
	if err != nil || got.Kind != Live || got.DiskPath() != moved {
		t.Fatalf("moved: %+v %v", got, err)
	}
	if err := Verify(got); err != nil {
		t.Fatalf("moved snapshot fails Verify: %v", err)
	}
	if _, err := OpenPath(filepath.Join(t.TempDir(), "missing.qcow2")); !errors.Is(err, errNoSnapshot) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestIsPathAndNames(t *testing.T) {
	for ref, want := range map[string]bool{"abc123": false, "warm": false, "./x": true, "/tmp/x.qcow2": true, "x.qcow2": true} {
		if IsPath(ref) != want {
			t.Errorf("IsPath(%q) = %v", ref, !want)
		}
	}
	for name, ok := range map[string]bool{"warm": true, "v1.2_x-y": true, "../x": false, "": false, "a/b": false, "-x": false} {
		if (ValidName(name) == nil) != ok {
			t.Errorf("ValidName(%q) ok=%v", name, !ok)
		}
	}
}

// TestBareDiskOpensAsDiskCheckpoint needs qemu-img: a disk file without
// its metadata resumes as a disk checkpoint of the image its backing names.
func TestBareDiskOpensAsDiskCheckpoint(t *testing.T) {
	testreq.Tool(t, "qemu-img")
	dir := t.TempDir()
	base := filepath.Join(dir, "0cc494d8e36cc79605e34d3e846a360ad6781742818154d00c7305b32e7300a5")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", base, "16M").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	disk := filepath.Join(dir, "alone.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, disk).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	s, err := OpenPath(disk)
	if err != nil || s.Kind != Disk || s.BaseDigest != "sha256:"+filepath.Base(base) {
		t.Fatalf("%+v %v", s, err)
	}
	// Its backing moved: the resume gets a repaired copy, the file is untouched.
	before, _ := os.ReadFile(disk)
	newBase := filepath.Join(t.TempDir(), filepath.Base(base))
	os.Rename(base, newBase)
	backing, err := ResumeBacking(t.Context(), s, newBase, t.TempDir())
	if err != nil || backing == disk {
		t.Fatalf("repair: %s %v", backing, err)
	}
	if got, _ := backingFile(backing); got != newBase {
		t.Fatalf("repaired backing %s, want %s", got, newBase)
	}
	if after, _ := os.ReadFile(disk); string(after) != string(before) {
		t.Fatal("the snapshot file changed")
	}
	// A file that is not a qcow2 is refused.
	junk := filepath.Join(dir, "junk.qcow2")
	os.WriteFile(junk, []byte("not a disk"), 0o600)
	if _, err := OpenPath(junk); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("junk: %v", err)
	}
}

// TestSweepScratch removes what unfinished snapshots left and nothing
// else.
func TestSweepScratch(t *testing.T) {
	st := &Store{Dir: t.TempDir()}
	kept := fakeSnapshot(t, st, "kept", Disk)
	_, scratch, err := st.Begin()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(scratch, DiskFile), []byte("half a disk"), 0o600)
	other := filepath.Join(st.Dir, ".notasnapshot.tmp")
	os.Mkdir(other, 0o700)
	st.SweepScratch()
	if _, err := os.Stat(scratch); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("scratch directory %s survived: %v", scratch, err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("a directory that is not a snapshot's scratch was removed: %v", err)
	}
	if _, err := st.Resolve(kept.ID); err != nil {
		t.Errorf("a committed snapshot was removed: %v", err)
	}
}
