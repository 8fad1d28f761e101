// Package fsproto is the file protocol between a guest's FUSE filesystem
// (package mounts/guestfs, inside the VM agent) and the host provider that
// serves host directories (package mounts).
//
// One virtio-serial port carries the operations of every host mount of a
// VM. After a resync handshake (see Handshake), both ends exchange frames:
//
//	size  uint32  bytes that follow, 9..MaxFrame
//	tag   uint64  chosen by the guest, echoed by the reply
//	op    uint8   Op; replies set ReplyBit
//	body          requests: the op's fields; replies: errno uint32, then
//	              the op's result fields when errno is 0
//
// Integers are big-endian; strings and byte slices carry a length prefix
// and a per-field limit. Which fields an op carries is fixed by one table
// (requestFields, replyFields), so the encoder and the decoder cannot
// drift apart. The guest is untrusted: the host decoder rejects anything
// outside those limits, answers the frame with an errno, and keeps serving.
// Errors travel as Linux errno values end to end.
//
// Paths in requests are relative to the mount's root, '/'-separated,
// without "." or ".." components ("" names the root itself). The guest
// kernel resolves symlinks; the host never follows one.
package fsproto

import (
	"fmt"
	"syscall"
)

// Version is the protocol version; the guest sends it in OpInit and the
// host refuses versions it does not speak. Version 2 adds OpNotify: the
// host tells the guest what changed on its side, so that the guest may
// cache for long (see Notice). A version 2 guest falls back to 1 when a
// host refuses 2, and then caches for short.
const (
	Version    = 2
	MinVersion = 1
)

// Limits every decoder enforces.
const (
	// MaxData bounds the payload of one read or write (FUSE's largest
	// request is 1 MiB) and the encoded size of one readdir page.
	MaxData = 1 << 20
	// MaxFrame bounds a whole frame: the largest data plus headers and
	// two maximal paths.
	MaxFrame = MaxData + 16<<10
	// MaxPath is PATH_MAX; MaxName is NAME_MAX.
	MaxPath = 4096
	MaxName = 255
	// MaxMountID bounds a mount ID.
	MaxMountID = 64
	// MaxEntries bounds the entries of one readdir page.
	MaxEntries = 1 << 14

	// frameHeader is the part of a frame after the size field that every
	// frame has: tag and op.
	frameHeader = 9
)

// Op is a file operation.
type Op uint8

// Operations. Handle-based ops work on a host handle from OpOpen,
// OpCreate or OpOpendir.
const (
	OpInit      Op = iota + 1 // Version -> Version, Instance
	OpStat                    // Path -> Attr (never follows a final symlink)
	OpFstat                   // Handle -> Attr
	OpReadlink                // Path -> Data
	OpOpen                    // Path, Flags -> Handle, Attr
	OpCreate                  // Path, Flags, Mode -> Handle, Attr
	OpOpendir                 // Path -> Handle
	OpReaddir                 // Handle, Offset (cookie), Size (max entries) -> Entries, EOF
	OpRead                    // Handle, Offset, Size -> Data
	OpWrite                   // Handle, Offset, Data -> Size (written)
	OpRelease                 // Handle ->
	OpFsync                   // Handle, Flags (1: data only) ->
	OpSetattr                 // Path or Handle, Flags (Set*), Mode, Size, Atime, Mtime -> Attr
	OpMkdir                   // Path, Mode -> Attr
	OpMknod                   // Path, Mode, Dev -> Attr
	OpSymlink                 // Path, Data (target) -> Attr
	OpLink                    // Path (existing), Path2 (new) -> Attr
	OpUnlink                  // Path ->
	OpRmdir                   // Path ->
	OpRename                  // Path, Path2, Flags (RENAME_*) ->
	OpStatfs                  // -> Statfs
	OpLseek                   // Handle, Offset, Flags (whence) -> Offset
	OpFallocate               // Handle, Offset, Size (length), Flags (mode) ->
	// OpNotify is the one frame the host sends unasked (version 2): a
	// reply frame with tag 0 and errno 0 carrying Mount, Path and Flags
	// (a Notice kind). A guest never sends it; the host refuses it.
	OpNotify
	opEnd
)

