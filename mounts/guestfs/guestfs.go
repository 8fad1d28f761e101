// Package guestfs is the guest side of host mounts: a FUSE filesystem
// that forwards every operation over the fs port (package mounts/fsproto)
// to the host provider (package mounts), which enforces confinement and
// read-only mounts. The agent runs it in a daemon process of its own
// (RunDaemon explains why).
//
// It is path-based, like go-fuse's loopback: each node knows its path
// from the mount root through go-fuse's tree, and host handles stand for
// open files. After the host provider restarts (a new instance), a handle
// is reopened by path the first time it fails with ESTALE.
//
// Caching: attributes, names and negative lookups are trusted for
// LongTimeout (a minute) when the host reports its changes (protocol
// version 2, see notify.go), else for Options.Timeout (1 s by default).
// File data stays in the page cache (so mmap and repeated reads work as on
// a local disk) until the host reports a change, the file is opened again
// with a different size or modification time on the host, or the kernel
// sees such a change in fresh attributes.
package guestfs

import (
	"context"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/mounts/fsproto"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Options for Mount.
type Options struct {
	ReadOnly bool
	// Timeout is how long attributes and names are cached (default 1 s).
	Timeout time.Duration
	// Logger receives go-fuse's diagnostics (nil: none).
	Logger *log.Logger
	// MountTimeout bounds the wait for the host to answer the first
	// request, which checks that it serves the mount (default 30 s).
	MountTimeout time.Duration
}

// Mounted is a mounted host directory.
type Mounted struct {
	server *fuse.Server
	Dir    string
	st     *state
}

// Unmount detaches the filesystem (lazily when it is busy).
func (m *Mounted) Unmount() error {
	err := m.server.Unmount()
	if err != nil {
		err = syscall.Unmount(m.Dir, syscall.MNT_DETACH)
	}
	return err
}

// Mount mounts the host mount id, served through c, at dir, served from
// this process: one that never starts child processes (see RunDaemon for
// why). It needs /dev/fuse and root privileges (no fusermount). It waits
// until the host answers for the mount, so a host that does not serve id
// is an error here, not later.
func Mount(c *fsproto.Client, id, dir string, opts Options) (*Mounted, error) {
	if opts.Timeout == 0 {
		opts.Timeout = time.Second
	}
	if opts.MountTimeout == 0 {
		opts.MountTimeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.MountTimeout)
	defer cancel()
	m := fsproto.Mount{C: c, ID: id}
	rootAttr, errno := m.Stat(ctx, "")
	if errno != 0 {
		if errno == syscall.EINTR {
			return nil, fmt.Errorf("mount %s: no answer from the host's fs port within %v", id, opts.MountTimeout)
		}
		return nil, fmt.Errorf("mount %s: the host refused: %w", id, errno)
	}
	st := &state{m: m, ro: opts.ReadOnly, short: opts.Timeout}
	root := &node{st: st}
	st.root = root
	root.remember(&rootAttr)
	flags := uintptr(syscall.MS_NOSUID | syscall.MS_NODEV)
	if opts.ReadOnly {
		// The host enforces it; the guest kernel saying so first spares
		// a round trip and tells tools the truth (mount shows ro).
		flags |= syscall.MS_RDONLY
	}
	t, negative := opts.Timeout, LongTimeout
	fopts := &fs.Options{
		MountOptions: fuse.MountOptions{
			// Guest processes of any user may use the mount; the kernel
			// checks permission bits itself (default_permissions).
			AllowOther: true,
			Options:    []string{"default_permissions"},
			// Mount /dev/fuse directly: the guest has no fusermount.
			DirectMountStrict: true,
			DirectMountFlags:  flags,
			FsName:            "gondolin-" + id,
			Name:              "gondolin",
			MaxWrite:          fsproto.MaxData,
			// No xattrs: the host does not carry them, and answering
			// ENOSYS once stops the kernel asking for security.capability
			// on every write.
			DisableXAttrs: true,
			Logger:        opts.Logger,
		},
		EntryTimeout:    &t,
		AttrTimeout:     &t,
		NegativeTimeout: &negative,
		RootStableAttr:  &fs.StableAttr{Ino: rootAttr.Ino, Gen: rootAttr.Gen},
		Logger:          opts.Logger,
	}
	server, err := fs.Mount(dir, root, fopts)
	if err != nil {
		return nil, fmt.Errorf("mount %s on %s: %w", id, dir, err)
	}
	raiseReadAhead(dir, opts.Logger)
	return &Mounted{server: server, Dir: dir, st: st}, nil
}

// LongTimeout is how long names and attributes are cached when the host
// reports its changes. Not forever: inotify, which the host relies on,
// misses changes another machine makes to a network filesystem.
const LongTimeout = time.Minute

// state is shared by the nodes of one mount.
type state struct {
	m     fsproto.Mount
	ro    bool
	root  *node
	short time.Duration
	// unwatched: the host said it cannot report this mount's changes.
	unwatched atomic.Bool
	// noticed counts the notices applied (see dir.Lookup).
	noticed atomic.Uint64
}

// ttl is how long what the host just said may be cached.
func (st *state) ttl() time.Duration {
	if st.m.C.Version() >= 2 && !st.unwatched.Load() {
		return LongTimeout
	}
	return st.short
}

// entryOut sets the lifetimes of an entry the host just described.
func (st *state) entryOut(out *fuse.EntryOut) {
	t := st.ttl()
	out.SetEntryTimeout(t)
	out.SetAttrTimeout(t)
}

// node is a file, directory or symlink of a host mount.
type node struct {
	fs.Inode
	st *state

	mu sync.Mutex
	// Size and modification time last seen, to decide at open whether
	// the page cache still holds the file's contents.
	size  uint64
	mtime fsproto.Time
}

var (
	_ fs.NodeLookuper       = (*node)(nil)
	_ fs.NodeGetattrer      = (*node)(nil)
	_ fs.NodeSetattrer      = (*node)(nil)
	_ fs.NodeOpener         = (*node)(nil)
	_ fs.NodeCreater        = (*node)(nil)
	_ fs.NodeOpendirHandler = (*node)(nil)
	_ fs.NodeMkdirer        = (*node)(nil)
	_ fs.NodeMknoder        = (*node)(nil)
	_ fs.NodeSymlinker      = (*node)(nil)
	_ fs.NodeLinker         = (*node)(nil)
	_ fs.NodeUnlinker       = (*node)(nil)
	_ fs.NodeRmdirer        = (*node)(nil)
	_ fs.NodeRenamer        = (*node)(nil)
	_ fs.NodeReadlinker     = (*node)(nil)
	_ fs.NodeStatfser       = (*node)(nil)
)

// path returns n's path from the mount root, or ESTALE when n is no
// longer in the tree (it was removed).
func (n *node) path() (string, syscall.Errno) {
	var parts []string
	in := &n.Inode
	root := &n.st.root.Inode
	for in != root {
		name, parent := in.Parent()
		if parent == nil {
			return "", syscall.ESTALE
		}
		parts = append(parts, name)
		in = parent
	}
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	return strings.Join(parts, "/"), 0
}

func (n *node) child(name string) (string, syscall.Errno) {
	p, errno := n.path()
	if errno != 0 || p == "" {
		return name, errno
	}
	return p + "/" + name, 0
}

// remember records what the host said about n's contents.
func (n *node) remember(a *fsproto.Attr) {
	n.mu.Lock()
	n.size, n.mtime = a.Size, a.Mtime
	n.mu.Unlock()
}

// unchanged reports whether a matches what was last seen, and records it.
func (n *node) unchanged(a *fsproto.Attr) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	same := n.size == a.Size && n.mtime == a.Mtime
	n.size, n.mtime = a.Size, a.Mtime
	return same
}

