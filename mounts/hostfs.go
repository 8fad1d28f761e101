package mounts

import (
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gondolin/gondolin/mounts/fsproto"
)

// hostMount is one host directory, held open for the Server's life.
//
// Confinement: every path from the guest is checked to be relative and
// made only of plain names (no "", ".", ".." or NUL), then split into a
// parent directory and a final name. The parent is opened from the root
// with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS): one atomic lookup in
// the kernel that fails rather than leave the root or follow any symlink,
// however the tree changes meanwhile. The final name is then handled by
// an *at call that does not follow it either (AT_SYMLINK_NOFOLLOW,
// O_NOFOLLOW, or calls like unlinkat and renameat2 that never follow).
// The host never follows a symlink because the guest kernel never needs
// it to: it resolves symlinks itself through readlink, so a symlink in
// the middle of a path the guest sends only appears when the tree changed
// under it, or when the guest is hostile.
type hostMount struct {
	id     string
	path   string
	ro     bool
	root   int    // O_PATH descriptor of the mount's root directory
	rootID RootID // what root is
}

// openMount opens spec's host directory by its path, following no
// symlink anywhere in it, and refuses it if it is not the directory
// spec.Root names. The path is trusted no further than that: a guest
// with write access to a directory above it (through another session's
// mount) could have moved anything there since the mount was made.
func openMount(spec Spec) (*hostMount, error) {
	fd, id, err := openRoot(spec.HostPath)
	switch {
	case errors.Is(err, unix.ELOOP):
		return nil, fmt.Errorf("%w: --mount-hostfs %s: a symlink is now in the host path; refusing to follow it (it was replaced since the mount was made)", ErrRootChanged, spec)
	case err != nil:
		return nil, fmt.Errorf("%w: host directory %s: %v", errBadMount, spec.HostPath, err)
	case spec.Root != (RootID{}) && id != spec.Root:
		unix.Close(fd)
		return nil, fmt.Errorf("%w: --mount-hostfs %s: the host directory is not the one the mount was made with (%v, was %v): it was moved or replaced; refusing to serve it (put it back, or mount it in a new session)", ErrRootChanged, spec, id, spec.Root)
	}
	return &hostMount{id: spec.ID, path: spec.HostPath, ro: spec.ReadOnly, root: fd, rootID: id}, nil
}

// PinRoots resolves the host directory of every host mount in specs
// (memory mounts are skipped) as NewServer does, and records its
// identity in Root; a Root already set is checked instead (an error
// wrapping ErrRootChanged if it differs). Call it when a session is made
// or resumed, before its record is saved: every later server for the
// session then serves these directories or refuses to start.
func PinRoots(specs []Spec) error {
	for i := range specs {
		if specs[i].Memory {
			continue
		}
		if specs[i].Root == (RootID{}) {
			// Named on another machine (ParseHostFSElsewhere): its
			// symlinks are resolved here, once, as ParseHostFS does
			// where the user types the path.
			real, err := filepath.EvalSymlinks(specs[i].HostPath)
			if err != nil {
				return fmt.Errorf("%w: --mount-hostfs %s: %v", errBadMount, specs[i], err)
			}
			specs[i].HostPath = real
		}
		m, err := openMount(specs[i])
		if err != nil {
			return err
		}
		specs[i].Root = m.rootID
		m.close()
	}
	return nil
}

// openRoot opens dir, a clean absolute path, as an O_PATH descriptor of
// a directory, following no symlink on the way: openat2 with
// RESOLVE_NO_SYMLINKS from /, else a walk from / one component at a time.
func openRoot(dir string) (int, RootID, error) {
	if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir {
		return -1, RootID{}, fmt.Errorf("%q is not a clean absolute path", dir)
	}
	fd, err := openRootFD(dir)
	if err != nil {
		return -1, RootID{}, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, RootID{}, err
	}
	return fd, RootID{Dev: st.Dev, Ino: st.Ino}, nil
}

