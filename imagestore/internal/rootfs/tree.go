// Package rootfs fills a staging directory from untrusted tar archives
// (Debian packages, OCI image layers) without ever writing outside it, and
// turns the result into an ext4 root disk.
package rootfs

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Tree writes files into a staging directory from untrusted archives.
// Every write goes through an os.Root, so nothing can land outside the
// directory, and the tree keeps its own record of what it created so that
// paths are resolved lexically: a symlink shipped by one archive is never
// followed on disk while another archive's files are written.
//
// Paths given to the methods are clean, relative, slash-separated and
// already resolved (Extract and ApplyLayer resolve archive names).
type Tree struct {
	root  *os.Root
	dir   string
	nodes map[string]*node // by clean relative path; "" is the root
	chown bool             // running as root: give files their owners now
	opts  Options
	bytes int64 // regular file content written, replaced files included
}

// Options shape a tree.
type Options struct {
	// UsrMerged makes bin, sbin, lib and lib64 symlinks into usr and moves
	// archive entries under them there, as Debian's merged /usr does.
	UsrMerged bool
	// Skip lists directories whose entries Extract drops.
	Skip []string
	// MaxUsage bounds Usage, and with it the disk the staging directory
	// and the root disk made from it may take: a file or directory that
	// would take the tree past it is refused with a *LimitError before
	// any of it is written. An archive entry counts with the size its
	// header states, which for a sparse entry is the apparent size: the
	// holes read as zeros and are written out in full. Zero means no
	// bound, for trusted input only.
	MaxUsage int64
}

// LimitError is a write refused because it would take a tree past its
// Options.MaxUsage.
type LimitError struct {
	Limit int64 // Options.MaxUsage
	Size  int64 // the file's size when known (apparent size for sparse files), else 0
}

func (e *LimitError) Error() string {
	if e.Size > 0 {
		return fmt.Sprintf("a file of %s would take the image past its unpack limit of %s", formatBytes(e.Size), formatBytes(e.Limit))
	}
	return fmt.Sprintf("the files would take the image past its unpack limit of %s", formatBytes(e.Limit))
}

// formatBytes spells n in the largest binary unit it reaches.
func formatBytes(n int64) string {
	units := []string{"EiB", "PiB", "TiB", "GiB", "MiB", "KiB"}
	for i, u := range units {
		shift := uint(10 * (len(units) - i))
		if n>>shift == 0 {
			continue
		}
		if n&(1<<shift-1) == 0 {
			return fmt.Sprintf("%d %s", n>>shift, u)
		}
		return fmt.Sprintf("%.1f %s", float64(n)/float64(int64(1)<<shift), u)
	}
	return fmt.Sprintf("%d bytes", n)
}

type nodeKind uint8

const (
	kindDir nodeKind = iota + 1
	kindFile
	kindSymlink
)

type node struct {
	kind     nodeKind
	target   string      // symlink target
	mode     fs.FileMode // final mode of a directory, applied by Finish
	mtime    time.Time
	uid, gid int // owner in the guest
}

// mergedDirs are Debian's merged-/usr top-level symlinks.
var mergedDirs = []string{"bin", "sbin", "lib", "lib64"}

// New starts a tree in dir, which must be empty or absent: the tree's
// record of what is on disk starts empty.
func New(dir string, opts Options) (*Tree, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) > 0 {
		return nil, fmt.Errorf("staging directory %s is not empty (%v)", dir, err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	t := &Tree{root: root, dir: dir, nodes: map[string]*node{"": {kind: kindDir, mode: 0o755}}, chown: os.Getuid() == 0, opts: opts}
	if opts.UsrMerged {
		for _, d := range mergedDirs {
			if err := t.mkdirAll("usr/"+d, 0o755); err != nil {
				root.Close()
				return nil, err
			}
			if err := t.Symlink("usr/"+d, d); err != nil {
				root.Close()
				return nil, err
			}
		}
	}
	return t, nil
}

// Close releases the tree's directory handle; the files stay.
func (t *Tree) Close() error { return t.root.Close() }

// pathUsage is what Usage counts for every path besides its content: an
// inode and, for most, a block. Charging it also bounds the tree's own
// record, which grows with every path.
const pathUsage = 4096

// Usage estimates the space the tree's files take on a filesystem: the
// content written (including files later replaced, so that removing
// files never makes room for more) plus a block for every path.
func (t *Tree) Usage() int64 { return t.bytes + int64(len(t.nodes))*pathUsage }

// fit checks that a new path with size bytes of content keeps the tree
// within Options.MaxUsage. size comes from an archive header and may be
// anything up to MaxInt64, so it is compared, never added.
func (t *Tree) fit(size int64) error {
	if t.opts.MaxUsage <= 0 {
		return nil
	}
	if size > t.opts.MaxUsage-t.Usage()-pathUsage {
		return &LimitError{Limit: t.opts.MaxUsage, Size: size}
	}
	return nil
}

// cleanName turns a tar entry name into a clean relative path. It rejects
// absolute names, ".." anywhere, and control characters (which no Debian
// package uses and which the debugfs command file could not quote).
// The archive root ("./") comes back as "".
func cleanName(name string) (string, error) {
	if name == "" {
		return "", errors.New("empty path")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return "", fmt.Errorf("path %q has a control character", name)
		}
	}
	n := strings.TrimPrefix(name, "./")
	if strings.HasPrefix(n, "/") {
		return "", fmt.Errorf("path %q is absolute", name)
	}
	for el := range strings.SplitSeq(n, "/") {
		if el == ".." {
			return "", fmt.Errorf("path %q escapes the root", name)
		}
	}
	n = path.Clean(n)
	if n == "." {
		return "", nil
	}
	return n, nil
}

