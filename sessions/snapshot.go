package sessions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/gondolin/gondolin/imagestore"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/termsafe"
	"github.com/gondolin/gondolin/netpolicy"
	"github.com/gondolin/gondolin/snapshots"
	"github.com/gondolin/gondolin/vm"
)

// SnapshotRequest asks for a snapshot of a live session.
type SnapshotRequest struct {
	Name string `json:"name,omitempty"`
	// Output writes the snapshot's disk to this path (its metadata and
	// state beside it) instead of into the store alone.
	Output string `json:"output,omitempty"`
	// Live includes RAM and devices: processes, tmpfs and shell state.
	Live bool `json:"live,omitempty"`
}

// snapshotSession is what a snapshot remembers of its session.
type snapshotSession struct {
	Spec    Spec              `json:"spec"`
	Command []string          `json:"command,omitempty"`
	Keep    bool              `json:"keep,omitempty"`
	Label   string            `json:"label,omitempty"`
	PTYs    []PTYRecord       `json:"ptys,omitempty"`
	Policy  *netpolicy.Policy `json:"policy,omitempty"`
}

// Snapshot checkpoints a live session. Without Live it freezes the guest's
// root filesystem, pauses the VM for as long as copying its disk overlay
// takes, and thaws; with Live it stops the guest's CPUs, saves RAM and
// devices and copies the disk from that one instant (see vm.Machine.SaveState for
// why not while it runs), then resumes it. Either way the session goes on
// running. The snapshot ends when ctx does (its client went away), and
// what it paused or froze is undone even then.
func (sv *Supervisor) Snapshot(ctx context.Context, ref string, req SnapshotRequest) (*snapshots.Snapshot, error) {
	if !sv.track() {
		return nil, errClosing
	}
	defer sv.bg.Done()
	s, err := sv.lookup(ref)
	if err != nil {
		return nil, err
	}
	if req.Name != "" {
		if err := snapshots.ValidName(req.Name); err != nil {
			return nil, invalidf("--name: %v", err)
		}
		if _, err := sv.rt.Snapshots.Resolve(req.Name); err == nil {
			return nil, errorf(errdefs.ErrConflict, "a snapshot named %q exists", req.Name)
		}
	}
	if req.Output != "" {
		if !filepath.IsAbs(req.Output) {
			return nil, invalidf("--output %q: use an absolute path", req.Output)
		}
		if _, err := os.Stat(req.Output); err == nil {
			return nil, errorf(errdefs.ErrConflict, "--output %s exists; choose another path", req.Output)
		}
		if st, err := os.Stat(filepath.Dir(req.Output)); err != nil || !st.IsDir() {
			return nil, invalidf("--output %s: its directory does not exist", req.Output)
		}
	}
	s.mu.Lock()
	m, a := s.m, s.agent
	state, _ := s.derivedLocked()
	busy := s.snapshotting
	if state == Live && !busy {
		s.snapshotting = true
	}
	s.mu.Unlock()
	if state != Live {
		return nil, errorf(errdefs.ErrUnavailable, "session %s is %s; only a live session can be snapshotted", s.rec.ID, state)
	}
	if busy {
		return nil, errorf(errdefs.ErrConflict, "a snapshot of session %s is being taken; try again when it is done", s.rec.ID)
	}
	// Followers hear when it starts (the session's Phase says so) and
	// when it ends, made or not.
	sv.emit(Event{Type: EventSnapshot, Session: s.rec.ID, State: Live, Phase: PhaseSnapshot})
	defer func() {
		s.mu.Lock()
		s.snapshotting = false
		s.mu.Unlock()
		sv.emit(Event{Type: EventSnapshot, Session: s.rec.ID})
	}()
	img, err := sv.rt.Images.Resolve(s.rec.ImageID)
	if err != nil {
		return nil, fmt.Errorf("the session's image: %w", err)
	}
	store := sv.rt.Snapshots
	id, dir, err := store.Begin()
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			store.Abort(dir)
		}
	}()
	overlay := filepath.Join(sv.reg.dir(s.rec.ID), layout.Disk)
	snapDisk := filepath.Join(dir, snapshots.DiskFile)
	// Undoing a pause or a freeze must happen even when the caller has
	// gone away, within its own deadline.
	undo := func(f func(context.Context) error) error {
		uctx, cancel := context.WithTimeout(context.Background(), undoTimeout)
		defer cancel()
		return f(uctx)
	}
	kind := snapshots.Disk
	if req.Live {
		// The guest stays stopped from the start of the save to the end
		// of the disk copy: RAM and disk are from one instant.
		kind = snapshots.Live
		if err := m.SaveState(ctx, filepath.Join(dir, snapshots.StateFile)); err != nil {
			undo(m.Resume)
			return nil, err
		}
		err := snapshots.CopyDisk(overlay, snapDisk)
		if rerr := undo(m.Resume); rerr != nil && err == nil {
			err = fmt.Errorf("resume after snapshot: %w", rerr)
		}
		if err != nil {
			return nil, err
		}
	} else {
		fctx, cancel := context.WithTimeout(ctx, freezeTimeout)
		err := a.Freeze(fctx, false, freezeTimeout)
		cancel()
		if err != nil {
			// A freeze the guest did not confirm may still have happened.
			undo(func(c context.Context) error { return a.Freeze(c, true, 0) })
			return nil, fmt.Errorf("freeze the guest's disk: %w", err)
		}
		err = m.Pause(ctx)
		if err == nil {
			err = snapshots.CopyDisk(overlay, snapDisk)
			if rerr := undo(m.Resume); rerr != nil && err == nil {
				err = rerr
			}
		}
		if terr := undo(func(c context.Context) error { return a.Freeze(c, true, 0) }); terr != nil && err == nil {
			err = fmt.Errorf("thaw the guest's disk: %w", terr)
		}
		if err != nil {
			return nil, err
		}
	}
	if err := snapshots.Flatten(ctx, snapDisk, img.RootfsPath()); err != nil {
		return nil, err
	}
	s.mu.Lock()
	meta := snapshotSession{Spec: s.rec.Spec, Command: s.rec.Command, Keep: s.rec.Keep, Label: s.rec.Label, Policy: s.state.Policy}
	for _, p := range s.ptyList() {
		if p.info().Running {
			meta.PTYs = append(meta.PTYs, p.record())
		}
	}
	s.mu.Unlock()
	raw, _ := json.Marshal(meta)
	snap := &snapshots.Snapshot{
		ID: id, Name: req.Name, Kind: kind, Created: time.Now().UTC(), Source: s.rec.ID,
		ImageID: img.ID, ImageRef: s.rec.ImageRef, BaseDigest: img.Manifest.Rootfs.Digest,
		Shape: snapshots.Shape{CPUs: s.rec.VM.CPUs, MemoryMiB: s.rec.VM.MemoryMiB, Network: s.rec.VM.Network,
			Accel: string(s.rec.VM.Accel), MachineType: string(s.rec.VM.MachineType)},
		Session: raw, Path: req.Output,
	}
	if err := store.Commit(snap, dir); err != nil {
		return nil, err
	}
	ok = true
	return snap, nil
}

