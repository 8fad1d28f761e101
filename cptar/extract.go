package cptar

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Options says how Extract writes a stream.
type Options struct {
	// Name, when set, replaces the first component of every entry's
	// name (and hard link's target): the stream then makes one thing,
	// named Name, and nothing beside it. IntoRoot drops that component
	// instead: the stream's top directory is the root itself (a
	// directory's contents copied into an existing one). Empty: entries
	// keep their names.
	Name string
	// SpecialBits keeps the setuid, setgid and sticky bits. The host
	// leaves it unset: a guest must not hand the user a setuid file.
	SpecialBits bool
	// Skipped, when set, is told of each entry not extracted, and why.
	// The name is the stream's, unsanitized.
	Skipped func(name, why string)
}

// Extract writes the tar stream r under root. No entry is written outside
// root, and none through a symlink or over a hard link: an entry's
// parents must be directories (not symlinks), and an entry replaces
// whatever non-directory is at its name rather than writing into it.
// Entries with unsafe names (absolute, with "..", longer than PATH_MAX),
// device nodes, fifos, and hard links to anything but a file this stream
// wrote are skipped and reported. Owners are never set: what Extract
// writes belongs to the caller. Directory modes and times are applied
// once the stream ends, so that a read-only directory can be filled.
//
// On an error (a damaged stream, a full disk) what was written stays.
func Extract(r io.Reader, root *os.Root, opt Options) error {
	if opt.Name != "" && opt.Name != IntoRoot && !validName(opt.Name) {
		return fmt.Errorf("cannot extract as %q: not a file name", opt.Name)
	}
	x := &extractor{root: root, opt: opt, files: map[string]bool{}, dirs: map[string]dirMeta{}, checked: map[string]bool{}}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			x.finishDirs()
			return fmt.Errorf("read tar stream: %w", err)
		}
		if err := x.entry(hdr, tr); err != nil {
			x.finishDirs()
			return err
		}
	}
	return x.finishDirs()
}

type dirMeta struct {
	mode  fs.FileMode
	mtime time.Time
}

type extractor struct {
	root  *os.Root
	opt   Options
	files map[string]bool    // regular files this stream wrote: hard link targets
	dirs  map[string]dirMeta // directories it made, to give their mode and time at the end
	// checked holds the directories known to be real directories (made
	// here or found so): nothing in a stream turns a directory into
	// anything else, so each is looked at once, not once per entry.
	checked map[string]bool
}

// IntoRoot as Options.Name extracts a directory's stream into the root.
const IntoRoot = "."

func (x *extractor) skip(name, why string) {
	if x.opt.Skipped != nil {
		x.opt.Skipped(name, why)
	}
}

// validName reports whether name is one path component.
func validName(name string) bool {
	return name != "." && name != ".." && name != "" && !strings.ContainsAny(name, "/\x00") && len(name) <= maxName
}

// entryName is a stream's name made safe: relative, with no "." or ".."
// components, renamed as opt.Name says. ok is false for a name to skip.
func (x *extractor) entryName(raw string) (name, why string) {
	if len(raw) > maxName {
		return "", "name longer than PATH_MAX"
	}
	if strings.ContainsRune(raw, 0) {
		return "", "name with a NUL byte"
	}
	if strings.HasPrefix(raw, "/") {
		return "", "absolute name"
	}
	var parts []string
	for p := range strings.SplitSeq(raw, "/") {
		switch p {
		case "", ".":
		case "..":
			return "", "name with .."
		default:
			parts = append(parts, p)
		}
	}
	switch {
	case x.opt.Name != "" && len(parts) == 0:
		return "", "no name"
	case x.opt.Name == IntoRoot:
		parts = parts[1:]
	case x.opt.Name != "":
		parts[0] = x.opt.Name
	}
	return path.Join(parts...), ""
}

func (x *extractor) entry(hdr *tar.Header, r io.Reader) error {
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil // archive/tar has applied what it understands
	case tar.TypeChar, tar.TypeBlock:
		x.skip(hdr.Name, "device node")
		return nil
	case tar.TypeFifo:
		x.skip(hdr.Name, "fifo")
		return nil
	case tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink:
	default:
		x.skip(hdr.Name, fmt.Sprintf("unsupported entry type %q", hdr.Typeflag))
		return nil
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			// archive/tar would fill the holes: a few bytes of stream
			// could ask for exabytes of zeros on disk.
			x.skip(hdr.Name, "sparse file")
			return nil
		}
	}
	name, why := x.entryName(hdr.Name)
	if why != "" {
		x.skip(hdr.Name, why)
		return nil
	}
	if name == "" {
		// The root itself ("./" of a tar made with tar -C DIR .): it
		// is the destination, which the stream does not get to change.
		if hdr.Typeflag != tar.TypeDir {
			x.skip(hdr.Name, "no name")
		}
		return nil
	}
	if why, err := x.makeParents(name); err != nil || why != "" {
		if why != "" {
			x.skip(hdr.Name, why)
		}
		return err
	}
	isDir := hdr.Typeflag == tar.TypeDir
	if why, err := x.clear(name, isDir); err != nil || why != "" {
		if why != "" {
			x.skip(hdr.Name, why)
		}
		return err
	}
	delete(x.files, name)
	mode := x.mode(hdr)
	switch hdr.Typeflag {
	case tar.TypeDir:
		// A directory that was there keeps its mode and time: a stream
		// must not open up (or take the sticky bit off) the user's own.
		switch err := x.root.Mkdir(name, 0o700); {
		case err == nil:
			x.dirs[name] = dirMeta{mode: mode, mtime: hdr.ModTime}
		case !errors.Is(err, fs.ErrExist):
			return err
		}
		x.checked[name] = true
		return nil
	case tar.TypeReg:
		f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, r)
		if err == nil {
			// Not the OpenFile mode: the umask would change it.
			err = f.Chmod(mode)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %q: %w", name, err)
		}
		x.files[name] = true
		return x.chtimes(name, hdr.ModTime)
	case tar.TypeSymlink:
		if hdr.Linkname == "" || len(hdr.Linkname) > maxName || strings.ContainsRune(hdr.Linkname, 0) {
			x.skip(hdr.Name, "bad symlink target")
			return nil
		}
		// The target is not checked: a symlink may point anywhere, as
		// long as nothing here writes through it.
		if err := x.root.Symlink(hdr.Linkname, name); err != nil {
			return err
		}
		return x.lchtimes(name, hdr.ModTime)
	case tar.TypeLink:
		target, why := x.entryName(hdr.Linkname)
		if why == "" && !x.files[target] {
			why = "hard link to a file this stream did not write"
		}
		if why != "" {
			x.skip(hdr.Name, why)
			return nil
		}
		if err := x.root.Link(target, name); err != nil {
			return err
		}
		x.files[name] = true
		return nil
	}
	return nil
}