// mergeUsr rewrites bin/, sbin/, lib/ and lib64/ into usr/, as Debian's
// merged-/usr layout does.
func (t *Tree) mergeUsr(p string) string {
	if !t.opts.UsrMerged {
		return p
	}
	for _, d := range mergedDirs {
		if p == d || strings.HasPrefix(p, d+"/") {
			return "usr/" + p
		}
	}
	return p
}

// maxHops bounds symlink resolution, as the kernel's ELOOP does.
const maxHops = 40

// resolveParent resolves the symlinks among p's directory components
// using the tree's own record and returns a path whose parents are all
// real directories (or do not exist yet). The last component is kept as
// is. ".." at the root stays at the root, so the result never escapes:
// a symlink is followed as the guest would follow it, inside the tree.
func (t *Tree) resolveParent(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	parts := strings.Split(p, "/")
	var done []string
	hops := 0
	for len(parts) > 1 {
		el := parts[0]
		parts = parts[1:]
		switch el {
		case "", ".":
			continue
		case "..":
			if len(done) > 0 {
				done = done[:len(done)-1]
			}
			continue
		}
		cur := strings.Join(append(done, el), "/")
		n := t.nodes[cur]
		if n == nil || n.kind != kindSymlink {
			done = append(done, el)
			continue
		}
		if hops++; hops > maxHops {
			return "", fmt.Errorf("path %q: too many levels of symbolic links", p)
		}
		if strings.HasPrefix(n.target, "/") {
			done = done[:0]
		}
		parts = append(strings.Split(n.target, "/"), parts...)
	}
	last := parts[0]
	if last == "." || last == ".." || last == "" {
		return "", fmt.Errorf("path %q has no file name", p)
	}
	return strings.Join(append(done, last), "/"), nil
}

// place returns where an archive entry named name goes, or "" to skip it.
func (t *Tree) place(name string) (string, error) {
	p, err := cleanName(name)
	if err != nil || p == "" {
		return "", err
	}
	p, err = t.resolveParent(t.mergeUsr(p))
	if err != nil {
		return "", err
	}
	for _, d := range t.opts.Skip {
		if p == d || strings.HasPrefix(p, d+"/") {
			return "", nil
		}
	}
	return p, nil
}

// mkdirAll creates p and its missing parents (p already resolved).
func (t *Tree) mkdirAll(p string, mode fs.FileMode) error {
	if p == "" {
		return nil
	}
	if n := t.nodes[p]; n != nil {
		if n.kind != kindDir {
			return fmt.Errorf("%s: exists and is not a directory", p)
		}
		return nil
	}
	if err := t.parent(p); err != nil {
		return err
	}
	if err := t.fit(0); err != nil {
		return err
	}
	// Owner write and search stay on until Finish, so that a read-only
	// directory from an archive can still be filled when not root.
	if err := t.root.Mkdir(p, 0o700); err != nil {
		return err
	}
	t.nodes[p] = &node{kind: kindDir, mode: mode}
	return nil
}

func (t *Tree) parent(p string) error {
	dir := path.Dir(p)
	if dir == "." {
		return nil
	}
	return t.mkdirAll(dir, 0o755)
}