func openRootFD(dir string) (int, error) {
	const flags = unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC
	if !noOpenat2.Load() {
		how := unix.OpenHow{Flags: flags, Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
		for try := 0; ; try++ {
			fd, err := unix.Openat2(unix.AT_FDCWD, dir, &how)
			switch {
			case err == unix.EAGAIN && try < 8:
				continue // a concurrent rename; the kernel asks to retry
			case err == unix.ENOSYS:
				noOpenat2.Store(true)
			default:
				return fd, err
			}
			break
		}
	}
	slash, err := unix.Open("/", flags, 0)
	if err != nil || dir == "/" {
		return slash, err
	}
	defer unix.Close(slash)
	fd, errno := walk(slash, dir[1:])
	if errno == syscall.ENOTDIR {
		// Say ELOOP, as openat2 does, if a component is a symlink.
		var st unix.Stat_t
		for p := dir; p != "/"; p = filepath.Dir(p) {
			if unix.Lstat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				return -1, unix.ELOOP
			}
		}
	}
	if errno != 0 {
		return -1, errno
	}
	return fd, nil
}

func (m *hostMount) close() { unix.Close(m.root) }

// errnoOf extracts the errno from an error of a system call or of package
// os; anything else is EIO.
func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	if errors.Is(err, os.ErrClosed) {
		return syscall.EBADF
	}
	return syscall.EIO
}

// checkPath accepts the paths the guest may send: "" (the root) or
// plain names joined by single slashes.
func checkPath(p string) syscall.Errno {
	if p == "" {
		return 0
	}
	if len(p) > fsproto.MaxPath {
		return syscall.ENAMETOOLONG
	}
	for p != "" {
		name, rest, _ := strings.Cut(p, "/")
		if errno := checkName(name); errno != 0 {
			return errno
		}
		if rest == "" && strings.HasSuffix(p, "/") {
			return syscall.EINVAL // trailing slash
		}
		p = rest
	}
	return 0
}

func checkName(name string) syscall.Errno {
	switch {
	case name == "", name == ".", name == "..", strings.ContainsAny(name, "/\x00"):
		return syscall.EINVAL
	case len(name) > fsproto.MaxName:
		return syscall.ENAMETOOLONG
	}
	return 0
}

// noOpenat2 is set once openat2 turns out to be unavailable (kernels
// before 5.6, or a seccomp filter that does not know it).
var noOpenat2 atomic.Bool

// target is a resolved path: a directory descriptor and a name in it.
// name is "." for the root itself.
type target struct {
	dir  int
	name string
	own  bool // dir must be closed
}

func (t target) close() {
	if t.own {
		unix.Close(t.dir)
	}
}

func (t target) isRoot() bool { return t.name == "." }

// resolve opens the parent of p beneath the root; see hostMount.
func (m *hostMount) resolve(p string) (target, syscall.Errno) {
	if errno := checkPath(p); errno != 0 {
		return target{}, errno
	}
	if p == "" {
		return target{dir: m.root, name: "."}, 0
	}
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return target{dir: m.root, name: p}, 0
	}
	fd, errno := m.openDir(p[:i])
	if errno != 0 {
		return target{}, errno
	}
	return target{dir: fd, name: p[i+1:], own: true}, 0
}

// openDir opens a directory beneath the root as an O_PATH descriptor,
// following no symlink on the way.
func (m *hostMount) openDir(dir string) (int, syscall.Errno) {
	if !noOpenat2.Load() {
		how := unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		}
		for try := 0; ; try++ {
			fd, err := unix.Openat2(m.root, dir, &how)
			switch {
			case err == nil:
				return fd, 0
			case err == unix.EAGAIN && try < 8:
				continue // a concurrent rename; the kernel asks to retry
			case err == unix.ENOSYS:
				noOpenat2.Store(true)
			case err == unix.EXDEV:
				return -1, syscall.EACCES // would have left the root
			default:
				return -1, errnoOf(err)
			}
			break
		}
	}
	return m.walkDir(dir)
}

// walkDir is openDir without openat2.
func (m *hostMount) walkDir(dir string) (int, syscall.Errno) { return walk(m.root, dir) }