// Deadlines of a snapshot's calls into the guest and QEMU: a freeze
// (the guest syncs its disk first) and the undoing of a pause or a
// freeze, which runs even when the caller has gone.
const (
	freezeTimeout = 30 * time.Second
	undoTimeout   = 10 * time.Second
)

// resumePlan is what resuming a snapshot needs: the VM to start and what
// the snapshot remembers of its session.
type resumePlan struct {
	snap    *snapshots.Snapshot
	img     *imagestore.Image
	cfg     vm.Config
	session snapshotSession
	// foreign is set for a snapshot this home did not make: it resumes
	// as a disk checkpoint with the requester's spec alone, and note
	// tells the user so.
	foreign bool
	note    string
}

// planResume checks a snapshot (present, whole, its image available) and
// prepares a VM configuration in dir that continues it. The snapshot
// itself is never written to. Only a snapshot this home signed is
// trusted whole (see snapshots.Store.Own); any other resumes through
// planForeignResume.
func (r *Runtime) planResume(ctx context.Context, ref, dir string) (*resumePlan, error) {
	snap, err := r.Snapshots.Resolve(ref)
	if err != nil {
		return nil, err
	}
	own, err := r.Snapshots.Own(snap)
	if err != nil {
		return nil, err
	}
	if !own {
		return r.planForeignResume(ctx, ref, snap.AsDiskCheckpoint(), dir)
	}
	if err := snapshots.Verify(snap); err != nil {
		return nil, errorf(errdefs.ErrInvalid, "snapshot %s cannot be resumed: %v", ref, err)
	}
	img, err := r.snapshotImage(snap)
	if err != nil {
		return nil, err
	}
	plan := &resumePlan{snap: snap, img: img}
	if len(snap.Session) > 0 {
		if err := json.Unmarshal(snap.Session, &plan.session); err != nil {
			return nil, errorf(errdefs.ErrInvalid, "snapshot %s: corrupt session record: %v", ref, err)
		}
	}
	accel, err := r.Accel(ctx, img)
	if err != nil {
		return nil, err
	}
	if snap.Kind == snapshots.Live && snap.Shape.Accel != "" && snap.Shape.Accel != string(accel) {
		return nil, errorf(errdefs.ErrInvalid, "snapshot %s was taken under %s and cannot continue under %s (set GONDOLIN_ACCEL=%s)",
			ref, snap.Shape.Accel, accel, snap.Shape.Accel)
	}
	backing, err := snapshots.ResumeBacking(ctx, snap, img.RootfsPath(), dir)
	if err != nil {
		return nil, err
	}
	network := !plan.session.Spec.NoNetwork
	if snap.Shape.CPUs != 0 {
		network = snap.Shape.Network
	}
	plan.cfg = vm.Config{
		Dir: dir, Name: "gondolin-" + filepath.Base(dir),
		Kernel: img.KernelPath(), Initramfs: img.InitramfsPath(), Backing: backing,
		CPUs: snap.Shape.CPUs, MemoryMiB: snap.Shape.MemoryMiB, Accel: accel,
		MachineType: vm.MachineType(snap.Shape.MachineType), Network: network, Debug: r.Debug,
		Restore: snap.StatePath(),
	}
	return plan, nil
}

