// Package imagestore is gondolin's local store of guest images: blobs
// (kernel, initramfs, root disk) addressed by their sha256, JSON manifests
// that tie them together (a manifest's digest is the image ID), and
// name:tag refs that point at manifests. Every write is atomic, so
// concurrent gondolin processes can share one store.
//
// Layout under the root directory:
//
//	blobs/sha256/<hex>   read-only content, manifests included
//	manifests/<hex>      empty marker: blob <hex> is an image manifest
//	refs/<name>/<tag>    "sha256:<hex>" of a manifest
//	refs.lock            flock taken by ref writers
//	blobs.lock           flock shared by writers, exclusive for garbage collection
//	tmp/                 scratch space on the store's filesystem
package imagestore

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"

	"github.com/gondolin/gondolin/internal/atomicfile"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
)

// minPrefix is the shortest hex prefix Resolve accepts as an image ID, so
// that a short word is never mistaken for an ID.
const minPrefix = 6

// Store is an image store rooted at a directory.
type Store struct {
	root string
}

// Image is a stored image: its manifest and the refs that point at it.
type Image struct {
	ID       string   `json:"id"` // "sha256:<hex>" of the manifest
	Manifest Manifest `json:"manifest"`
	Refs     []string `json:"refs"` // "name:tag", sorted

	store *Store
}

// Open opens the store at root, creating its directories if needed. A
// root that is a symbolic link (several homes sharing one store) is
// resolved: blob paths end up in disk overlays and template keys, which
// must stay valid when the link goes and be the same for every home.
func Open(root string) (*Store, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("open image store: %w", err)
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	s := &Store{root: abs}
	for _, dir := range []string{abs, s.blobDir(), s.manifestDir(), s.refDir(), s.TempDir()} {
		if err := layout.MkdirPrivate(dir); err != nil {
			return nil, fmt.Errorf("open image store: %w", err)
		}
	}
	return s, nil
}

func (s *Store) blobDir() string     { return filepath.Join(s.root, "blobs", "sha256") }
func (s *Store) manifestDir() string { return filepath.Join(s.root, "manifests") }
func (s *Store) refDir() string      { return filepath.Join(s.root, "refs") }
func (s *Store) refLock() string     { return filepath.Join(s.root, layout.ImagesRefLock) }

// TempDir is scratch space on the store's filesystem: files made there can
// be moved into the store by PutFile without copying. Callers remove what
// they create.
func (s *Store) TempDir() string { return filepath.Join(s.root, "tmp") }

// Path returns the absolute path of f's blob, or "" when f names none.
func (s *Store) Path(f File) string {
	h, ok := digestHex(f.Digest)
	if !ok {
		return ""
	}
	return filepath.Join(s.blobDir(), h)
}

// KernelPath is the kernel blob's path.
func (im *Image) KernelPath() string { return im.store.Path(im.Manifest.Kernel) }

// InitramfsPath is the initramfs blob's path, "" when the image has none.
func (im *Image) InitramfsPath() string { return im.store.Path(im.Manifest.Initramfs) }

// RootfsPath is the root disk blob's path, "" when the image has none.
func (im *Image) RootfsPath() string { return im.store.Path(im.Manifest.Rootfs) }