// clear removes whatever non-directory is at p, so that a later package
// replaces an earlier one's file as dpkg does.
func (t *Tree) clear(p string) error {
	n := t.nodes[p]
	if n == nil {
		return nil
	}
	if n.kind == kindDir {
		return fmt.Errorf("%s: a directory is in the way", p)
	}
	delete(t.nodes, p)
	return t.root.Remove(p)
}

// remove deletes p and everything under it.
func (t *Tree) remove(p string) error {
	if p == "" {
		return errors.New("cannot remove the root")
	}
	if t.nodes[p] == nil {
		return nil
	}
	for q := range t.nodes {
		if q == p || strings.HasPrefix(q, p+"/") {
			delete(t.nodes, q)
		}
	}
	return t.root.RemoveAll(p)
}

// WriteFile writes a regular file at p, replacing a file or symlink there.
func (t *Tree) WriteFile(p string, r io.Reader, mode fs.FileMode, uid, gid int, mtime time.Time) error {
	return t.writeFile(p, r, -1, mode, uid, gid, mtime)
}

// makeRoom readies p for a new entry of size bytes: its parent directory
// exists, whatever stood at p is gone, and the tree has room for it.
func (t *Tree) makeRoom(p string, size int64) error {
	if err := t.parent(p); err != nil {
		return err
	}
	if err := t.clear(p); err != nil {
		return err
	}
	return t.fit(size)
}

// writeFile is WriteFile for content whose size an archive header states
// (-1 when unknown), so that a file over the limit is refused before it
// exists. A write that fails leaves no file behind.
func (t *Tree) writeFile(p string, r io.Reader, size int64, mode fs.FileMode, uid, gid int, mtime time.Time) error {
	if err := t.makeRoom(p, max(size, 0)); err != nil {
		return err
	}
	f, err := t.root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	t.nodes[p] = &node{kind: kindFile, uid: uid, gid: gid}
	// The stated size is checked; the reader is capped too, for callers
	// that state none and in case a reader gives more than it said.
	left := int64(-1)
	if t.opts.MaxUsage > 0 {
		left = t.opts.MaxUsage - t.Usage()
		r = io.LimitReader(r, left+1)
	}
	n, err := io.Copy(f, r)
	t.bytes += n
	if err == nil && left >= 0 && n > left {
		err = &LimitError{Limit: t.opts.MaxUsage, Size: max(size, 0)}
	}
	if err == nil && t.chown && (uid != 0 || gid != 0) {
		err = f.Chown(uid, gid)
	}
	if err == nil {
		// After chown, which clears set-id bits.
		err = f.Chmod(mode)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && !mtime.IsZero() {
		err = t.root.Chtimes(p, mtime, mtime)
	}
	if err != nil {
		delete(t.nodes, p)
		t.bytes -= n
		t.root.Remove(p)
	}
	return err
}

// Symlink creates p -> target, replacing a file or symlink at p. The
// target is not checked: it is only ever followed inside the guest, and
// by resolveParent, which confines it.
func (t *Tree) Symlink(target, p string) error {
	return t.symlink(target, p, 0, 0)
}

func (t *Tree) symlink(target, p string, uid, gid int) error {
	if err := t.makeRoom(p, 0); err != nil {
		return err
	}
	if err := t.root.Symlink(target, p); err != nil {
		return err
	}
	t.nodes[p] = &node{kind: kindSymlink, target: target, uid: uid, gid: gid}
	if t.chown && (uid != 0 || gid != 0) {
		return t.root.Lchown(p, uid, gid)
	}
	return nil
}

// link hard-links p to the earlier regular file at the resolved path old.
func (t *Tree) link(old, p string) error {
	n := t.nodes[old]
	if n == nil || n.kind != kindFile {
		return fmt.Errorf("hard link %s: target %s is not a file in the tree", p, old)
	}
	if old == p {
		return fmt.Errorf("hard link %s: links to itself", p)
	}
	if err := t.makeRoom(p, 0); err != nil {
		return err
	}
	if err := t.root.Link(old, p); err != nil {
		return err
	}
	// One inode: both names share the owner.
	t.nodes[p] = n
	return nil
}

// MkDir creates or updates the directory p with its final mode. A
// symlink at p is kept, as dpkg keeps a directory symlink another
// package made and puts the directory's contents through it.
func (t *Tree) MkDir(p string, mode fs.FileMode, uid, gid int, mtime time.Time) error {
	if n := t.nodes[p]; n != nil && n.kind == kindSymlink {
		return nil
	}
	if err := t.mkdirAll(p, mode); err != nil {
		return err
	}
	n := t.nodes[p]
	n.mode, n.mtime, n.uid, n.gid = mode, mtime, uid, gid
	if t.chown && (uid != 0 || gid != 0) {
		return t.root.Lchown(p, uid, gid)
	}
	return nil
}

// Exists reports whether the tree holds something at p.
func (t *Tree) Exists(p string) bool { return t.nodes[p] != nil }

// IsDir reports whether p is a real directory (not a symlink to one).
func (t *Tree) IsDir(p string) bool {
	n := t.nodes[p]
	return n != nil && n.kind == kindDir
}

// IsRegular reports whether p is a regular file (not a symlink to one).
func (t *Tree) IsRegular(p string) bool {
	n := t.nodes[p]
	return n != nil && n.kind == kindFile
}

// Open opens a file of the tree for reading, through the tree's root: a
// symlink in the tree cannot make it read a host file.
func (t *Tree) Open(p string) (*os.File, error) { return t.root.Open(p) }

// Remove deletes p and everything under it.
func (t *Tree) Remove(p string) error { return t.remove(p) }

// Extract writes a tar stream into the tree as dpkg unpacks a package:
// a later archive's file replaces an earlier one's, a directory symlink
// is kept and filled through, and a file where a directory stands is an
// error. keep, when not nil, selects the entries to write by their
// resolved path.
func (t *Tree) Extract(ctx context.Context, r io.Reader, keep func(p string) bool) error {
	return forEachEntry(ctx, r, nil, func(hdr *tar.Header, body io.Reader) error {
		p, err := t.place(hdr.Name)
		if err != nil {
			return err
		}
		if p == "" || (keep != nil && !keep(p)) {
			return nil
		}
		mode := tarMode(hdr.Mode)
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = t.MkDir(p, mode, hdr.Uid, hdr.Gid, hdr.ModTime)
		case tar.TypeReg:
			// A PAX sparse entry is TypeReg too; its Size is the apparent size.
			err = t.writeFile(p, body, hdr.Size, mode, hdr.Uid, hdr.Gid, hdr.ModTime)
		case tar.TypeSymlink:
			if hdr.Linkname == "" || strings.ContainsRune(hdr.Linkname, 0) {
				return fmt.Errorf("%s: bad symlink target %q", hdr.Name, hdr.Linkname)
			}
			err = t.symlink(hdr.Linkname, p, hdr.Uid, hdr.Gid)
		case tar.TypeLink:
			var old string
			old, err = t.place(hdr.Linkname)
			if err == nil && old == "" {
				err = fmt.Errorf("hard link to %q, which is not extracted", hdr.Linkname)
			}
			if err == nil {
				err = t.link(old, p)
			}
		default:
			// Device nodes, fifos: a build without root cannot make them,
			// and the guest's devtmpfs provides devices.
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", hdr.Name, err)
		}
		return nil
	})
}