// planForeignResume prepares a foreign snapshot's resume: its disk,
// checked and copied (snapshots.ForeignBacking), booted from the image it
// names. Nothing else it records is used: not its live state (a
// migration stream is no security boundary in QEMU), not its mounts,
// policy, command or VM shape, which resumeSpec takes from the request.
func (r *Runtime) planForeignResume(ctx context.Context, ref string, snap *snapshots.Snapshot, dir string) (*resumePlan, error) {
	img, err := r.snapshotImage(snap)
	if err != nil {
		return nil, err
	}
	backing, err := snapshots.ForeignBacking(ctx, snap, img.RootfsPath(), dir)
	if err != nil {
		if errors.Is(err, errdefs.ErrInvalid) {
			return nil, errorf(errdefs.ErrInvalid, "snapshot %s cannot be resumed: %v", ref, err)
		}
		return nil, err
	}
	accel, err := r.Accel(ctx, img)
	if err != nil {
		return nil, err
	}
	// The recorded reference is only a name from elsewhere: the session
	// shows the image it really boots.
	snap.ImageRef = img.ID
	if len(img.Refs) > 0 {
		snap.ImageRef = img.Refs[0]
	}
	plan := &resumePlan{snap: snap, img: img, foreign: true,
		note: fmt.Sprintf("snapshot %s was not made by this home (or was changed since): it resumes as a disk checkpoint, without live state, "+
			"and with only the mounts and network policy given on the command line", ref)}
	plan.cfg = vm.Config{
		Dir: dir, Name: "gondolin-" + filepath.Base(dir),
		Kernel: img.KernelPath(), Initramfs: img.InitramfsPath(), Backing: backing,
		Accel: accel, Network: true, Debug: r.Debug,
	}
	return plan, nil
}