// PutBlob stores r's content and returns its File (Format left empty).
func (s *Store) PutBlob(r io.Reader) (File, error) {
	tmp, err := os.CreateTemp(s.TempDir(), "blob-*")
	if err != nil {
		return File{}, fmt.Errorf("store blob: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), r)
	if err != nil {
		return File{}, fmt.Errorf("store blob: %w", err)
	}
	if err := tmp.Chmod(0o444); err != nil {
		return File{}, fmt.Errorf("store blob: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return File{}, fmt.Errorf("store blob: %w", err)
	}
	f := File{Digest: idPrefix + hex.EncodeToString(h.Sum(nil)), Size: n}
	if err := s.linkBlob(tmp.Name(), f); err != nil {
		return File{}, err
	}
	return f, nil
}

// PutFile stores a copy of the file at path. A file under TempDir is
// taken over by hard link instead of copied (build outputs are large):
// it becomes read-only and the caller must not modify it afterwards.
func (s *Store) PutFile(path string) (File, error) {
	src, err := os.Open(path)
	if err != nil {
		return File{}, fmt.Errorf("store blob: %w", err)
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return File{}, fmt.Errorf("store blob: %w", err)
	}
	if !st.Mode().IsRegular() {
		return File{}, fmt.Errorf("store blob: %s is not a regular file", path)
	}
	h := sha256.New()
	n, err := io.Copy(h, src)
	if err != nil {
		return File{}, fmt.Errorf("store blob %s: %w", path, err)
	}
	f := File{Digest: idPrefix + hex.EncodeToString(h.Sum(nil)), Size: n}
	if s.hasBlob(f) {
		return f, nil
	}
	// Linking shares the inode, so only a file in the store's own scratch
	// space with no other name is linked (never, say, a host binary), and
	// its content is made durable and read-only first.
	if s.ownsTemp(path, st) && src.Sync() == nil {
		if err := src.Chmod(0o444); err == nil {
			if err := s.linkBlob(path, f); err == nil {
				return f, nil
			}
		}
	}
	// Another filesystem, or a file we may not link or chmod: copy.
	if _, err := src.Seek(0, io.SeekStart); err != nil {
		return File{}, fmt.Errorf("store blob %s: %w", path, err)
	}
	got, err := s.PutBlob(src)
	if err != nil {
		return File{}, err
	}
	if got != f {
		return File{}, fmt.Errorf("store blob %s: file changed while being stored", path)
	}
	return f, nil
}

// ownsTemp reports whether path is a file with a single link in TempDir.
func (s *Store) ownsTemp(path string, st fs.FileInfo) bool {
	abs, err := filepath.Abs(path)
	if err != nil {
		return false
	}
	rel, err := filepath.Rel(s.TempDir(), abs)
	if err != nil || !filepath.IsLocal(rel) {
		return false
	}
	// link(2) would link a symlink itself, not its target.
	if lst, err := os.Lstat(path); err != nil || !os.SameFile(lst, st) {
		return false
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	return ok && sys.Nlink == 1
}

// linkBlob makes the finished file at path the blob f. link(2), unlike
// rename(2), never replaces an existing blob, and two writers of the same
// content both succeed.
func (s *Store) linkBlob(path string, f File) error {
	dst := s.Path(f)
	if err := os.Link(path, dst); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("store blob: %w", err)
	}
	if err := atomicfile.SyncDir(s.blobDir()); err != nil {
		return fmt.Errorf("store blob: %w", err)
	}
	return nil
}

func (s *Store) hasBlob(f File) bool {
	st, err := os.Stat(s.Path(f))
	return err == nil && st.Mode().IsRegular() && st.Size() == f.Size
}

// PutManifest stores m as an image and returns the image ID. Every blob
// m names must already be in the store.
func (s *Store) PutManifest(m Manifest) (string, error) {
	if m.SchemaVersion == 0 {
		m.SchemaVersion = SchemaVersion
	}
	if err := m.validate(); err != nil {
		return "", err
	}
	// Between the check that the blobs are here and the marker that
	// makes them an image's, Remove must not collect them.
	release, err := s.Hold()
	if err != nil {
		return "", err
	}
	defer release()
	for _, f := range m.files() {
		if !f.file.IsZero() && !s.hasBlob(f.file) {
			return "", fmt.Errorf("store manifest: %s blob %s is not in the store", f.role, f.file.Digest)
		}
	}
	data, err := encodeManifest(m)
	if err != nil {
		return "", fmt.Errorf("store manifest: %w", err)
	}
	f, err := s.PutBlob(strings.NewReader(string(data)))
	if err != nil {
		return "", err
	}
	h, _ := digestHex(f.Digest)
	marker, err := os.OpenFile(filepath.Join(s.manifestDir(), h), os.O_CREATE|os.O_WRONLY, 0o444)
	if err != nil {
		return "", fmt.Errorf("store manifest: %w", err)
	}
	marker.Close()
	if err := atomicfile.SyncDir(s.manifestDir()); err != nil {
		return "", fmt.Errorf("store manifest: %w", err)
	}
	return f.Digest, nil
}

// PutTagged stores m as PutManifest does, points ref at it and returns
// the stored image: the last step of a build or pull.
func (s *Store) PutTagged(m Manifest, ref Ref) (*Image, error) {
	id, err := s.PutManifest(m)
	if err != nil {
		return nil, err
	}
	if err := s.Tag(id, ref); err != nil {
		return nil, err
	}
	return s.Resolve(id)
}

// Tag points dst at the image src resolves to.
func (s *Store) Tag(src string, dst Ref) error {
	if _, err := ParseRef(dst.String()); err != nil {
		return err
	}
	// The image must not be collected between Resolve and the new ref.
	release, err := s.Hold()
	if err != nil {
		return err
	}
	defer release()
	im, err := s.Resolve(src)
	if err != nil {
		return err
	}
	return s.writeRef(dst, im.ID)
}

// writeRef replaces a ref atomically. The lock orders concurrent writers
// so that each rename lands whole; the rename alone keeps readers safe.
func (s *Store) writeRef(r Ref, id string) error {
	unlock, err := s.lockRefs()
	if err != nil {
		return fmt.Errorf("tag %s: %w", r, err)
	}
	defer unlock()
	dir := filepath.Join(s.refDir(), r.Name)
	if err := layout.MkdirPrivate(dir); err != nil {
		return fmt.Errorf("tag %s: %w", r, err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, r.Tag), []byte(id+"\n"), 0o644); err != nil {
		return fmt.Errorf("tag %s: %w", r, err)
	}
	return nil
}

// readRefs returns every well-formed ref and the image ID it points at.
func (s *Store) readRefs() (map[Ref]string, error) {
	refs := map[Ref]string{}
	names, err := os.ReadDir(s.refDir())
	if err != nil {
		return nil, fmt.Errorf("read refs: %w", err)
	}
	for _, n := range names {
		if !n.IsDir() {
			continue
		}
		tags, err := os.ReadDir(filepath.Join(s.refDir(), n.Name()))
		if err != nil {
			return nil, fmt.Errorf("read refs: %w", err)
		}
		for _, t := range tags {
			// Temp files of an interrupted write start with '.', which
			// the grammar rejects, so they are skipped here.
			r, err := ParseRef(n.Name() + ":" + t.Name())
			if err != nil || r.Name != n.Name() || !t.Type().IsRegular() {
				continue
			}
			if id, ok := s.readRef(r); ok {
				refs[r] = id
			}
		}
	}
	return refs, nil
}

func (s *Store) readRef(r Ref) (string, bool) {
	data, err := os.ReadFile(filepath.Join(s.refDir(), r.Name, r.Tag))
	if err != nil {
		return "", false
	}
	id := strings.TrimSpace(string(data))
	if _, ok := digestHex(id); !ok {
		return "", false
	}
	return id, true
}

// Resolve finds an image by "name:tag", "name" (tag latest), a full ID
// "sha256:<hex>", or an unambiguous ID prefix of at least 6 hex digits
// (with or without "sha256:"). A ref wins over an ID prefix that spells
// the same word.
func (s *Store) Resolve(spec string) (*Image, error) {
	if rest, ok := strings.CutPrefix(spec, idPrefix); ok {
		if len(rest) < minPrefix || len(rest) > 64 || !isHex(rest, 0) {
			return nil, fmt.Errorf("%w: image ID %q: want sha256: and at least %d hex digits", errdefs.ErrInvalid, spec, minPrefix)
		}
		return s.resolvePrefix(spec, rest)
	}
	r, err := ParseRef(spec)
	if err != nil {
		return nil, err
	}
	if id, ok := s.readRef(r); ok {
		im, err := s.load(id)
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil, errdefs.Errorf(errdefs.ErrNotFound, "image %s points at %s, which is not in the store; build or pull it again", r, id)
		}
		return im, err
	}
	if len(spec) >= minPrefix && len(spec) <= 64 && isHex(spec, 0) {
		return s.resolvePrefix(spec, spec)
	}
	return nil, notFound(r.String())
}

func notFound(what string) error {
	if what == layout.DefaultImage {
		return errdefs.Errorf(errdefs.ErrNotFound, "image %s not found; build it with: gondolin image build", what)
	}
	return errdefs.Errorf(errdefs.ErrNotFound, "image %s not found; pull or build it (gondolin image build --tag %s)", what, what)
}

func (s *Store) resolvePrefix(spec, prefix string) (*Image, error) {
	ids, err := s.manifestIDs()
	if err != nil {
		return nil, err
	}
	var matches []string
	for _, id := range ids {
		if strings.HasPrefix(id, prefix) {
			matches = append(matches, id)
		}
	}
	switch len(matches) {
	case 0:
		return nil, errdefs.Errorf(errdefs.ErrNotFound, "image %s not found; list images with: gondolin image ls", spec)
	case 1:
		return s.load(idPrefix + matches[0])
	}
	refs, _ := s.readRefs()
	var desc []string
	for _, h := range matches {
		d := idPrefix + h[:12]
		if names := refsOf(refs, idPrefix+h); len(names) > 0 {
			d += " (" + strings.Join(names, ", ") + ")"
		}
		desc = append(desc, d)
	}
	return nil, fmt.Errorf("%w: image ID prefix %s is ambiguous; it matches %s", errdefs.ErrInvalid, spec, strings.Join(desc, ", "))
}

// manifestIDs lists the hex digests of stored manifests.
func (s *Store) manifestIDs() ([]string, error) {
	entries, err := os.ReadDir(s.manifestDir())
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var ids []string
	for _, e := range entries {
		if isHex(e.Name(), 64) {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// load reads and checks an image's manifest. The blob is hashed again on
// every read: it is small, and a corrupt manifest must not be trusted.
func (s *Store) load(id string) (*Image, error) {
	h, ok := digestHex(id)
	if !ok {
		return nil, fmt.Errorf("%w: image ID %q", errdefs.ErrInvalid, id)
	}
	if _, err := os.Stat(filepath.Join(s.manifestDir(), h)); err != nil {
		return nil, errdefs.Errorf(errdefs.ErrNotFound, "image %s not found; list images with: gondolin image ls", id)
	}
	m, err := s.readManifest(h)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", id, err)
	}
	im := &Image{ID: id, Manifest: m, store: s}
	refs, err := s.readRefs()
	if err != nil {
		return nil, err
	}
	im.Refs = refsOf(refs, id)
	return im, nil
}

func (s *Store) readManifest(h string) (Manifest, error) {
	f, err := os.Open(filepath.Join(s.blobDir(), h))
	if err != nil {
		return Manifest{}, fmt.Errorf("read manifest: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return Manifest{}, fmt.Errorf("read manifest: %w", err)
	}
	if len(data) > maxManifestSize {
		return Manifest{}, fmt.Errorf("%w: manifest larger than %d bytes", errdefs.ErrInvalid, maxManifestSize)
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != h {
		return Manifest{}, fmt.Errorf("%w: manifest blob is corrupt (digest mismatch)", errdefs.ErrInvalid)
	}
	return decodeManifest(data)
}

func refsOf(refs map[Ref]string, id string) []string {
	var names []string
	for r, target := range refs {
		if target == id {
			names = append(names, r.String())
		}
	}
	sort.Strings(names)
	return names
}

// List returns every image, newest first, each with the refs pointing at
// it. Images whose manifest cannot be read are left out.
func (s *Store) List() ([]Image, error) {
	ids, err := s.manifestIDs()
	if err != nil {
		return nil, err
	}
	refs, err := s.readRefs()
	if err != nil {
		return nil, err
	}
	var images []Image
	for _, h := range ids {
		m, err := s.readManifest(h)
		if err != nil {
			continue
		}
		id := idPrefix + h
		images = append(images, Image{ID: id, Manifest: m, Refs: refsOf(refs, id), store: s})
	}
	slices.SortFunc(images, func(a, b Image) int {
		if c := b.Manifest.Created.Compare(a.Manifest.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return images, nil
}

// FindBuild returns the newest complete image built from the inputs that
// buildID identifies, so a builder can skip an identical build.
func (s *Store) FindBuild(buildID string) (*Image, bool) {
	if !isHex(buildID, 64) {
		return nil, false
	}
	images, err := s.List()
	if err != nil {
		return nil, false
	}
	for i := range images {
		im := &images[i]
		if im.Manifest.BuildID != buildID {
			continue
		}
		complete := true
		for _, f := range im.Manifest.files() {
			complete = complete && (f.file.IsZero() || s.hasBlob(f.file))
		}
		if complete {
			return im, true
		}
	}
	return nil, false
}
