package imagestore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/gondolin/gondolin/internal/atomicfile"
	"github.com/gondolin/gondolin/internal/errdefs"
)

// RemoveOptions tune Remove.
type RemoveOptions struct {
	// InUse, when set, names what still uses the image with the given ID
	// (sessions, snapshots: things this package does not know about).
	// sessions.ImageUsers(home) names them in a gondolin home.
	InUse func(imageID string) ([]string, error)
	// Force removes an image even while InUse names users.
	Force bool
	// Waiting, when set, is called once if Remove has to wait for a
	// build, pull or import to finish writing to the store.
	Waiting func()
}

// Removal says what Remove did.
type Removal struct {
	Untagged []string `json:"untagged"`          // refs removed, as name:tag
	Deleted  string   `json:"deleted,omitempty"` // the image's ID, when the image itself went
	Users    []string `json:"users,omitempty"`   // what used it (a forced removal)
	Blobs    int      `json:"blobs"`             // blobs deleted
	Bytes    int64    `json:"bytes"`             // their total size
}

// Remove removes an image by ref or by ID. A ref is removed on its own
// while other refs still point at its image; the last ref (or an ID)
// takes the image with it: its refs, its manifest, and every blob that
// no other image uses. An image that opts.InUse says is in use is left
// alone (ErrInUse) unless opts.Force.
//
// Remove waits for writers that hold the store (Hold) and then keeps
// them out while it collects garbage, so a concurrent build never loses a
// blob it has stored but not yet named in its manifest. Whether a session
// or snapshot uses the image is checked under the same lock, but a
// session created by another process at that very moment is not seen.
func (s *Store) Remove(spec string, opts RemoveOptions) (Removal, error) {
	var out Removal
	gc, err := flock(s.blobLock(), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		if opts.Waiting != nil {
			opts.Waiting()
		}
		gc, err = flock(s.blobLock(), syscall.LOCK_EX)
	}
	if err != nil {
		return out, fmt.Errorf("image store: lock blobs: %w", err)
	}
	defer gc.Close()
	unlock, err := s.lockRefs()
	if err != nil {
		return out, err
	}
	defer unlock()

	refs, err := s.readRefs()
	if err != nil {
		return out, err
	}
	id, untag, err := s.removalTarget(spec, refs)
	if err != nil {
		return out, err
	}
	_, loadErr := s.load(id)
	deleteImage := len(refsOf(refs, id)) == len(untag) && loadErr == nil
	if deleteImage && opts.InUse != nil {
		users, err := opts.InUse(id)
		if err != nil && !opts.Force {
			return out, fmt.Errorf("find what uses image %s: %w (pass -f to remove it anyway)", spec, err)
		}
		if len(users) > 0 && !opts.Force {
			return out, errdefs.Errorf(ErrInUse, "image %s is in use by %s; remove them first, or remove the image anyway with: gondolin image rm -f %s",
				spec, strings.Join(users, ", "), spec)
		}
		out.Users = users
	}

	// Refs first, then the marker, then blobs: a crash in between leaves
	// only unreferenced blobs, which the next Remove collects.
	for _, r := range untag {
		if err := os.Remove(filepath.Join(s.refDir(), r.Name, r.Tag)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return out, fmt.Errorf("untag %s: %w", r, err)
		}
		os.Remove(filepath.Join(s.refDir(), r.Name)) // only when empty
		out.Untagged = append(out.Untagged, r.String())
	}
	if err := atomicfile.SyncDir(s.refDir()); err != nil {
		return out, err
	}
	if !deleteImage {
		return out, nil
	}
	h, _ := digestHex(id)
	if err := os.Remove(filepath.Join(s.manifestDir(), h)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return out, fmt.Errorf("remove image %s: %w", id, err)
	}
	if err := atomicfile.SyncDir(s.manifestDir()); err != nil {
		return out, err
	}
	out.Deleted = id
	out.Blobs, out.Bytes, err = s.collect()
	return out, err
}

// removalTarget finds the image spec names and the refs to remove with
// it: just the ref when spec is one, every ref of the image when spec is
// an ID. A ref whose image is missing is still removed.
func (s *Store) removalTarget(spec string, refs map[Ref]string) (string, []Ref, error) {
	if !strings.HasPrefix(spec, idPrefix) {
		if r, err := ParseRef(spec); err == nil {
			if id, ok := refs[r]; ok {
				return id, []Ref{r}, nil
			}
		}
	}
	im, err := s.Resolve(spec)
	if err != nil {
		return "", nil, err
	}
	var untag []Ref
	for r, id := range refs {
		if id == im.ID {
			untag = append(untag, r)
		}
	}
	slices.SortFunc(untag, func(a, b Ref) int { return strings.Compare(a.String(), b.String()) })
	return im.ID, untag, nil
}

// collect deletes every blob that no stored manifest names. The caller
// holds blobs.lock exclusively, so no writer has blobs in flight.
func (s *Store) collect() (n int, size int64, err error) {
	ids, err := s.manifestIDs()
	if err != nil {
		return 0, 0, err
	}
	keep := map[string]bool{}
	for _, h := range ids {
		keep[h] = true
		m, err := s.readManifest(h)
		if errors.Is(err, errdefs.ErrInvalid) {
			continue // a corrupt image cannot be used; its blobs are garbage
		}
		if err != nil {
			// Not knowing what an image uses, delete nothing.
			return 0, 0, fmt.Errorf("collect unused blobs: %w", err)
		}
		for _, f := range m.files() {
			if fh, ok := digestHex(f.file.Digest); ok {
				keep[fh] = true
			}
		}
	}
	entries, err := os.ReadDir(s.blobDir())
	if err != nil {
		return 0, 0, fmt.Errorf("collect unused blobs: %w", err)
	}
	for _, e := range entries {
		if !isHex(e.Name(), 64) || keep[e.Name()] {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		if err := os.Remove(filepath.Join(s.blobDir(), e.Name())); err != nil {
			return n, size, fmt.Errorf("collect unused blobs: %w", err)
		}
		n++
		size += info.Size()
	}
	return n, size, atomicfile.SyncDir(s.blobDir())
}