// ReplyBit marks a reply frame's op byte.
const ReplyBit = 0x80

var opNames = [...]string{
	OpInit: "init", OpStat: "stat", OpFstat: "fstat", OpReadlink: "readlink",
	OpOpen: "open", OpCreate: "create", OpOpendir: "opendir", OpReaddir: "readdir",
	OpRead: "read", OpWrite: "write", OpRelease: "release", OpFsync: "fsync",
	OpSetattr: "setattr", OpMkdir: "mkdir", OpMknod: "mknod", OpSymlink: "symlink",
	OpLink: "link", OpUnlink: "unlink", OpRmdir: "rmdir", OpRename: "rename",
	OpStatfs: "statfs", OpLseek: "lseek", OpFallocate: "fallocate", OpNotify: "notify",
}

func (op Op) String() string {
	if op > 0 && op < opEnd {
		return opNames[op]
	}
	return fmt.Sprintf("op(%d)", uint8(op))
}

// Valid reports whether op is a known operation.
func (op Op) Valid() bool { return op > 0 && op < opEnd }

// Notice kinds (Reply.Flags of an OpNotify frame). Path is relative to
// the mount's root, as in requests.
const (
	// NoticeEntry: the name Path (in its parent directory) was created,
	// removed or replaced on the host. The guest forgets the name and
	// the parent's attributes.
	NoticeEntry = 1
	// NoticeInode: the contents or attributes of the file or directory
	// at Path changed on the host. The guest forgets its attributes and
	// cached data.
	NoticeInode = 2
	// NoticeAll: the host lost track (its event queue overflowed); the
	// guest forgets everything it caches of the mount (Path is "").
	NoticeAll = 3
	// NoticeUnwatched: the host cannot watch this mount any longer (its
	// watch budget is spent). The guest forgets everything and caches
	// the mount's names and attributes for short from now on.
	NoticeUnwatched = 4
)

// Mutating reports whether op changes the host tree; a read-only mount
// answers every such op with EROFS (OpOpen and OpSetattr are checked by
// their flags instead, see Request.Writes).
func (op Op) Mutating() bool {
	switch op {
	case OpCreate, OpWrite, OpSetattr, OpMkdir, OpMknod, OpSymlink, OpLink,
		OpUnlink, OpRmdir, OpRename, OpFallocate:
		return true
	}
	return false
}

// Idempotent reports whether repeating op gives the same result as doing
// it once, so a guest may send it again after a lost connection. Ops that
// create or remove names are not: their outcome is unknown after a loss
// and the guest reports EIO instead.
func (op Op) Idempotent() bool {
	switch op {
	case OpInit, OpStat, OpFstat, OpReadlink, OpOpen, OpOpendir, OpReaddir,
		OpRead, OpWrite, OpRelease, OpFsync, OpSetattr, OpStatfs, OpLseek,
		OpFallocate:
		return true
	}
	return false
}

// Setattr flags: which attributes a Setattr request changes.
const (
	SetMode     = 1 << 0
	SetSize     = 1 << 1
	SetAtime    = 1 << 2
	SetMtime    = 1 << 3
	SetAtimeNow = 1 << 4 // with SetAtime: use the host's current time
	SetMtimeNow = 1 << 5
)

// Time is a timestamp: seconds and nanoseconds since the epoch.
type Time struct {
	Sec  int64
	Nsec uint32
}

// Attr is what the guest learns about a file. Owners are not sent: the
// guest shows every file as owned by its root (see package mounts).
type Attr struct {
	Ino     uint64 // stable per host inode
	Gen     uint64 // changes when the host reuses an inode number
	Size    uint64
	Blocks  uint64 // 512-byte blocks allocated (sparse files show here)
	Atime   Time
	Mtime   Time
	Ctime   Time
	Mode    uint32 // type and permission bits, as st_mode
	Nlink   uint32
	Blksize uint32
	Rdev    uint32
}

// DirEntry is one directory entry with its attributes (READDIRPLUS), so
// that listing a directory costs one round trip per page, not per entry.
type DirEntry struct {
	Name string
	// Next is the cookie that continues the listing after this entry.
	Next uint64
	Attr Attr
}