// forEachEntry calls fn with each entry of the tar stream r in turn,
// checking before each that ctx is not done. It returns nil at the end of
// the stream, or else ctx's error, fn's first error, or a read error,
// passed through readErr unless that is nil.
func forEachEntry(ctx context.Context, r io.Reader, readErr func(error) error, fn func(hdr *tar.Header, body io.Reader) error) error {
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if readErr != nil {
				err = readErr(err)
			}
			return err
		}
		if err := fn(hdr, tr); err != nil {
			return err
		}
	}
}

// tarMode converts tar mode bits, set-id and sticky bits included.
func tarMode(m int64) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

// Finish gives directories their final modes and times, deepest first so
// that a read-only parent is set after its children.
func (t *Tree) Finish() error {
	var dirs []string
	for p, n := range t.nodes {
		if n.kind == kindDir {
			dirs = append(dirs, p)
		}
	}
	slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, p := range dirs {
		n, name := t.nodes[p], p
		if name == "" {
			name = "."
		}
		if err := t.root.Chmod(name, n.mode); err != nil {
			return err
		}
		if !n.mtime.IsZero() {
			if err := t.root.Chtimes(name, n.mtime, n.mtime); err != nil {
				return err
			}
		}
	}
	return nil
}

// owner returns the guest owner of the file at the relative path p
// (root for files the tree did not make itself).
func (t *Tree) owner(p string) (uid, gid int) {
	if n := t.nodes[p]; n != nil {
		return n.uid, n.gid
	}
	return 0, 0
}

// RemoveAll deletes a directory tree that may contain read-only
// directories, which os.RemoveAll cannot empty when not root.
func RemoveAll(dir string) error {
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(dir)
}