// fill converts host attributes; everything is owned by the guest's root
// (see package mounts).
func fill(out *fuse.Attr, a *fsproto.Attr) {
	*out = fuse.Attr{
		Ino:       a.Ino,
		Size:      a.Size,
		Blocks:    a.Blocks,
		Atime:     uint64(a.Atime.Sec),
		Mtime:     uint64(a.Mtime.Sec),
		Ctime:     uint64(a.Ctime.Sec),
		Atimensec: a.Atime.Nsec,
		Mtimensec: a.Mtime.Nsec,
		Ctimensec: a.Ctime.Nsec,
		Mode:      a.Mode,
		Nlink:     a.Nlink,
		Rdev:      a.Rdev,
		Blksize:   a.Blksize,
	}
}

// newChild makes (or finds) the inode for a host file under parent.
func (n *node) newChild(ctx context.Context, a *fsproto.Attr, out *fuse.EntryOut) *fs.Inode {
	fill(&out.Attr, a)
	n.st.entryOut(out)
	c := &node{st: n.st, size: a.Size, mtime: a.Mtime}
	in := n.NewInode(ctx, c, fs.StableAttr{Mode: a.Mode & syscall.S_IFMT, Ino: a.Ino, Gen: a.Gen})
	if existing, ok := in.Operations().(*node); ok && existing != c {
		existing.remember(a)
	}
	return in
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	p, errno := n.child(name)
	if errno != 0 {
		return nil, errno
	}
	a, errno := n.st.m.Stat(ctx, p)
	if errno == syscall.ENOENT && n.st.ttl() != LongTimeout {
		// go-fuse keeps a negative entry for Options.NegativeTimeout
		// (LongTimeout) unless the lookup sets a timeout of its own, and
		// then it answers ENOENT: the kernel keeps nothing. So a mount
		// whose host does not report changes does not cache negatives.
		out.SetEntryTimeout(time.Nanosecond)
	}
	if errno != 0 {
		return nil, errno
	}
	return n.newChild(ctx, &a, out), 0
}

