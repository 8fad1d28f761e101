package rootfs

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// OCI whiteout names (image-spec layer.md, "Whiteouts").
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh." // AUFS metadata; only the opaque marker has a meaning
	whiteoutOpaque = ".wh..wh..opq"
)

// ApplyLayer applies one OCI image layer, an uncompressed tar stream, on
// top of what the tree holds, as a container runtime does:
//
//   - NAME/.wh.X deletes X (and all below it) as the layers below left it;
//     NAME/.wh..wh..opq empties NAME of what the layers below put there.
//     Neither touches what this layer itself adds.
//   - An entry replaces whatever is at its path, except that a directory
//     entry merges with an existing directory.
//   - A leading "/" in a name is dropped (some builders write absolute
//     names); a ".." element is an error.
//   - The directories on an entry's path are resolved with the symlinks
//     the tree holds, as the guest will resolve them: inside the tree, so
//     an absolute symlink means the image's root, never the host's.
//   - A symlink may point anywhere absolute (it resolves in the guest),
//     but a relative target that climbs above the root is an error, and so
//     is a hard link whose target is absolute or escapes.
//   - Device nodes and fifos are skipped: the guest's devtmpfs has /dev.
//
// Errors name the offending entry; the caller adds which layer it was.
func (t *Tree) ApplyLayer(ctx context.Context, r io.Reader) error {
	added := map[string]bool{} // resolved paths this layer wrote
	readErr := func(err error) error { return fmt.Errorf("read layer: %w", err) }
	return forEachEntry(ctx, r, readErr, func(hdr *tar.Header, body io.Reader) error {
		if err := t.applyEntry(hdr, body, added); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		return nil
	})
}

func (t *Tree) applyEntry(hdr *tar.Header, body io.Reader, added map[string]bool) error {
	p, err := t.layerPlace(hdr.Name)
	if err != nil || p == "" {
		return err // "" is the layer's root directory itself
	}
	dir, base := path.Dir(p), path.Base(p)
	if dir == "." {
		dir = ""
	}
	switch {
	case base == whiteoutOpaque:
		if n := t.nodes[dir]; n != nil && n.kind != kindDir {
			return fmt.Errorf("opaque marker in %s, which is not a directory", dir)
		}
		if err := t.mkdirAll(dir, 0o755); err != nil {
			return err
		}
		for _, c := range t.children(dir) {
			if err := t.hide(c, added); err != nil {
				return err
			}
		}
		return nil
	case strings.HasPrefix(base, whiteoutMeta) || strings.Contains(p, "/"+whiteoutMeta) || strings.HasPrefix(p, whiteoutMeta):
		return nil // AUFS metadata, such as its hard-link directory
	case strings.HasPrefix(base, whiteoutPrefix):
		name := strings.TrimPrefix(base, whiteoutPrefix)
		if name == "" || name == "." || name == ".." {
			return errors.New("whiteout names no file")
		}
		return t.hide(path.Join(dir, name), added)
	}

	mode := tarMode(hdr.Mode)
	old := t.nodes[p]
	switch hdr.Typeflag {
	case tar.TypeDir:
		if old != nil && old.kind != kindDir {
			if err := t.remove(p); err != nil {
				return err
			}
		}
		err = t.MkDir(p, mode, hdr.Uid, hdr.Gid, hdr.ModTime)
	case tar.TypeReg, tar.TypeGNUSparse:
		if err := t.replaceDir(p); err != nil {
			return err
		}
		// For a sparse entry (old GNU 'S', or TypeReg with GNU.sparse PAX
		// records) Size is the apparent size and body reads zeros for
		// the holes: the file costs its apparent size, however small
		// the layer, so that is what counts against the limit.
		err = t.writeFile(p, body, hdr.Size, mode, hdr.Uid, hdr.Gid, hdr.ModTime)
	case tar.TypeSymlink:
		target := hdr.Linkname
		if target == "" || strings.ContainsRune(target, 0) {
			return fmt.Errorf("bad symlink target %q", target)
		}
		if !path.IsAbs(target) {
			if j := path.Join(dir, target); j == ".." || strings.HasPrefix(j, "../") {
				return fmt.Errorf("symlink target %q escapes the root", target)
			}
		}
		if err := t.replaceDir(p); err != nil {
			return err
		}
		err = t.symlink(target, p, hdr.Uid, hdr.Gid)
	case tar.TypeLink:
		if path.IsAbs(hdr.Linkname) {
			return fmt.Errorf("hard link target %q is absolute", hdr.Linkname)
		}
		var target string
		if target, err = t.layerPlace(hdr.Linkname); err != nil {
			return fmt.Errorf("hard link target: %w", err)
		}
		if target == "" {
			return errors.New("hard link to the root")
		}
		if err := t.replaceDir(p); err != nil {
			return err
		}
		err = t.link(target, p)
	default:
		return nil
	}
	if err != nil {
		return err
	}
	added[p] = true
	return nil
}

// layerPlace resolves a layer entry's name to its path in the tree.
func (t *Tree) layerPlace(name string) (string, error) {
	n := strings.TrimLeft(name, "/")
	if n == "" {
		return "", nil
	}
	p, err := cleanName(n)
	if err != nil || p == "" {
		return "", err
	}
	return t.resolveParent(p)
}

// replaceDir removes a directory at p, which a non-directory entry of a
// higher layer replaces.
func (t *Tree) replaceDir(p string) error {
	if n := t.nodes[p]; n != nil && n.kind == kindDir {
		return t.remove(p)
	}
	return nil
}

// children lists the direct children of the directory p.
func (t *Tree) children(p string) []string {
	prefix := p + "/"
	if p == "" {
		prefix = ""
	}
	var out []string
	for q := range t.nodes {
		if q != "" && strings.HasPrefix(q, prefix) && !strings.Contains(q[len(prefix):], "/") {
			out = append(out, q)
		}
	}
	return out
}

// hide removes what the layers below the current one put at p, keeping
// what the current layer added there itself.
func (t *Tree) hide(p string, added map[string]bool) error {
	if t.nodes[p] == nil || added[p] {
		return nil
	}
	for q := range added {
		if strings.HasPrefix(q, p+"/") {
			// This layer wrote below p: p is a directory to keep; hide
			// its older contents one by one.
			for _, c := range t.children(p) {
				if err := t.hide(c, added); err != nil {
					return err
				}
			}
			return nil
		}
	}
	return t.remove(p)
}
