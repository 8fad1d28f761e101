package fsproto

import (
	"context"
	"syscall"
)

// Mount sends the operations of one host mount through a Client. Every
// method returns the host's errno (0 on success).
type Mount struct {
	C  *Client
	ID string
}

func (m Mount) call(ctx context.Context, r *Request) (*Reply, syscall.Errno) {
	r.Mount = m.ID
	return m.C.Call(ctx, r)
}

func (m Mount) attr(ctx context.Context, r *Request) (Attr, syscall.Errno) {
	rep, errno := m.call(ctx, r)
	if errno != 0 {
		return Attr{}, errno
	}
	return rep.Attr, 0
}

func (m Mount) none(ctx context.Context, r *Request) syscall.Errno {
	_, errno := m.call(ctx, r)
	return errno
}

// Stat returns the attributes of path without following a final symlink.
func (m Mount) Stat(ctx context.Context, path string) (Attr, syscall.Errno) {
	return m.attr(ctx, &Request{Op: OpStat, Path: path})
}

// Fstat returns the attributes of an open handle.
func (m Mount) Fstat(ctx context.Context, h uint64) (Attr, syscall.Errno) {
	return m.attr(ctx, &Request{Op: OpFstat, Handle: h})
}

// Readlink returns a symlink's target.
func (m Mount) Readlink(ctx context.Context, path string) (string, syscall.Errno) {
	rep, errno := m.call(ctx, &Request{Op: OpReadlink, Path: path})
	if errno != 0 {
		return "", errno
	}
	return string(rep.Data), 0
}

// Open opens a regular file with open(2) flags.
func (m Mount) Open(ctx context.Context, path string, flags uint32) (uint64, Attr, syscall.Errno) {
	rep, errno := m.call(ctx, &Request{Op: OpOpen, Path: path, Flags: flags})
	if errno != 0 {
		return 0, Attr{}, errno
	}
	return rep.Handle, rep.Attr, 0
}

// Create creates and opens a regular file (O_EXCL in flags is honoured).
func (m Mount) Create(ctx context.Context, path string, flags, mode uint32) (uint64, Attr, syscall.Errno) {
	rep, errno := m.call(ctx, &Request{Op: OpCreate, Path: path, Flags: flags, Mode: mode})
	if errno != 0 {
		return 0, Attr{}, errno
	}
	return rep.Handle, rep.Attr, 0
}

// Opendir opens a directory for Readdir.
func (m Mount) Opendir(ctx context.Context, path string) (uint64, syscall.Errno) {
	rep, errno := m.call(ctx, &Request{Op: OpOpendir, Path: path})
	if errno != 0 {
		return 0, errno
	}
	return rep.Handle, 0
}

// Readdir returns up to max entries from cookie on (0: the start), and
// whether the listing is complete. "." and ".." are not included.
func (m Mount) Readdir(ctx context.Context, h, cookie uint64, max int) ([]DirEntry, bool, syscall.Errno) {
	rep, errno := m.call(ctx, &Request{Op: OpReaddir, Handle: h, Offset: cookie, Size: uint64(max)})
	if errno != 0 {
		return nil, false, errno
	}
	return rep.Entries, rep.EOF, 0
}

// Read reads up to size bytes at off; fewer at the end of the file.
func (m Mount) Read(ctx context.Context, h, off uint64, size int) ([]byte, syscall.Errno) {
	rep, errno := m.call(ctx, &Request{Op: OpRead, Handle: h, Offset: off, Size: uint64(size)})
	if errno != 0 {
		return nil, errno
	}
	return rep.Data, 0
}

// Write writes data at off.
func (m Mount) Write(ctx context.Context, h, off uint64, data []byte) (int, syscall.Errno) {
	rep, errno := m.call(ctx, &Request{Op: OpWrite, Handle: h, Offset: off, Data: data})
	if errno != 0 {
		return 0, errno
	}
	return int(rep.Size), 0
}