// walk opens dir beneath start one component at a time, each opened
// with O_NOFOLLOW|O_DIRECTORY, so a symlink fails with ENOTDIR. dir is
// relative and not empty, so the result is a new descriptor.
func walk(start int, dir string) (int, syscall.Errno) {
	fd := start
	for _, name := range strings.Split(dir, "/") {
		next, err := unix.Openat(fd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if fd != start {
			unix.Close(fd)
		}
		if err != nil {
			return -1, errnoOf(err)
		}
		fd = next
	}
	return fd, 0
}

const statxMask = unix.STATX_BASIC_STATS | unix.STATX_BTIME

func (m *hostMount) statAt(dir int, name string, flags int, a *fsproto.Attr) syscall.Errno {
	var st unix.Statx_t
	if err := unix.Statx(dir, name, flags|unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_SYNC_AS_STAT, statxMask, &st); err != nil {
		return errnoOf(err)
	}
	m.attr(&st, a)
	return 0
}

func (m *hostMount) statFD(fd int, a *fsproto.Attr) syscall.Errno {
	return m.statAt(fd, "", unix.AT_EMPTY_PATH, a)
}

// attr converts host attributes to what the guest sees. Inode numbers are
// the host's; a file on another device below the root (a mount point in
// the tree) has its device mixed in, as go-fuse's loopback does, so that
// two devices' inodes do not collide. Gen comes from the birth time, so
// that an inode number the host reuses is not taken for the old file.
func (m *hostMount) attr(st *unix.Statx_t, a *fsproto.Attr) {
	dev := unix.Mkdev(st.Dev_major, st.Dev_minor)
	ino := st.Ino
	if dev != m.rootID.Dev {
		ino ^= bits.RotateLeft64(dev, 32) ^ bits.RotateLeft64(m.rootID.Dev, 32)
	}
	gen := uint64(1)
	if st.Mask&unix.STATX_BTIME != 0 && (st.Btime.Sec != 0 || st.Btime.Nsec != 0) {
		gen = uint64(st.Btime.Sec)*1e9 + uint64(st.Btime.Nsec)
	}
	*a = fsproto.Attr{
		Ino:     ino,
		Gen:     gen,
		Size:    st.Size,
		Blocks:  st.Blocks,
		Atime:   fsproto.Time{Sec: st.Atime.Sec, Nsec: st.Atime.Nsec},
		Mtime:   fsproto.Time{Sec: st.Mtime.Sec, Nsec: st.Mtime.Nsec},
		Ctime:   fsproto.Time{Sec: st.Ctime.Sec, Nsec: st.Ctime.Nsec},
		Mode:    uint32(st.Mode),
		Nlink:   st.Nlink,
		Blksize: st.Blksize,
		Rdev:    encodeDev(st.Rdev_major, st.Rdev_minor),
	}
}

// encodeDev is the kernel's new_encode_dev, the form FUSE carries.
func encodeDev(major, minor uint32) uint32 {
	return minor&0xff | major<<8 | (minor&^0xff)<<12
}

func (m *hostMount) stat(p string, a *fsproto.Attr) syscall.Errno {
	t, errno := m.resolve(p)
	if errno != 0 {
		return errno
	}
	defer t.close()
	return m.statAt(t.dir, t.name, 0, a)
}

func (m *hostMount) fstat(f *os.File, a *fsproto.Attr) syscall.Errno {
	return withFD(f, func(fd int) syscall.Errno { return m.statFD(fd, a) })
}

func (m *hostMount) readlink(p string) ([]byte, syscall.Errno) {
	t, errno := m.resolve(p)
	if errno != 0 {
		return nil, errno
	}
	defer t.close()
	buf := make([]byte, fsproto.MaxPath)
	n, err := unix.Readlinkat(t.dir, t.name, buf)
	if err != nil {
		return nil, errnoOf(err)
	}
	return buf[:n], 0
}

// Open flags the host honours; the others are the guest kernel's
// business or unsafe here. O_APPEND in particular is dropped: the kernel
// sends the offset of every write, and an O_APPEND descriptor would put
// pages written back from a shared mapping at the end of the file.
const openFlags = unix.O_ACCMODE | unix.O_TRUNC | unix.O_SYNC | unix.O_DSYNC

// Flags the host always adds: no symlink is followed, no terminal
// acquired, and nothing blocks (a FIFO swapped in for a file).
const openAlways = unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK

// fileMode strips what the guest may not set on a host file: set-user-ID
// and set-group-ID bits (a privileged executable left in the user's
// tree).
func fileMode(mode uint32) uint32 { return mode & 0o1777 }

func (m *hostMount) open(req *fsproto.Request, a *fsproto.Attr) (*os.File, syscall.Errno) {
	if req.Flags&unix.O_ACCMODE == unix.O_ACCMODE {
		return nil, syscall.EINVAL
	}
	t, errno := m.resolve(req.Path)
	if errno != 0 {
		return nil, errno
	}
	defer t.close()
	flags := int(req.Flags&openFlags) | openAlways
	var mode uint32
	if req.Op == fsproto.OpCreate {
		if t.isRoot() {
			return nil, syscall.EEXIST
		}
		flags |= unix.O_CREAT | int(req.Flags&unix.O_EXCL)
		mode = fileMode(req.Mode)
	}
	// Refuse anything but a regular file before opening it: opening a
	// device node has effects of its own, and a FIFO's open waits for
	// the other end. (The check and the open are not atomic, but only the
	// host user can put a device node or FIFO here, the guest cannot make
	// one; and one swapped in meanwhile is opened with O_NONBLOCK, then
	// refused by the check after the open.)
	switch errno := m.statAt(t.dir, t.name, 0, a); {
	case errno == syscall.ENOENT && flags&unix.O_CREAT != 0:
	case errno != 0:
		return nil, errno
	default:
		if errno := regular(a.Mode); errno != 0 {
			return nil, errno
		}
	}
	fd, err := unix.Openat(t.dir, t.name, flags, mode)
	if err != nil {
		return nil, errnoOf(err)
	}
	if errno := m.statFD(fd, a); errno != 0 {
		unix.Close(fd)
		return nil, errno
	}
	if errno := regular(a.Mode); errno != 0 {
		unix.Close(fd)
		return nil, errno
	}
	return os.NewFile(uintptr(fd), t.name), 0
}

func regular(mode uint32) syscall.Errno {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return 0
	case unix.S_IFDIR:
		return syscall.EISDIR
	case unix.S_IFLNK:
		return syscall.ELOOP
	}
	return syscall.EPERM
}