// snapshotImage finds the image a snapshot was taken from, by ID or by its
// root disk, or says what to build or pull.
func (r *Runtime) snapshotImage(snap *snapshots.Snapshot) (*imagestore.Image, error) {
	if snap.ImageID != "" {
		if img, err := r.Images.Resolve(snap.ImageID); err == nil {
			return img, nil
		}
	}
	if images, err := r.Images.List(); err == nil {
		for i := range images {
			if images[i].Manifest.Rootfs.Digest == snap.BaseDigest {
				return r.Images.Resolve(images[i].ID)
			}
		}
	}
	ref := termsafe.String(snap.ImageRef) // from elsewhere, for a foreign snapshot
	if ref == "" {
		ref = "its image"
	}
	how := "gondolin image build"
	if !strings.HasPrefix(ref, "default:") {
		how = "gondolin image pull " + ref + " (or image build --tag " + ref + ")"
	}
	return nil, errorf(errdefs.ErrNotFound, "snapshot %s needs %s (%s), which is not here: %s", snap.ID, ref, termsafe.String(snap.ImageID), how)
}

// resumeSpec is the spec a resumed session runs with: the snapshot's,
// with the requester's name and secret values. A foreign snapshot's is
// the requester's alone: its mounts, policy and VM size, which the plan's
// VM takes too.
func (p *resumePlan) resumeSpec(req Spec, values map[string]string) (Spec, error) {
	if p.foreign {
		spec := Spec{Image: p.img.ID, Name: req.Name, Cold: true, CPUs: req.CPUs, MemoryMiB: req.MemoryMiB,
			Env: slices.Clone(req.Env), Cwd: req.Cwd, NoNetwork: req.NoNetwork, Mounts: slices.Clone(req.Mounts)}
		if req.Policy != nil {
			pol := req.Policy.Clone()
			spec.Policy = &pol
		}
		p.cfg.CPUs, p.cfg.MemoryMiB, p.cfg.Network = spec.CPUs, spec.MemoryMiB, !spec.NoNetwork
		return spec, spec.applySecretValues(values)
	}
	spec := p.session.Spec
	spec.Name = req.Name
	spec.Cold = true // nothing to clone: the snapshot is the VM
	if p.session.Policy != nil {
		pol := p.session.Policy.Clone()
		spec.Policy = &pol
	}
	if spec.Image == "" {
		spec.Image = p.img.ID
	}
	if err := spec.applySecretValues(values); err != nil {
		return spec, err
	}
	return spec, nil
}

// Snapshots lists the store's snapshots, newest first, each with whether
// this home signed it.
func (sv *Supervisor) Snapshots() ([]SnapshotInfo, error) {
	return ListSnapshots(sv.rt.Snapshots)
}

// ListSnapshots lists st's snapshots, newest first, each with whether
// this home signed it. It is the supervisor's answer, and the CLI's when
// no supervisor runs (a listing never starts one).
func ListSnapshots(st *snapshots.Store) ([]SnapshotInfo, error) {
	list, err := st.List()
	if err != nil {
		return nil, err
	}
	out := []SnapshotInfo{}
	for _, s := range list {
		own, err := st.Own(s)
		if err != nil {
			return nil, err
		}
		out = append(out, SnapshotInfo{s, own})
	}
	return out, nil
}

// GetSnapshot finds a snapshot by ID, prefix, name or disk path.
func (sv *Supervisor) GetSnapshot(ref string) (*snapshots.Snapshot, error) {
	snap, err := sv.rt.Snapshots.Resolve(ref)
	return snap, err
}

// RemoveSnapshot deletes a snapshot of the store.
func (sv *Supervisor) RemoveSnapshot(ref string) error {
	return sv.rt.Snapshots.Remove(ref)
}