func (n *node) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	var a fsproto.Attr
	var errno syscall.Errno
	if f, ok := fh.(*file); ok {
		errno = f.do(ctx, func(h uint64) (e syscall.Errno) { a, e = n.st.m.Fstat(ctx, h); return })
	} else {
		var p string
		if p, errno = n.path(); errno == 0 {
			a, errno = n.st.m.Stat(ctx, p)
		}
	}
	if errno != 0 {
		return errno
	}
	fill(&out.Attr, &a)
	out.SetTimeout(n.st.ttl())
	return 0
}

func (n *node) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	var s fsproto.SetattrIn
	if mode, ok := in.GetMode(); ok {
		s.Flags |= fsproto.SetMode
		s.Mode = mode
	}
	if size, ok := in.GetSize(); ok {
		s.Flags |= fsproto.SetSize
		s.Size = size
	}
	if in.Valid&fuse.FATTR_ATIME != 0 {
		s.Flags |= fsproto.SetAtime
		s.Atime = fsproto.Time{Sec: int64(in.Atime), Nsec: in.Atimensec}
		if in.Valid&fuse.FATTR_ATIME_NOW != 0 {
			s.Flags |= fsproto.SetAtimeNow
		}
	}
	if in.Valid&fuse.FATTR_MTIME != 0 {
		s.Flags |= fsproto.SetMtime
		s.Mtime = fsproto.Time{Sec: int64(in.Mtime), Nsec: in.Mtimensec}
		if in.Valid&fuse.FATTR_MTIME_NOW != 0 {
			s.Flags |= fsproto.SetMtimeNow
		}
	}
	// Ownership changes (FATTR_UID, FATTR_GID) succeed and change
	// nothing: see package mounts. With nothing else to do this is a stat.
	var a fsproto.Attr
	var errno syscall.Errno
	if f, ok := fh.(*file); ok {
		if s.Flags == 0 {
			errno = f.do(ctx, func(h uint64) (e syscall.Errno) { a, e = n.st.m.Fstat(ctx, h); return })
		} else {
			errno = f.do(ctx, func(h uint64) (e syscall.Errno) { a, e = n.st.m.Setattr(ctx, "", h, s); return })
		}
	} else {
		var p string
		if p, errno = n.path(); errno == 0 {
			if s.Flags == 0 {
				a, errno = n.st.m.Stat(ctx, p)
			} else {
				a, errno = n.st.m.Setattr(ctx, p, 0, s)
			}
		}
	}
	if errno != 0 {
		return errno
	}
	n.remember(&a)
	fill(&out.Attr, &a)
	out.SetTimeout(n.st.ttl())
	return 0
}