// Statfs describes the filesystem holding a mount's root.
type Statfs struct {
	Blocks, Bfree, Bavail, Files, Ffree uint64
	Bsize, Namelen, Frsize              uint32
}

// Request is a decoded request; only the fields of its op are meaningful.
type Request struct {
	Tag    uint64
	Op     Op
	Mount  string // mount ID
	Path   string
	Path2  string
	Handle uint64
	Flags  uint32
	Mode   uint32
	Dev    uint32
	Offset uint64
	Size   uint64
	Data   []byte
	Atime  Time
	Mtime  Time
	// Version is the guest's protocol version (OpInit).
	Version uint32
}

// Writes reports whether r would change the host tree, which a read-only
// mount refuses with EROFS.
func (r *Request) Writes() bool {
	switch r.Op {
	case OpOpen:
		return r.Flags&syscall.O_ACCMODE != syscall.O_RDONLY || r.Flags&(syscall.O_TRUNC|syscall.O_CREAT) != 0
	case OpSetattr:
		return r.Flags&(SetMode|SetSize|SetAtime|SetMtime) != 0
	}
	return r.Op.Mutating()
}

// Reply is a decoded reply; only the fields of its op are meaningful, and
// none when Errno is not 0.
type Reply struct {
	Tag     uint64
	Op      Op
	Errno   syscall.Errno
	Attr    Attr
	Handle  uint64
	Data    []byte
	Entries []DirEntry
	EOF     bool
	Size    uint64
	Offset  uint64
	Statfs  Statfs
	// Version and Instance answer OpInit: the host's protocol version and
	// a random number that changes whenever the host provider restarts
	// (handles of an older instance are gone).
	Version  uint32
	Instance uint64
	// Mount, Path and Flags (a Notice kind) make up an OpNotify frame.
	Mount string
	Path  string
	Flags uint32
}

// Field sets of requests and replies, in encoding order.
type fields uint32

const (
	fMount fields = 1 << iota
	fPath
	fPath2
	fHandle
	fFlags
	fMode
	fDev
	fOffset
	fSize
	fData
	fTimes
	fVersion
	// reply-only
	fAttr
	fEntries
	fStatfs
	fInstance
)

var requestFields = [opEnd]fields{
	OpInit:      fVersion,
	OpStat:      fMount | fPath,
	OpFstat:     fMount | fHandle,
	OpReadlink:  fMount | fPath,
	OpOpen:      fMount | fPath | fFlags,
	OpCreate:    fMount | fPath | fFlags | fMode,
	OpOpendir:   fMount | fPath,
	OpReaddir:   fMount | fHandle | fOffset | fSize,
	OpRead:      fMount | fHandle | fOffset | fSize,
	OpWrite:     fMount | fHandle | fOffset | fData,
	OpRelease:   fMount | fHandle,
	OpFsync:     fMount | fHandle | fFlags,
	OpSetattr:   fMount | fPath | fHandle | fFlags | fMode | fSize | fTimes,
	OpMkdir:     fMount | fPath | fMode,
	OpMknod:     fMount | fPath | fMode | fDev,
	OpSymlink:   fMount | fPath | fData,
	OpLink:      fMount | fPath | fPath2,
	OpUnlink:    fMount | fPath,
	OpRmdir:     fMount | fPath,
	OpRename:    fMount | fPath | fPath2 | fFlags,
	OpStatfs:    fMount,
	OpLseek:     fMount | fHandle | fOffset | fFlags,
	OpFallocate: fMount | fHandle | fOffset | fSize | fFlags,
}

var replyFields = [opEnd]fields{
	OpInit:     fVersion | fInstance,
	OpStat:     fAttr,
	OpFstat:    fAttr,
	OpReadlink: fData,
	OpOpen:     fHandle | fAttr,
	OpCreate:   fHandle | fAttr,
	OpOpendir:  fHandle,
	OpReaddir:  fEntries,
	OpRead:     fData,
	OpWrite:    fSize,
	OpSetattr:  fAttr,
	OpMkdir:    fAttr,
	OpMknod:    fAttr,
	OpSymlink:  fAttr,
	OpLink:     fAttr,
	OpStatfs:   fStatfs,
	OpLseek:    fOffset,
	OpNotify:   fMount | fPath | fFlags,
}