func withFD(f *os.File, fn func(fd int) syscall.Errno) syscall.Errno {
	rc, err := f.SyscallConn()
	if err != nil {
		return errnoOf(err)
	}
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) { errno = fn(int(fd)) }); err != nil {
		return errnoOf(err)
	}
	return errno
}

func readAt(f *os.File, off, size uint64) ([]byte, syscall.Errno) {
	if off > math.MaxInt64 {
		return nil, syscall.EINVAL
	}
	buf := make([]byte, min(size, fsproto.MaxData))
	n, err := f.ReadAt(buf, int64(off))
	if err != nil && err != io.EOF {
		return nil, errnoOf(err)
	}
	return buf[:n], 0
}

func writeAt(f *os.File, off uint64, data []byte) (int, syscall.Errno) {
	if off > math.MaxInt64-uint64(len(data)) {
		return 0, syscall.EFBIG
	}
	n, err := f.WriteAt(data, int64(off))
	if err != nil && n == 0 {
		return 0, errnoOf(err)
	}
	return n, 0
}

func fsync(f *os.File, dataOnly bool) syscall.Errno {
	return withFD(f, func(fd int) syscall.Errno {
		if dataOnly {
			return errnoOf(unix.Fdatasync(fd))
		}
		return errnoOf(unix.Fsync(fd))
	})
}

func lseek(f *os.File, off uint64, whence uint32) (uint64, syscall.Errno) {
	if whence != unix.SEEK_DATA && whence != unix.SEEK_HOLE || off > math.MaxInt64 {
		return 0, syscall.EINVAL
	}
	var res int64
	errno := withFD(f, func(fd int) syscall.Errno {
		var err error
		res, err = unix.Seek(fd, int64(off), int(whence))
		return errnoOf(err)
	})
	return uint64(res), errno
}