// openFlags are the flags the host needs to see; FMODE_EXEC and friends
// are the guest kernel's own.
const openFlags = syscall.O_ACCMODE | syscall.O_TRUNC | syscall.O_APPEND | syscall.O_SYNC | syscall.O_DSYNC | syscall.O_EXCL

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	p, errno := n.path()
	if errno != 0 {
		return nil, 0, errno
	}
	flags &= openFlags
	h, a, errno := n.st.m.Open(ctx, p, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	var fuseFlags uint32
	if flags&syscall.O_TRUNC == 0 && n.unchanged(&a) {
		fuseFlags |= fuse.FOPEN_KEEP_CACHE
	}
	return &file{n: n, h: h, flags: flags}, fuseFlags, 0
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	p, errno := n.child(name)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	flags &= openFlags
	h, a, errno := n.st.m.Create(ctx, p, flags, mode)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	in := n.newChild(ctx, &a, out)
	return in, &file{n: in.Operations().(*node), h: h, flags: flags &^ (syscall.O_TRUNC | syscall.O_EXCL)}, 0, 0
}

func (n *node) entry(ctx context.Context, out *fuse.EntryOut, a fsproto.Attr, errno syscall.Errno) (*fs.Inode, syscall.Errno) {
	if errno != 0 {
		return nil, errno
	}
	return n.newChild(ctx, &a, out), 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	p, errno := n.child(name)
	if errno != 0 {
		return nil, errno
	}
	a, errno := n.st.m.Mkdir(ctx, p, mode)
	return n.entry(ctx, out, a, errno)
}

func (n *node) Mknod(ctx context.Context, name string, mode, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	p, errno := n.child(name)
	if errno != 0 {
		return nil, errno
	}
	a, errno := n.st.m.Mknod(ctx, p, mode, dev)
	return n.entry(ctx, out, a, errno)
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	p, errno := n.child(name)
	if errno != 0 {
		return nil, errno
	}
	a, errno := n.st.m.Symlink(ctx, target, p)
	return n.entry(ctx, out, a, errno)
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	t, ok := target.(*node)
	if !ok || t.st != n.st {
		return nil, syscall.EXDEV
	}
	old, errno := t.path()
	if errno != 0 {
		return nil, errno
	}
	p, errno := n.child(name)
	if errno != 0 {
		return nil, errno
	}
	a, errno := n.st.m.Link(ctx, old, p)
	return n.entry(ctx, out, a, errno)
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	p, errno := n.child(name)
	if errno != 0 {
		return errno
	}
	return n.st.m.Unlink(ctx, p)
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	p, errno := n.child(name)
	if errno != 0 {
		return errno
	}
	return n.st.m.Rmdir(ctx, p)
}

func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := newParent.(*node)
	if !ok || np.st != n.st {
		return syscall.EXDEV
	}
	from, errno := n.child(name)
	if errno != 0 {
		return errno
	}
	to, errno := np.child(newName)
	if errno != 0 {
		return errno
	}
	return n.st.m.Rename(ctx, from, to, flags)
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	p, errno := n.path()
	if errno != 0 {
		return nil, errno
	}
	target, errno := n.st.m.Readlink(ctx, p)
	return []byte(target), errno
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	s, errno := n.st.m.Statfs(ctx)
	if errno != 0 {
		return errno
	}
	*out = fuse.StatfsOut{Blocks: s.Blocks, Bfree: s.Bfree, Bavail: s.Bavail, Files: s.Files, Ffree: s.Ffree,
		Bsize: s.Bsize, NameLen: s.Namelen, Frsize: s.Frsize}
	return 0
}