// mode is a header's permissions as a FileMode, with the setuid, setgid
// and sticky bits only when opt.SpecialBits says so (in the guest), and
// with no group or world write without it (on the host).
func (x *extractor) mode(hdr *tar.Header) fs.FileMode {
	keep := fs.ModePerm
	if x.opt.SpecialBits {
		keep |= fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky
	} else {
		// Nor may a guest leave the user a file or directory that
		// every other local user can write into.
		keep &^= 0o022
	}
	return hdr.FileInfo().Mode() & keep
}

// makeParents makes sure that every parent of name is a directory, not a
// symlink to one, making the missing ones: an entry never lands where a
// symlink would send it. why is set when one is not a directory.
//
// The walk goes one directory at a time, each step relative to the last,
// so that a deep name costs steps in proportion to its length, not to
// its square (a lookup from the root walks every component again).
func (x *extractor) makeParents(name string) (why string, err error) {
	parent := path.Dir(name)
	if parent == "." || x.checked[parent] {
		return "", nil
	}
	cur, walked := x.root, ""
	defer func() {
		if cur != x.root {
			cur.Close()
		}
	}()
	for comp := range strings.SplitSeq(parent, "/") {
		walked = path.Join(walked, comp)
		if !x.checked[walked] {
			fi, err := cur.Lstat(comp)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				if err := cur.Mkdir(comp, 0o755); err != nil {
					return "", err
				}
			case err != nil:
				return "", err
			case !fi.IsDir():
				return fmt.Sprintf("%s is not a directory", walked), nil
			}
			x.checked[walked] = true
		}
		next, err := cur.OpenRoot(comp)
		if err != nil {
			return "", err
		}
		if cur != x.root {
			cur.Close()
		}
		cur = next
	}
	return "", nil
}

// clear removes what is at name unless it is a directory and a
// directory comes (which then merges into it). A directory is never
// replaced by a non-directory: why says so.
func (x *extractor) clear(name string, isDir bool) (why string, err error) {
	fi, err := x.root.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", nil
	case err != nil:
		return "", err
	case fi.IsDir():
		if isDir {
			return "", nil
		}
		return "would replace a directory", nil
	case !fi.Mode().IsRegular() && fi.Mode().Type() != fs.ModeSymlink:
		// A device, fifo or socket of the user's (/dev/null, say) is
		// not the copy's to replace.
		return fmt.Sprintf("would replace a %s", typeName(fi.Mode())), nil
	}
	return "", x.root.Remove(name)
}

func (x *extractor) chtimes(name string, mtime time.Time) error {
	if mtime.IsZero() {
		return nil
	}
	return x.root.Chtimes(name, mtime, mtime)
}

// lchtimes sets a symlink's own time, which os.Root cannot: through its
// parent directory (makeParents checked it is one, not a symlink).
func (x *extractor) lchtimes(name string, mtime time.Time) error {
	if mtime.IsZero() {
		return nil
	}
	dir, err := x.root.Open(path.Dir(name))
	if err != nil {
		return err
	}
	defer dir.Close()
	ts := unix.NsecToTimespec(mtime.UnixNano())
	return unix.UtimesNanoAt(int(dir.Fd()), path.Base(name), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
}

// finishDirs gives the stream's directories their modes and times,
// deepest first (a read-only parent would refuse its children's).
func (x *extractor) finishDirs() error {
	names := make([]string, 0, len(x.dirs))
	for name := range x.dirs {
		names = append(names, name)
	}
	slices.SortFunc(names, func(a, b string) int { return strings.Compare(b, a) })
	var first error
	for _, name := range names {
		d := x.dirs[name]
		// Still the directory the stream made: nothing replaces a
		// directory, but a check costs little next to a chmod through
		// a symlink.
		if fi, err := x.root.Lstat(name); err != nil || !fi.IsDir() {
			continue
		}
		err := x.root.Chmod(name, d.mode)
		if err == nil {
			err = x.chtimes(name, d.mtime)
		}
		if err != nil && first == nil {
			first = err
		}
	}
	return first
}
