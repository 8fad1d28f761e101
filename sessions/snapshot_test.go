package sessions

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/imagestore"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testreq"
	"github.com/gondolin/gondolin/mounts"
	"github.com/gondolin/gondolin/netpolicy"
	"github.com/gondolin/gondolin/snapshots"
)

// These tests plan resumes (what planResume and resumeSpec decide) and
// never boot a VM. They need qemu-img, as the snapshot disks are real.

// resumeEnv is a home with one image whose root disk is a real qcow2,
// and a qemu-img on PATH that logs its arguments before running the real
// one, so that a test can tell whether anything opened a disk.
type resumeEnv struct {
	r       *Runtime
	img     *imagestore.Image
	qemuImg string // the real one
	log     string // what the logging qemu-img was asked, a line per call
}

func newResumeEnv(t *testing.T) *resumeEnv {
	t.Helper()
	real := testreq.Tool(t, "qemu-img")
	t.Setenv(layout.EnvAccel, "tcg") // no KVM probe boot
	e := &resumeEnv{qemuImg: real}
	home := layout.Home(t.TempDir())
	images, err := imagestore.Open(home.Images())
	if err != nil {
		t.Fatal(err)
	}
	var m imagestore.Manifest
	for _, part := range []struct {
		f      *imagestore.File
		data   string
		format string
	}{{&m.Kernel, "kernel", imagestore.FormatPVH}, {&m.Initramfs, "initramfs", imagestore.FormatCpio}} {
		f, err := images.PutBlob(strings.NewReader(part.data))
		if err != nil {
			t.Fatal(err)
		}
		f.Format = part.format
		*part.f = f
	}
	root := e.qcow2(t, filepath.Join(t.TempDir(), "root.qcow2"))
	if m.Rootfs, err = images.PutFile(root); err != nil {
		t.Fatal(err)
	}
	m.Rootfs.Format = imagestore.FormatQcow2
	id, err := images.PutManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	if e.img, err = images.Resolve(id); err != nil {
		t.Fatal(err)
	}
	e.r = &Runtime{Home: home, Images: images, Snapshots: &snapshots.Store{Dir: home.Snapshots()}}

	shim := t.TempDir()
	e.log = filepath.Join(shim, "calls")
	script := "#!/bin/sh\necho \"$@\" >> '" + e.log + "'\nexec '" + real + "' \"$@\"\n"
	if err := os.WriteFile(filepath.Join(shim, "qemu-img"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", shim+string(os.PathListSeparator)+os.Getenv("PATH"))
	return e
}

// qcow2 creates a 64M qcow2 at path with the real qemu-img.
func (e *resumeEnv) qcow2(t *testing.T, path string, args ...string) string {
	t.Helper()
	args = append([]string{"create", "-q", "-f", "qcow2"}, append(args, path, "64M")...)
	if out, err := exec.Command(e.qemuImg, args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v: %s", args, err, out)
	}
	return path
}

// opened reports whether the logging qemu-img was run on path.
func (e *resumeEnv) opened(path string) bool {
	b, _ := os.ReadFile(e.log)
	return bytes.Contains(b, []byte(path))
}

// snapshot commits a snapshot of sess into store (another home's store,
// for a foreign one), its disk on the image's root disk as a flattened
// snapshot's is; output writes it outside the store.
func (e *resumeEnv) snapshot(t *testing.T, store *snapshots.Store, kind snapshots.Kind, sess snapshotSession, output string) *snapshots.Snapshot {
	t.Helper()
	id, dir, err := store.Begin()
	if err != nil {
		t.Fatal(err)
	}
	e.qcow2(t, filepath.Join(dir, snapshots.DiskFile), "-F", "qcow2", "-b", e.img.RootfsPath())
	if kind == snapshots.Live {
		os.WriteFile(filepath.Join(dir, snapshots.StateFile), []byte("migration stream"), 0o600)
	}
	raw, _ := json.Marshal(sess)
	s := &snapshots.Snapshot{ID: id, Kind: kind, Created: time.Now().UTC(), Source: "0123456789ab",
		ImageID: e.img.ID, ImageRef: "default:latest", BaseDigest: e.img.Manifest.Rootfs.Digest,
		Shape:   snapshots.Shape{CPUs: 1, MemoryMiB: 256, Network: true, Accel: "tcg", MachineType: "microvm"},
		Session: raw, Path: output}
	if err := store.Commit(s, dir); err != nil {
		t.Fatal(err)
	}
	return s
}

// hostile is what an attacker would record: a host directory mounted
// read-write, and a policy of their choosing.
func hostile(t *testing.T) snapshotSession {
	pol := netpolicy.Policy{Allow: []string{"exfiltrate.example"}}
	return snapshotSession{
		Spec:   Spec{Mounts: []mounts.Spec{{HostPath: t.TempDir(), GuestPath: "/stolen"}}, Policy: &pol},
		Policy: &pol,
		PTYs:   []PTYRecord{{ID: 1, Argv: []string{"sh"}, Main: true}},
	}
}

// TestResumeOwnSnapshot: a snapshot this home took resumes fully: its
// state, its mounts and its policy.
func TestResumeOwnSnapshot(t *testing.T) {
	e := newResumeEnv(t)
	for _, output := range []string{"", filepath.Join(t.TempDir(), "own.qcow2")} {
		sess := hostile(t) // from this home, it is what the user chose
		snap := e.snapshot(t, e.r.Snapshots, snapshots.Live, sess, output)
		ref := snap.ID
		if output != "" {
			ref = output
		}
		plan, err := e.r.planResume(t.Context(), ref, t.TempDir())
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		if plan.foreign || plan.note != "" {
			t.Errorf("%s: own snapshot planned as foreign (%q)", ref, plan.note)
		}
		if plan.snap.Kind != snapshots.Live || plan.cfg.Restore == "" || plan.cfg.Restore != snap.StatePath() || len(plan.session.PTYs) != 1 {
			t.Errorf("%s: kind %s, restore %q, ptys %v; want the live state", ref, plan.snap.Kind, plan.cfg.Restore, plan.session.PTYs)
		}
		if plan.cfg.Backing != snap.DiskPath() {
			t.Errorf("%s: backing %s, want the snapshot's disk", ref, plan.cfg.Backing)
		}
		spec, err := plan.resumeSpec(Spec{Name: "r"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(spec.Mounts) != 1 || spec.Mounts[0].GuestPath != "/stolen" || spec.Policy == nil || !slices.Equal(spec.Policy.Allow, []string{"exfiltrate.example"}) {
			t.Errorf("%s: mounts %v, policy %+v; want the recorded ones", ref, spec.Mounts, spec.Policy)
		}
	}
}

// editSidecar rewrites fields of a sidecar, as anyone without the key
// can; a nil value removes the field.
func editSidecar(t *testing.T, disk string, fields map[string]any) {
	t.Helper()
	var meta map[string]json.RawMessage
	b, _ := os.ReadFile(disk + snapshots.SidecarMeta)
	if err := json.Unmarshal(b, &meta); err != nil {
		t.Fatal(err)
	}
	for k, v := range fields {
		if v == nil {
			delete(meta, k)
			continue
		}
		meta[k], _ = json.Marshal(v)
	}
	b, _ = json.Marshal(meta)
	if err := os.WriteFile(disk+snapshots.SidecarMeta, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func fileOf(t *testing.T, name, path string) snapshots.File {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return snapshots.File{Name: name, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}
}

// TestResumeEditedSidecar: a snapshot of this home whose sidecar was
// edited (a host mount and an open policy added, a disk checkpoint turned
// live with a planted state) or that was taken before snapshots were
// signed no longer verifies. It resumes without what the sidecar records:
// with only what the command line gives, and without any state.
func TestResumeEditedSidecar(t *testing.T) {
	e := newResumeEnv(t)
	for _, tt := range []struct {
		name string
		kind snapshots.Kind
		edit func(t *testing.T, out string)
	}{
		{"session record replaced", snapshots.Live, func(t *testing.T, out string) {
			raw, _ := json.Marshal(hostile(t))
			editSidecar(t, out, map[string]any{"session": json.RawMessage(raw)})
		}},
		{"disk checkpoint made live", snapshots.Disk, func(t *testing.T, out string) {
			state := out + snapshots.SidecarState
			os.WriteFile(state, []byte("a planted migration stream"), 0o600)
			raw, _ := json.Marshal(hostile(t))
			editSidecar(t, out, map[string]any{"kind": "live", "session": json.RawMessage(raw),
				"files": []snapshots.File{fileOf(t, snapshots.DiskFile, out), fileOf(t, snapshots.StateFile, state)}})
		}},
		{"taken before signing and edited", snapshots.Live, func(t *testing.T, out string) {
			raw, _ := json.Marshal(hostile(t))
			editSidecar(t, out, map[string]any{"mac": nil, "session": json.RawMessage(raw)})
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "env.qcow2")
			e.snapshot(t, e.r.Snapshots, tt.kind, snapshotSession{Command: []string{"bash"}}, out)
			tt.edit(t, out)
			dir := t.TempDir()
			plan, err := e.r.planResume(t.Context(), out, dir)
			if err != nil {
				t.Fatal(err)
			}
			if plan.cfg.Restore != "" || plan.snap.Kind != snapshots.Disk || len(plan.session.PTYs) != 0 {
				t.Errorf("restore %q, kind %s, ptys %v: the edited snapshot's state would be loaded", plan.cfg.Restore, plan.snap.Kind, plan.session.PTYs)
			}
			if !plan.foreign || !strings.Contains(plan.note, "not made by this home") || !strings.Contains(plan.note, "disk checkpoint") {
				t.Errorf("foreign %v, note %q; want a note saying the snapshot is foreign", plan.foreign, plan.note)
			}
			t.Run("nothing on the command line", func(t *testing.T) {
				p := *plan
				spec, err := p.resumeSpec(Spec{}, nil)
				if err != nil {
					t.Fatal(err)
				}
				if len(spec.Mounts) != 0 || spec.Policy != nil {
					t.Errorf("mounts %v, policy %+v: the edited sidecar's were applied", spec.Mounts, spec.Policy)
				}
			})
			t.Run("mounts and policy on the command line", func(t *testing.T) {
				p := *plan
				mine := t.TempDir()
				pol := netpolicy.Policy{Allow: []string{"example.com"}}
				spec, err := p.resumeSpec(Spec{Mounts: []mounts.Spec{{HostPath: mine, GuestPath: "/w"}}, Policy: &pol, CPUs: 2, MemoryMiB: 512}, nil)
				if err != nil {
					t.Fatal(err)
				}
				if len(spec.Mounts) != 1 || spec.Mounts[0].HostPath != mine || spec.Policy == nil || !slices.Equal(spec.Policy.Allow, pol.Allow) {
					t.Errorf("mounts %v, policy %+v; want only the command line's", spec.Mounts, spec.Policy)
				}
				if p.cfg.CPUs != 2 || p.cfg.MemoryMiB != 512 || !p.cfg.Network {
					t.Errorf("VM %d CPUs, %d MiB, network %v; want the command line's", p.cfg.CPUs, p.cfg.MemoryMiB, p.cfg.Network)
				}
			})
			t.Run("--no-network on the command line", func(t *testing.T) {
				p := *plan
				spec, err := p.resumeSpec(Spec{NoNetwork: true}, nil)
				if err != nil {
					t.Fatal(err)
				}
				if !spec.NoNetwork || p.cfg.Network {
					t.Errorf("no_network %v, VM network %v; want none", spec.NoNetwork, p.cfg.Network)
				}
			})
		})
	}
}

// TestResumeForeignLive: a live snapshot another home took (its sidecar
// signed with that home's key) resumes as a disk checkpoint: its
// migration stream is never loaded, and its disk is a checked copy on
// this home's image.
func TestResumeForeignLive(t *testing.T) {
	e := newResumeEnv(t)
	other := &snapshots.Store{Dir: filepath.Join(t.TempDir(), "snapshots")}
	out := filepath.Join(t.TempDir(), "theirs.qcow2")
	e.snapshot(t, other, snapshots.Live, hostile(t), out)
	for _, shared := range []bool{true, false} {
		// Shared without its state file: nothing of it is needed.
		if !shared {
			os.Remove(out + snapshots.SidecarState)
		}
		dir := t.TempDir()
		plan, err := e.r.planResume(t.Context(), out, dir)
		if err != nil {
			t.Fatalf("state shared %v: %v", shared, err)
		}
		if plan.cfg.Restore != "" || plan.snap.Kind != snapshots.Disk || len(plan.session.PTYs) != 0 {
			t.Errorf("restore %q, kind %s: a foreign migration stream would be loaded", plan.cfg.Restore, plan.snap.Kind)
		}
		if want := filepath.Join(dir, snapshots.ResumeDisk); plan.cfg.Backing != want {
			t.Errorf("backing %s, want the checked copy %s", plan.cfg.Backing, want)
		}
		if !plan.foreign || !strings.Contains(plan.note, "disk checkpoint") {
			t.Errorf("note %q; want one saying it boots from its disk", plan.note)
		}
		if e.opened(out) {
			t.Error("qemu-img was run on the foreign disk itself")
		}
	}
}

// TestResumeForeignDisk: a foreign disk (bare, or with a sidecar whose
// disk was swapped and its checksum recomputed, as anyone without the key
// can) resumes only when it opens no file but this home's image, and
// qemu-img never reads it where it lies. A backing file named like the
// image's root disk elsewhere is never opened: the copy goes on this
// home's own.
func TestResumeForeignDisk(t *testing.T) {
	e := newResumeEnv(t)
	root := e.img.RootfsPath()
	lookalike := e.qcow2(t, filepath.Join(t.TempDir(), filepath.Base(root)))
	hostFile := filepath.Join(t.TempDir(), "host-file")
	os.WriteFile(hostFile, []byte("the user's"), 0o600)
	for _, tt := range []struct {
		name    string
		sidecar bool
		make    func(t *testing.T, disk string)
		want    string // "": resumes
	}{
		{"on the image", false, func(t *testing.T, disk string) { e.qcow2(t, disk, "-F", "qcow2", "-b", root) }, ""},
		{"on a lookalike of the image", false, func(t *testing.T, disk string) { e.qcow2(t, disk, "-F", "qcow2", "-b", lookalike) }, ""},
		{"on a lookalike with a sidecar", true, func(t *testing.T, disk string) { e.qcow2(t, disk, "-F", "qcow2", "-b", lookalike) }, ""},
		{"data file", false, func(t *testing.T, disk string) {
			e.qcow2(t, disk, "-o", "data_file="+filepath.Join(t.TempDir(), "data"), "-F", "qcow2", "-b", root)
		}, "external"},
		{"data file with a sidecar", true, func(t *testing.T, disk string) {
			e.qcow2(t, disk, "-o", "data_file="+filepath.Join(t.TempDir(), "data"), "-F", "qcow2", "-b", root)
		}, "external"},
		{"on a host file", false, func(t *testing.T, disk string) { e.qcow2(t, disk, "-F", "raw", "-b", hostFile) }, "backing file"},
		{"on a host file with a sidecar", true, func(t *testing.T, disk string) { e.qcow2(t, disk, "-F", "raw", "-b", hostFile) }, "backing file"},
		{"a symbolic link", false, func(t *testing.T, disk string) {
			os.Symlink(e.qcow2(t, disk+".real", "-F", "qcow2", "-b", root), disk)
		}, "symbolic link"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			disk := filepath.Join(t.TempDir(), "evil.qcow2")
			if tt.sidecar {
				e.snapshot(t, e.r.Snapshots, snapshots.Disk, snapshotSession{}, disk)
				os.Remove(disk)
			}
			os.WriteFile(e.log, nil, 0o600)
			tt.make(t, disk)
			if tt.sidecar {
				editSidecar(t, disk, map[string]any{"files": []snapshots.File{fileOf(t, snapshots.DiskFile, disk)}})
			}
			os.WriteFile(e.log, nil, 0o600) // what made the disk does not count
			dir := t.TempDir()
			plan, err := e.r.planResume(t.Context(), disk, dir)
			if e.opened(disk) || e.opened(lookalike) || e.opened(hostFile) {
				b, _ := os.ReadFile(e.log)
				t.Errorf("qemu-img was run on the foreign disk or what it names:\n%s", b)
			}
			if tt.want != "" {
				if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
					t.Errorf("err = %v; want a one-line refusal about %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(e.log); !bytes.Contains(b, []byte(plan.cfg.Backing)) {
				t.Errorf("the logging qemu-img did not see the copy: the checks above prove nothing:\n%s", b)
			}
			out, err := exec.Command(e.qemuImg, "info", "--output=json", "-U", plan.cfg.Backing).Output()
			if err != nil {
				t.Fatal(err)
			}
			var info struct {
				Backing string `json:"full-backing-filename"`
			}
			json.Unmarshal(out, &info)
			if plan.cfg.Backing != filepath.Join(dir, snapshots.ResumeDisk) || info.Backing != root {
				t.Errorf("resumes from %s on %s; want a copy on this home's image %s", plan.cfg.Backing, info.Backing, root)
			}
		})
	}
}