// file is an open regular file: a host handle, reopened by path when a
// new host instance no longer knows it.
type file struct {
	n     *node
	flags uint32

	mu sync.Mutex
	h  uint64
}

var (
	_ fs.FileReader    = (*file)(nil)
	_ fs.FileWriter    = (*file)(nil)
	_ fs.FileReleaser  = (*file)(nil)
	_ fs.FileFsyncer   = (*file)(nil)
	_ fs.FileFlusher   = (*file)(nil)
	_ fs.FileLseeker   = (*file)(nil)
	_ fs.FileAllocater = (*file)(nil)
)

// do runs op with the file's host handle, reopening it once if the host
// no longer knows it.
func (f *file) do(ctx context.Context, op func(h uint64) syscall.Errno) syscall.Errno {
	f.mu.Lock()
	h := f.h
	f.mu.Unlock()
	errno := op(h)
	if errno != syscall.ESTALE {
		return errno
	}
	h, errno = f.reopen(ctx, h)
	if errno != 0 {
		return errno
	}
	return op(h)
}

func (f *file) reopen(ctx context.Context, stale uint64) (uint64, syscall.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.h != stale {
		return f.h, 0 // another goroutine reopened it
	}
	p, errno := f.n.path()
	if errno != 0 {
		return 0, syscall.ESTALE // unlinked while open: its data is gone with the old host
	}
	h, _, errno := f.n.st.m.Open(ctx, p, f.flags&^(syscall.O_TRUNC|syscall.O_EXCL))
	if errno != 0 {
		return 0, errno
	}
	f.h = h
	return h, 0
}

func (f *file) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	var data []byte
	errno := f.do(ctx, func(h uint64) (e syscall.Errno) {
		data, e = f.n.st.m.Read(ctx, h, uint64(off), len(dest))
		return
	})
	if errno != 0 {
		return nil, errno
	}
	return fuse.ReadResultData(data), 0
}

func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	var n int
	errno := f.do(ctx, func(h uint64) (e syscall.Errno) {
		n, e = f.n.st.m.Write(ctx, h, uint64(off), data)
		return
	})
	return uint32(n), errno
}

func (f *file) Release(ctx context.Context) syscall.Errno {
	f.mu.Lock()
	h := f.h
	f.mu.Unlock()
	// Not the request's context: the kernel does not wait for a release,
	// and an interrupted one would leak the host descriptor.
	f.n.st.m.Release(context.Background(), h)
	return 0
}

// Flush has nothing to do: every write went to the host already.
func (f *file) Flush(ctx context.Context) syscall.Errno { return 0 }

func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	return f.do(ctx, func(h uint64) syscall.Errno { return f.n.st.m.Fsync(ctx, h, flags&1 != 0) })
}

func (f *file) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	var res uint64
	errno := f.do(ctx, func(h uint64) (e syscall.Errno) {
		res, e = f.n.st.m.Lseek(ctx, h, off, whence)
		return
	})
	return res, errno
}

func (f *file) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	return f.do(ctx, func(h uint64) syscall.Errno { return f.n.st.m.Fallocate(ctx, h, off, size, mode) })
}

// readAheadKB is the readahead a mount gets: as large as one request may
// be (fsproto.MaxData). A FUSE mount starts with the kernel's default of
// 128 KiB, whatever its max_pages allow, so a sequential read would pay
// a round trip to the host per 128 KiB.
const readAheadKB = fsproto.MaxData >> 10

// raiseReadAhead sets the readahead of the mount on dir through its
// backing device's sysfs entry. Failing leaves the default: slower, not
// wrong.
func raiseReadAhead(dir string, logger *log.Logger) {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return
	}
	dev := uint64(st.Dev)
	major, minor := (dev>>8)&0xfff|(dev>>32)&^0xfff, dev&0xff|(dev>>12)&^0xff
	path := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", major, minor)
	if err := os.WriteFile(path, []byte(strconv.Itoa(readAheadKB)), 0); err != nil && logger != nil {
		logger.Printf("readahead of %s: %v", dir, err)
	}
}