// Release closes a handle.
func (m Mount) Release(ctx context.Context, h uint64) syscall.Errno {
	return m.none(ctx, &Request{Op: OpRelease, Handle: h})
}

// Fsync flushes a handle's data (and metadata unless dataOnly).
func (m Mount) Fsync(ctx context.Context, h uint64, dataOnly bool) syscall.Errno {
	var flags uint32
	if dataOnly {
		flags = 1
	}
	return m.none(ctx, &Request{Op: OpFsync, Handle: h, Flags: flags})
}

// SetattrIn says which attributes Setattr changes (Flags: Set*) and to
// what.
type SetattrIn struct {
	Flags        uint32
	Mode         uint32
	Size         uint64
	Atime, Mtime Time
}

// Setattr changes attributes through handle h when it is not 0, else by
// path (never following a final symlink).
func (m Mount) Setattr(ctx context.Context, path string, h uint64, in SetattrIn) (Attr, syscall.Errno) {
	return m.attr(ctx, &Request{Op: OpSetattr, Path: path, Handle: h, Flags: in.Flags, Mode: in.Mode, Size: in.Size, Atime: in.Atime, Mtime: in.Mtime})
}

// Mkdir creates a directory.
func (m Mount) Mkdir(ctx context.Context, path string, mode uint32) (Attr, syscall.Errno) {
	return m.attr(ctx, &Request{Op: OpMkdir, Path: path, Mode: mode})
}

// Mknod creates a regular file. The host refuses FIFOs, sockets and
// devices (EPERM): see package mounts.
func (m Mount) Mknod(ctx context.Context, path string, mode, dev uint32) (Attr, syscall.Errno) {
	return m.attr(ctx, &Request{Op: OpMknod, Path: path, Mode: mode, Dev: dev})
}

// Symlink creates a symlink at path pointing to target.
func (m Mount) Symlink(ctx context.Context, target, path string) (Attr, syscall.Errno) {
	return m.attr(ctx, &Request{Op: OpSymlink, Path: path, Data: []byte(target)})
}

// Link creates a hard link newPath to oldPath.
func (m Mount) Link(ctx context.Context, oldPath, newPath string) (Attr, syscall.Errno) {
	return m.attr(ctx, &Request{Op: OpLink, Path: oldPath, Path2: newPath})
}

// Unlink removes a non-directory.
func (m Mount) Unlink(ctx context.Context, path string) syscall.Errno {
	return m.none(ctx, &Request{Op: OpUnlink, Path: path})
}

// Rmdir removes an empty directory.
func (m Mount) Rmdir(ctx context.Context, path string) syscall.Errno {
	return m.none(ctx, &Request{Op: OpRmdir, Path: path})
}

// Rename renames oldPath to newPath with renameat2(2) flags.
func (m Mount) Rename(ctx context.Context, oldPath, newPath string, flags uint32) syscall.Errno {
	return m.none(ctx, &Request{Op: OpRename, Path: oldPath, Path2: newPath, Flags: flags})
}

// Statfs describes the filesystem of the mount's root.
func (m Mount) Statfs(ctx context.Context) (Statfs, syscall.Errno) {
	rep, errno := m.call(ctx, &Request{Op: OpStatfs})
	if errno != 0 {
		return Statfs{}, errno
	}
	return rep.Statfs, 0
}

// Lseek finds data or holes (SEEK_DATA, SEEK_HOLE) in an open file.
func (m Mount) Lseek(ctx context.Context, h, off uint64, whence uint32) (uint64, syscall.Errno) {
	rep, errno := m.call(ctx, &Request{Op: OpLseek, Handle: h, Offset: off, Flags: whence})
	if errno != 0 {
		return 0, errno
	}
	return rep.Offset, 0
}

// Fallocate allocates (or with mode flags, punches) a range.
func (m Mount) Fallocate(ctx context.Context, h, off, length uint64, mode uint32) syscall.Errno {
	return m.none(ctx, &Request{Op: OpFallocate, Handle: h, Offset: off, Size: length, Flags: mode})
}