const fallocateModes = unix.FALLOC_FL_KEEP_SIZE | unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_ZERO_RANGE

func fallocate(f *os.File, off, length uint64, mode uint32) syscall.Errno {
	if mode&^fallocateModes != 0 || off > math.MaxInt64 || length > math.MaxInt64 {
		return syscall.EOPNOTSUPP
	}
	return withFD(f, func(fd int) syscall.Errno {
		return errnoOf(unix.Fallocate(fd, mode, int64(off), int64(length)))
	})
}

// times returns the utimensat(2) timestamps a setattr request asks for.
func times(req *fsproto.Request) ([2]unix.Timespec, bool) {
	ts := [2]unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
	set := func(i int, flag, now uint32, t fsproto.Time) {
		switch {
		case req.Flags&flag == 0:
		case req.Flags&now != 0:
			ts[i].Nsec = unix.UTIME_NOW
		default:
			ts[i] = unix.Timespec{Sec: t.Sec, Nsec: int64(t.Nsec)}
		}
	}
	set(0, fsproto.SetAtime, fsproto.SetAtimeNow, req.Atime)
	set(1, fsproto.SetMtime, fsproto.SetMtimeNow, req.Mtime)
	return ts, req.Flags&(fsproto.SetAtime|fsproto.SetMtime) != 0
}

