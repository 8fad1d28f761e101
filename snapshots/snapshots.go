// Package snapshots keeps checkpoints of sessions: a disk checkpoint (the
// VM's copy-on-write disk, flattened onto its image) or a live snapshot
// (the disk plus RAM and device state, so running processes come back).
// It stores, signs, lists, verifies and repairs them, and tells a
// snapshot this home made from one that comes from elsewhere (sign.go);
// the supervisor takes and resumes them.
package snapshots

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/gondolin/gondolin/internal/atomicfile"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
)

// Kind says what a snapshot holds.
type Kind string

const (
	Disk Kind = "disk" // the disk only: a resume boots it
	Live Kind = "live" // disk, RAM and devices: a resume continues it
)

// File names in a snapshot directory (or beside an --output disk file),
// as internal/layout names them.
const (
	MetaFile  = layout.SnapshotMeta
	DiskFile  = layout.Disk
	StateFile = layout.SavedState
)

// Sidecar suffixes of a snapshot written to a path of the user's choice
// (PATH is the disk; PATH.json and PATH.state.zst go beside it).
const (
	SidecarMeta  = layout.SnapshotSidecarMeta
	SidecarState = layout.SnapshotSidecarState
)

// Errors, checked with errors.Is.
var (
	errNoSnapshot = errdefs.Kind(errdefs.ErrNotFound, "snapshot not found")
	errBadRequest = errdefs.Kind(errdefs.ErrInvalid, "invalid snapshot request")
	// ErrCorrupt: a damaged or tampered snapshot file, bad input as a
	// bad flag is.
	ErrCorrupt = errdefs.Kind(errdefs.ErrInvalid, "snapshot is corrupt")
)

// File is one file of a snapshot with what it must hash to.
type File struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Shape is the VM a snapshot was taken from: a live snapshot only
// restores into the same machine and devices.
type Shape struct {
	CPUs        int    `json:"cpus"`
	MemoryMiB   int    `json:"memory_mib"`
	Network     bool   `json:"network"`
	Accel       string `json:"accel"`
	MachineType string `json:"machine_type"`
}

// Snapshot is a snapshot's metadata.
type Snapshot struct {
	ID       string    `json:"id"`
	Name     string    `json:"name,omitempty"`
	Kind     Kind      `json:"kind"`
	Created  time.Time `json:"created"`
	Source   string    `json:"source_session"`
	ImageID  string    `json:"image_id"`
	ImageRef string    `json:"image_ref"`
	// BaseDigest is the image root disk the snapshot disk is flattened
	// onto, so a moved snapshot finds it again.
	BaseDigest string `json:"base_digest"`
	Shape      Shape  `json:"shape"`
	// Session is the source session's spec and terminals, as the
	// supervisor recorded them (opaque here).
	Session json.RawMessage `json:"session,omitempty"`
	Files   []File          `json:"files"`
	// Path is set for a snapshot written outside the store (--output):
	// the disk file, with its sidecars beside it.
	Path string `json:"path,omitempty"`
	// MAC signs everything above with the home's key (see Own). It is
	// last so that a reader sees what it covers first.
	MAC string `json:"mac,omitempty"`

	dir    string // where the files are, for snapshots in the store
	signed []byte // what the MAC must cover, as read (see signedBytes)
}

// Size is the snapshot's total size on disk.
func (s *Snapshot) Size() int64 {
	var n int64
	for _, f := range s.Files {
		n += f.Size
	}
	return n
}

// DiskPath is the snapshot's disk.
func (s *Snapshot) DiskPath() string {
	if s.Path != "" {
		return s.Path
	}
	return filepath.Join(s.dir, DiskFile)
}

// StatePath is the live state (empty for a disk snapshot).
func (s *Snapshot) StatePath() string {
	if s.Kind != Live {
		return ""
	}
	if s.Path != "" {
		return s.Path + SidecarState
	}
	return filepath.Join(s.dir, StateFile)
}

func (s *Snapshot) path(name string) string {
	switch name {
	case DiskFile:
		return s.DiskPath()
	case StateFile:
		return s.StatePath()
	}
	return filepath.Join(s.dir, name)
}

// Store holds snapshots under one directory (GONDOLIN_HOME/snapshots).
type Store struct {
	Dir string
}

var (
	idRule     = regexp.MustCompile(`^[0-9a-f]{12}$`)
	digestRule = regexp.MustCompile(`^[0-9a-f]{64}$`)
	nameRule   = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)
)

