package mounts

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/gondolin/gondolin/mounts/fsproto"
)

// rootTree makes base/src/proj (the mount) and base/evil/proj (a
// directory the guest would rather have served, with a secret), and the
// spec of a mount of base/src/proj at guest ("/workspace", with options).
func rootTree(t *testing.T, guest string) (string, Spec) {
	t.Helper()
	base := t.TempDir()
	for _, d := range []string{"src/proj", "evil/proj"} {
		must(t, os.MkdirAll(filepath.Join(base, d), 0o755))
	}
	must(t, os.WriteFile(filepath.Join(base, "evil/proj/secret"), []byte("OUTSIDE"), 0o600))
	spec, err := ParseHostFS(filepath.Join(base, "src/proj") + ":" + guest)
	if err != nil {
		t.Fatal(err)
	}
	return base, spec
}

// rootSwaps replace base/src/proj in the ways a guest with write access
// to base/src (or base) could, through a mount of another session.
var rootSwaps = []struct {
	name    string
	symlink bool // refused even without a recorded Root
	swap    func(t *testing.T, base string)
}{
	{"symlink", true, func(t *testing.T, base string) {
		must(t, os.Rename(filepath.Join(base, "src/proj"), filepath.Join(base, "src/proj.old")))
		must(t, os.Symlink(filepath.Join(base, "evil/proj"), filepath.Join(base, "src/proj")))
	}},
	{"relative-symlink", true, func(t *testing.T, base string) {
		must(t, os.Rename(filepath.Join(base, "src/proj"), filepath.Join(base, "src/proj.old")))
		must(t, os.Symlink("../evil/proj", filepath.Join(base, "src/proj")))
	}},
	{"symlink-in-parent", true, func(t *testing.T, base string) {
		must(t, os.Rename(filepath.Join(base, "src"), filepath.Join(base, "src.old")))
		must(t, os.Symlink(filepath.Join(base, "evil"), filepath.Join(base, "src")))
	}},
	{"directory-renamed-over", false, func(t *testing.T, base string) {
		must(t, os.Rename(filepath.Join(base, "src/proj"), filepath.Join(base, "src/proj.old")))
		must(t, os.Rename(filepath.Join(base, "evil/proj"), filepath.Join(base, "src/proj")))
	}},
	{"recreated", false, func(t *testing.T, base string) {
		must(t, os.Rename(filepath.Join(base, "src/proj"), filepath.Join(base, "src/proj.old")))
		must(t, os.Mkdir(filepath.Join(base, "src/proj"), 0o755))
	}},
}

// TestRootMoved replaces a mount's host directory between the mount's
// making (ParseHostFS) and a server made later (a supervisor restart, or
// a resumed snapshot): no new server may serve what is there now.
func TestRootMoved(t *testing.T) {
	bothWalks(t, func(t *testing.T) {
		for _, tt := range rootSwaps {
			t.Run(tt.name, func(t *testing.T) {
				base, spec := rootTree(t, "/workspace:ro")
				tt.swap(t, base)
				s, err := NewServer([]Spec{spec}, testLogger(t))
				if err == nil {
					s.Close()
					t.Fatalf("NewServer served %s after it was replaced", spec.HostPath)
				}
				if !errors.Is(err, ErrRootChanged) {
					t.Errorf("error %v is not ErrRootChanged", err)
				}
				if msg := err.Error(); !strings.Contains(msg, "--mount-hostfs "+spec.String()) || strings.Contains(msg, "\n") {
					t.Errorf("error does not name the mount on one line: %q", msg)
				}
				if err := PinRoots([]Spec{spec}); !errors.Is(err, ErrRootChanged) {
					t.Errorf("PinRoots of a recorded Root: %v, want ErrRootChanged", err)
				}
			})
		}
	})
}

// TestRootUnrecorded: a spec recorded before roots had identities (or
// made by hand) is still never redirected through a symlink, and
// PinRoots gives it the identity it finds.
func TestRootUnrecorded(t *testing.T) {
	for _, tt := range rootSwaps {
		t.Run(tt.name, func(t *testing.T) {
			base, spec := rootTree(t, "/workspace")
			spec.Root = RootID{}
			tt.swap(t, base)
			s, err := NewServer([]Spec{spec}, testLogger(t))
			if tt.symlink {
				if !errors.Is(err, ErrRootChanged) {
					t.Fatalf("NewServer through a symlink: %v, want ErrRootChanged", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
			specs := []Spec{{GuestPath: "/m", Memory: true}, spec}
			must(t, PinRoots(specs))
			var st syscall.Stat_t
			must(t, syscall.Lstat(spec.HostPath, &st))
			want := RootID{Dev: st.Dev, Ino: st.Ino}
			if specs[1].Root != want || specs[0].Root != (RootID{}) {
				t.Errorf("PinRoots recorded %v, %v; want %v for the host mount only", specs[0].Root, specs[1].Root, want)
			}
			s, err = NewServer(specs, testLogger(t))
			if err != nil {
				t.Fatalf("NewServer after PinRoots: %v", err)
			}
			s.Close()
		})
	}
}

// TestRootRecord: the identity survives the session's JSON record, and
// a server made from the record serves the directory it names.
func TestRootRecord(t *testing.T) {
	_, spec := rootTree(t, "/workspace")
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	var back Spec
	if err := json.Unmarshal(b, &back); err != nil || back != spec || back.Root.Ino == 0 {
		t.Fatalf("JSON round trip: %s -> %+v, %v", b, back, err)
	}
	// A record without a root reads as zero, and says so when written.
	var old Spec
	must(t, json.Unmarshal([]byte(`{"id":"m1","host_path":"/x","guest_path":"/x"}`), &old))
	if b, _ := json.Marshal(old); old.Root != (RootID{}) || strings.Contains(string(b), "root") {
		t.Errorf("a record without a root: %+v, %s", old.Root, b)
	}
	s, err := NewServer([]Spec{back}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestServerKeepingLeavesOutReplacedRoots: a supervisor adopting a VM
// serves the mounts whose directories are still theirs, and answers the
// guest at once (ENODEV) for one that was replaced, rather than failing
// every mount or leaving the guest waiting.
func TestServerKeepingLeavesOutReplacedRoots(t *testing.T) {
	for _, tt := range rootSwaps {
		t.Run(tt.name, func(t *testing.T) {
			base, swapped := rootTree(t, "/workspace")
			other := t.TempDir()
			must(t, os.WriteFile(filepath.Join(other, "f"), nil, 0o600))
			kept, err := ParseHostFS(other + ":/other")
			if err != nil {
				t.Fatal(err)
			}
			specs := []Spec{swapped, kept}
			must(t, PinRoots(specs))
			tt.swap(t, base)
			if _, err := NewServer(specs, testLogger(t)); !errors.Is(err, ErrRootChanged) {
				t.Fatalf("NewServer: %v, want ErrRootChanged", err)
			}
			s, lost, err := NewServerKeeping(specs, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if len(lost) != 1 || !errors.Is(lost[0], ErrRootChanged) {
				t.Fatalf("lost %v, want the replaced root only", lost)
			}
			if rep := s.handle(&fsproto.Request{Op: fsproto.OpStat, Mount: specs[0].ID, Path: "secret"}); rep.Errno != syscall.ENODEV {
				t.Errorf("stat in the replaced mount: errno %v, want ENODEV", rep.Errno)
			}
			if rep := s.handle(&fsproto.Request{Op: fsproto.OpStat, Mount: specs[1].ID, Path: "f"}); rep.Errno != 0 {
				t.Errorf("stat in the kept mount: errno %v", rep.Errno)
			}
		})
	}
}