// futimens sets the times of an open file: utimensat with a NULL path
// works on the descriptor itself.
func futimens(fd int, ts *[2]unix.Timespec) error {
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

func (m *hostMount) setattrFile(f *os.File, req *fsproto.Request, a *fsproto.Attr) syscall.Errno {
	return withFD(f, func(fd int) syscall.Errno {
		if req.Flags&fsproto.SetMode != 0 {
			if err := unix.Fchmod(fd, fileMode(req.Mode)); err != nil {
				return errnoOf(err)
			}
		}
		if req.Flags&fsproto.SetSize != 0 {
			if req.Size > math.MaxInt64 {
				return syscall.EFBIG
			}
			if err := unix.Ftruncate(fd, int64(req.Size)); err != nil {
				return errnoOf(err)
			}
		}
		if ts, ok := times(req); ok {
			if err := futimens(fd, &ts); err != nil {
				return errnoOf(err)
			}
		}
		return m.statFD(fd, a)
	})
}

func (m *hostMount) setattrPath(req *fsproto.Request, a *fsproto.Attr) syscall.Errno {
	t, errno := m.resolve(req.Path)
	if errno != 0 {
		return errno
	}
	defer t.close()
	if req.Flags&fsproto.SetMode != 0 {
		if errno := chmodAt(t.dir, t.name, fileMode(req.Mode)); errno != 0 {
			return errno
		}
	}
	if req.Flags&fsproto.SetSize != 0 {
		if req.Size > math.MaxInt64 {
			return syscall.EFBIG
		}
		if errno := m.statAt(t.dir, t.name, 0, a); errno != 0 {
			return errno
		}
		if errno := regular(a.Mode); errno != 0 {
			return errno
		}
		fd, err := unix.Openat(t.dir, t.name, unix.O_WRONLY|openAlways, 0)
		if err != nil {
			return errnoOf(err)
		}
		err = unix.Ftruncate(fd, int64(req.Size))
		unix.Close(fd)
		if err != nil {
			return errnoOf(err)
		}
	}
	if ts, ok := times(req); ok {
		if err := unix.UtimesNanoAt(t.dir, t.name, ts[:], unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return errnoOf(err)
		}
	}
	return m.statAt(t.dir, t.name, 0, a)
}

// chmodAt changes the mode of name in dir without following a symlink:
// with fchmodat2 (Linux 6.6) directly, else through an O_PATH descriptor
// of the very inode, reached by its /proc/self/fd link.
func chmodAt(dir int, name string, mode uint32) syscall.Errno {
	err := unix.Fchmodat(dir, name, mode, unix.AT_SYMLINK_NOFOLLOW)
	if err != unix.EOPNOTSUPP {
		return errnoOf(err)
	}
	fd, err := unix.Openat(dir, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return errnoOf(err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return errnoOf(err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return syscall.EOPNOTSUPP // symlinks have no mode on Linux
	}
	return errnoOf(unix.Fchmodat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), mode, 0))
}

// resolveName resolves p for an op that creates or removes the name
// itself, which the root is not.
func (m *hostMount) resolveName(p string) (target, syscall.Errno) {
	t, errno := m.resolve(p)
	if errno == 0 && t.isRoot() {
		return target{}, syscall.EBUSY
	}
	return t, errno
}

func (m *hostMount) mkdir(p string, mode uint32, a *fsproto.Attr) syscall.Errno {
	t, errno := m.resolveName(p)
	if errno != 0 {
		return errno
	}
	defer t.close()
	if err := unix.Mkdirat(t.dir, t.name, fileMode(mode)); err != nil {
		return errnoOf(err)
	}
	return m.statAt(t.dir, t.name, 0, a)
}

// mknod makes regular files only. A FIFO, socket or device node the
// guest leaves in the user's tree is a trap for host tools: a FIFO named
// Makefile hangs make, a socket fails it oddly, a device gives access to
// hardware. EPERM is what Linux answers for a node type a filesystem
// does not support (vfat, for one), so tools treat it as such: mkfifo
// reports "Operation not permitted", bind fails and programs fall back
// to a socket elsewhere (the guest's /tmp and memory mounts have all
// types). EACCES would send users looking for a permission to fix.
func (m *hostMount) mknod(p string, mode uint32, a *fsproto.Attr) syscall.Errno {
	if mode&unix.S_IFMT != unix.S_IFREG {
		return syscall.EPERM
	}
	t, errno := m.resolveName(p)
	if errno != 0 {
		return errno
	}
	defer t.close()
	if err := unix.Mknodat(t.dir, t.name, mode&unix.S_IFMT|fileMode(mode), 0); err != nil {
		return errnoOf(err)
	}
	return m.statAt(t.dir, t.name, 0, a)
}

func (m *hostMount) symlink(targetPath, p string, a *fsproto.Attr) syscall.Errno {
	if targetPath == "" || strings.IndexByte(targetPath, 0) >= 0 {
		return syscall.EINVAL
	}
	if len(targetPath) >= fsproto.MaxPath {
		return syscall.ENAMETOOLONG
	}
	t, errno := m.resolveName(p)
	if errno != 0 {
		return errno
	}
	defer t.close()
	if err := unix.Symlinkat(targetPath, t.dir, t.name); err != nil {
		return errnoOf(err)
	}
	return m.statAt(t.dir, t.name, 0, a)
}

// resolveNames resolves the two names of a link or rename as resolveName
// does; on success the caller closes both.
func (m *hostMount) resolveNames(oldPath, newPath string) (o, n target, errno syscall.Errno) {
	o, errno = m.resolveName(oldPath)
	if errno != 0 {
		return target{}, target{}, errno
	}
	n, errno = m.resolveName(newPath)
	if errno != 0 {
		o.close()
		return target{}, target{}, errno
	}
	return o, n, 0
}

func (m *hostMount) link(oldPath, newPath string, a *fsproto.Attr) syscall.Errno {
	o, n, errno := m.resolveNames(oldPath, newPath)
	if errno != 0 {
		return errno
	}
	defer o.close()
	defer n.close()
	// Flags 0: linkat does not follow a symlink at oldPath either.
	if err := unix.Linkat(o.dir, o.name, n.dir, n.name, 0); err != nil {
		return errnoOf(err)
	}
	return m.statAt(n.dir, n.name, 0, a)
}

func (m *hostMount) unlink(p string, flags int) syscall.Errno {
	t, errno := m.resolveName(p)
	if errno != 0 {
		return errno
	}
	defer t.close()
	return errnoOf(unix.Unlinkat(t.dir, t.name, flags))
}

func (m *hostMount) rename(oldPath, newPath string, flags uint32) syscall.Errno {
	if flags&^(unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE) != 0 {
		return syscall.EINVAL // RENAME_WHITEOUT makes a device node
	}
	o, n, errno := m.resolveNames(oldPath, newPath)
	if errno != 0 {
		return errno
	}
	defer o.close()
	defer n.close()
	return errnoOf(unix.Renameat2(o.dir, o.name, n.dir, n.name, uint(flags)))
}

func (m *hostMount) statfs(out *fsproto.Statfs) syscall.Errno {
	var st unix.Statfs_t
	if err := unix.Fstatfs(m.root, &st); err != nil {
		return errnoOf(err)
	}
	*out = fsproto.Statfs{
		Blocks: st.Blocks, Bfree: st.Bfree, Bavail: st.Bavail, Files: st.Files, Ffree: st.Ffree,
		Bsize: uint32(st.Bsize), Namelen: uint32(st.Namelen), Frsize: uint32(st.Frsize),
	}
	return 0
}

// dirStream is an open directory being listed. Cookies count the names
// read so far; a cookie other than the current position (seekdir,
// rewinddir, or a retried request) restarts the listing and skips ahead.
type dirStream struct {
	mu     sync.Mutex
	f      *os.File
	pos    uint64   // names consumed so far
	buf    []string // names read from the kernel, not yet consumed
	done   bool     // the kernel has no more names
	closed bool
}

func (m *hostMount) opendir(p string) (*dirStream, syscall.Errno) {
	t, errno := m.resolve(p)
	if errno != 0 {
		return nil, errno
	}
	defer t.close()
	fd, err := unix.Openat(t.dir, t.name, unix.O_RDONLY|unix.O_DIRECTORY|openAlways, 0)
	if err != nil {
		return nil, errnoOf(err)
	}
	return &dirStream{f: os.NewFile(uintptr(fd), t.name)}, 0
}

func (d *dirStream) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.closed {
		d.closed = true
		d.f.Close()
	}
}