// ValidName checks a snapshot name.
func ValidName(name string) error {
	if !nameRule.MatchString(name) {
		return fmt.Errorf("%w: name %q: use letters, digits, '.', '_' and '-'", errBadRequest, name)
	}
	return nil
}

// Begin makes a scratch directory for a new snapshot; Commit publishes it.
func (st *Store) Begin() (id, dir string, err error) {
	if err := layout.MkdirPrivate(st.Dir); err != nil {
		return "", "", err
	}
	var b [6]byte
	rand.Read(b[:])
	id = hex.EncodeToString(b[:])
	dir = filepath.Join(st.Dir, "."+id+".tmp")
	return id, dir, os.Mkdir(dir, 0o700)
}

// SweepScratch removes the scratch directories of snapshots that were
// never committed (their supervisor died mid-snapshot). Only the one
// supervisor of a home takes snapshots, so it calls this as it starts.
func (st *Store) SweepScratch() {
	matches, _ := filepath.Glob(filepath.Join(st.Dir, ".*.tmp"))
	for _, m := range matches {
		if idRule.MatchString(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(m), "."), ".tmp")) {
			os.RemoveAll(m)
		}
	}
}

// Commit hashes the files, writes the metadata and makes the snapshot
// visible with one rename. For an --output snapshot, the disk and state
// are moved to s.Path and its sidecars first, and the store keeps only
// the metadata (so `snapshot ls` still lists it).
func (st *Store) Commit(s *Snapshot, dir string) error {
	s.Files = nil
	for _, name := range []string{DiskFile, StateFile} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		f, err := hashFile(p)
		if err != nil {
			return err
		}
		f.Name = name
		s.Files = append(s.Files, f)
	}
	if s.Path != "" {
		abs, err := filepath.Abs(s.Path)
		if err != nil {
			return err
		}
		s.Path = abs
	}
	// Signed once the metadata is final, before anything moves: the
	// sidecar and the store's copy carry the same MAC.
	if err := st.sign(s); err != nil {
		return err
	}
	if s.Path != "" {
		if err := moveFile(filepath.Join(dir, DiskFile), s.Path); err != nil {
			return err
		}
		if s.Kind == Live {
			if err := moveFile(filepath.Join(dir, StateFile), s.Path+SidecarState); err != nil {
				return err
			}
		}
		if err := atomicfile.WriteJSON(s.Path+SidecarMeta, s, 0o600); err != nil {
			return err
		}
	}
	if err := atomicfile.WriteJSON(filepath.Join(dir, MetaFile), s, 0o600); err != nil {
		return err
	}
	final := filepath.Join(st.Dir, s.ID)
	if err := os.Rename(dir, final); err != nil {
		return err
	}
	s.dir = final
	return atomicfile.SyncDir(st.Dir)
}

// moveFile renames, or copies across filesystems.
func moveFile(src, dst string) error {
	if err := os.Rename(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := atomicfile.Write(dst, 0o600, func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	}); err != nil {
		return err
	}
	return os.Remove(src)
}

// Abort removes a snapshot that was not committed.
func (st *Store) Abort(dir string) { os.RemoveAll(dir) }

// List returns every snapshot in the store, newest first.
func (st *Store) List() ([]*Snapshot, error) {
	entries, err := os.ReadDir(st.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*Snapshot
	for _, e := range entries {
		if !e.IsDir() || !idRule.MatchString(e.Name()) {
			continue
		}
		s, err := load(filepath.Join(st.Dir, e.Name(), MetaFile))
		if err != nil {
			continue
		}
		s.dir = filepath.Join(st.Dir, e.Name())
		// A path outside the store (--output) is trusted only from this
		// home's own metadata: a foreign entry could name any host file,
		// for a resume to open or for Remove to delete.
		if own, err := st.Own(s); s.Path != "" && (err != nil || !own) {
			s.Path = ""
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out, nil
}

// maxMeta bounds a metadata file: a sidecar can come from anywhere, and
// the largest a supervisor writes (a session with a long policy) is a
// few KiB.
const maxMeta = 4 << 20

func load(metaPath string) (*Snapshot, error) {
	f, _, err := openRegular(metaPath, true)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxMeta+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxMeta {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrCorrupt, metaPath, maxMeta)
	}
	var s Snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, metaPath, err)
	}
	if !idRule.MatchString(s.ID) || (s.Kind != Disk && s.Kind != Live) {
		return nil, fmt.Errorf("%w: %s: bad id or kind", ErrCorrupt, metaPath)
	}
	// What the MAC covers is taken now, before anything here changes s
	// (OpenPath sets Path).
	if s.signed, err = s.signedBytes(); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, metaPath, err)
	}
	return &s, nil
}