// next returns the next name, or "" at the end.
func (d *dirStream) next() (string, syscall.Errno) {
	for len(d.buf) == 0 {
		if d.done {
			return "", 0
		}
		names, err := d.f.Readdirnames(256)
		if err == io.EOF || err == nil && len(names) == 0 {
			d.done = true
		} else if err != nil {
			return "", errnoOf(err)
		}
		d.buf = names
	}
	name := d.buf[0]
	d.buf = d.buf[1:]
	return name, 0
}

func (d *dirStream) page(m *hostMount, cookie, max uint64) ([]fsproto.DirEntry, bool, syscall.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, false, syscall.EBADF
	}
	if cookie != d.pos {
		if cookie < d.pos {
			if _, err := d.f.Seek(0, io.SeekStart); err != nil {
				return nil, false, errnoOf(err)
			}
			d.pos, d.buf, d.done = 0, nil, false
		}
		for d.pos < cookie {
			name, errno := d.next()
			if errno != 0 {
				return nil, false, errno
			}
			if name == "" {
				return nil, true, 0
			}
			d.pos++
		}
	}
	if max == 0 || max > fsproto.MaxEntries {
		max = fsproto.MaxEntries
	}
	budget := fsproto.MaxData - 64
	var entries []fsproto.DirEntry
	errno := withFD(d.f, func(fd int) syscall.Errno {
		for uint64(len(entries)) < max {
			name, errno := d.next()
			if errno != 0 {
				return errno
			}
			if name == "" {
				return 0
			}
			size := fsproto.EntrySize(len(name))
			if size > budget {
				d.buf = append([]string{name}, d.buf...)
				return 0
			}
			d.pos++
			var a fsproto.Attr
			if m.statAt(fd, name, 0, &a) != 0 {
				continue // removed since the kernel listed it
			}
			budget -= size
			entries = append(entries, fsproto.DirEntry{Name: name, Next: d.pos, Attr: a})
		}
		return 0
	})
	if errno != 0 && len(entries) == 0 {
		return nil, false, errno
	}
	return entries, d.done && len(d.buf) == 0, 0
}

func (d *dirStream) stat(m *hostMount, a *fsproto.Attr) syscall.Errno {
	return withFD(d.f, func(fd int) syscall.Errno { return m.statFD(fd, a) })
}

func (d *dirStream) sync() syscall.Errno {
	return withFD(d.f, func(fd int) syscall.Errno { return errnoOf(unix.Fsync(fd)) })
}