// IsPath reports whether ref names a file rather than a snapshot in the
// store.
func IsPath(ref string) bool {
	return strings.Contains(ref, "/") || strings.HasSuffix(ref, ".qcow2")
}

// Resolve finds a snapshot by ID, unambiguous ID prefix, name, or path
// of its disk file (for snapshots written with --output, or moved).
func (st *Store) Resolve(ref string) (*Snapshot, error) {
	if IsPath(ref) {
		return OpenPath(ref)
	}
	list, err := st.List()
	if err != nil {
		return nil, err
	}
	var matches []*Snapshot
	for _, s := range list {
		if s.ID == ref || (s.Name != "" && s.Name == ref) {
			return s, nil
		}
		if ref != "" && strings.HasPrefix(s.ID, ref) {
			matches = append(matches, s)
		}
	}
	switch len(matches) {
	case 0:
		return nil, fmt.Errorf("%w: %q (see: gondolin snapshot ls)", errNoSnapshot, ref)
	case 1:
		return matches[0], nil
	}
	var ids []string
	for _, m := range matches {
		ids = append(ids, m.ID)
	}
	return nil, fmt.Errorf("%w: snapshot id %q is ambiguous: it matches %s", errBadRequest, ref, strings.Join(ids, ", "))
}

// OpenPath opens a snapshot by its disk file. Its metadata is the
// PATH.json sidecar; a disk file moved without it still resumes as a disk
// checkpoint of the image its backing file names.
func OpenPath(path string) (*Snapshot, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(abs); err != nil {
		return nil, fmt.Errorf("%w: %v", errNoSnapshot, err)
	}
	if s, err := load(abs + SidecarMeta); err == nil {
		s.Path = abs // it may have moved since
		return s, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	// Foreign by definition: its header is read here, not by qemu-img.
	h, mtime, err := readHeader(abs)
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not a snapshot disk: %v", ErrCorrupt, abs, err)
	}
	digest := filepath.Base(h.BackingFile)
	if h.BackingFile == "" || !digestRule.MatchString(digest) {
		return nil, fmt.Errorf("%w: %s is not a snapshot disk: its backing file does not name an image's root disk", ErrCorrupt, abs)
	}
	return &Snapshot{
		ID: "000000000000", Kind: Disk, Created: mtime, Path: abs,
		BaseDigest: "sha256:" + digest,
	}, nil
}

// Remove deletes a snapshot (and, for an --output snapshot, its files).
func (st *Store) Remove(ref string) error {
	s, err := st.Resolve(ref)
	if err != nil {
		return err
	}
	if s.dir == "" {
		return fmt.Errorf("%w: %s is not in the store; delete the file yourself", errBadRequest, ref)
	}
	if s.Path != "" {
		os.Remove(s.Path)
		os.Remove(s.Path + SidecarMeta)
		os.Remove(s.Path + SidecarState)
	}
	return os.RemoveAll(s.dir)
}

// Verify checks that every file is there, whole and unchanged, so a
// truncated or damaged snapshot is reported before QEMU trips on it.
func Verify(s *Snapshot) error {
	if len(s.Files) == 0 {
		if _, err := os.Stat(s.DiskPath()); err != nil {
			return fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		return nil // a bare disk file: nothing recorded to check against
	}
	if _, ok := s.file(StateFile); s.Kind == Live && !ok {
		return fmt.Errorf("%w: no checksum is recorded for its live state", ErrCorrupt)
	}
	for _, f := range s.Files {
		p := s.path(f.Name)
		got, err := hashFile(p)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrCorrupt, p, err)
		}
		if got.Size != f.Size {
			return fmt.Errorf("%w: %s is %d bytes, %d expected (truncated?)", ErrCorrupt, p, got.Size, f.Size)
		}
		if got.SHA256 != f.SHA256 {
			return fmt.Errorf("%w: %s does not match its checksum", ErrCorrupt, p)
		}
	}
	return nil
}

// file finds the recorded checksum of one of s's files.
func (s *Snapshot) file(name string) (File, bool) {
	for _, f := range s.Files {
		if f.Name == name {
			return f, true
		}
	}
	return File{}, false
}

func hashFile(path string) (File, error) {
	f, _, err := openRegular(path, true)
	if err != nil {
		return File{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return File{}, err
	}
	return File{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}
