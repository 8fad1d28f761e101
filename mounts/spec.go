// Package mounts puts a user's host directories (read-write or read-only)
// and memory filesystems inside gondolin VMs, and is the host end of the
// file protocol that serves them: every host-file access a guest makes is
// done here, confined beneath the mounted directory.
//
// How a host directory reaches the guest: a daemon that the guest agent
// starts serves a FUSE filesystem (package mounts/guestfs) and forwards
// each operation over the VM's fs virtio-serial port (package
// mounts/fsproto) to a Server, which performs it beneath the directory
// with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) and *at calls that
// never follow a final symlink. Unlike virtiofs this keeps a VM
// migratable, so live snapshots work.
//
// What the guest sees:
//
//   - Ownership: every file appears owned by root (uid 0, gid 0), the user
//     the guest runs as; the guest kernel checks permission bits against
//     that (default_permissions). On the host, files are created as the
//     user running gondolin, with the guest's mode limited by that
//     process's umask. chown and chgrp succeed and change nothing, so
//     tools that extract archives as root keep working. Host permission
//     checks still apply to the host user: a file the host user may not
//     read gives EACCES in the guest even to its root.
//   - Set-user-ID and set-group-ID bits are never set on host files: the
//     guest must not be able to leave a privileged executable in the
//     user's tree.
//   - Only regular files, directories and symlinks are created on the
//     host: mknod of a FIFO, socket or device node gets EPERM, since
//     one left in the user's tree traps host tools (a FIFO named
//     Makefile hangs make). Such files already on the host are listed
//     but never opened (EPERM).
//   - Symlinks are stored verbatim and resolved by the guest kernel, so
//     an absolute symlink points into the guest's own filesystem, never
//     the host's. (A symlink the guest leaves in a read-write tree may
//     point anywhere on the host for host tools that follow it later, as
//     any file the guest writes may mislead them.)
//   - Caching: the host watches (inotify) every directory the guest has
//     looked into and reports changes made on the host side (see
//     watch.go), so the guest caches names, attributes, negative lookups
//     and file data for long (guestfs.LongTimeout, a minute) and a host
//     change shows in the guest within milliseconds. What inotify cannot
//     see (another machine writing a network filesystem, a hard link
//     changed from outside the mount) shows within that minute; a file
//     reopened with another size or modification time always rereads.
//     A guest of protocol version 1, or a mount over the host's watch
//     budget, caches for CacheTimeout (1 s) instead.
//   - Which directory: a host mount's path is resolved once, when the
//     mount is made (ParseHostFS, PinRoots), and its device and inode
//     numbers kept with the session. A server made later (a supervisor
//     restart, a resumed snapshot) opens the path following no symlink
//     and refuses a directory that is not that one (ErrRootChanged), so
//     a guest that can write above another mount's directory cannot
//     redirect it. Host directories of one VM may not overlap (Check).
//   - Open files: at most MaxHandles per VM (EMFILE beyond).
//   - Inode numbers are the host's (mixed with the device number for
//     directories that cross a mount point), so hard links show as one
//     inode.
package mounts

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// errBadMount is wrapped by every error about a bad mount specification.
var errBadMount = errdefs.Kind(errdefs.ErrInvalid, "invalid mount")

// CacheTimeout is how long the guest trusts attributes and directory
// entries it got from the host when the host cannot report its changes
// (see the package comment).
const CacheTimeout = time.Second

// Spec is one mount of a VM, as recorded in a session's spec.
type Spec struct {
	// ID names a host mount on the fs port; it is derived from the guest
	// path, so it is stable across supervisor restarts.
	ID string `json:"id,omitempty"`
	// HostPath is the absolute, symlink-free host directory (host mounts).
	HostPath string `json:"host_path,omitempty"`
	// Root is the identity HostPath had when the mount was made (by
	// ParseHostFS or PinRoots). It is kept with the session so that a
	// server made later (a supervisor restart, a resumed snapshot) serves
	// that directory or nothing: the guest may have moved another one to
	// HostPath through a mount of another session. Zero (records made
	// before it existed) checks nothing but that the path has no symlink.
	Root      RootID `json:"root,omitzero"`
	GuestPath string `json:"guest_path"`
	ReadOnly  bool   `json:"read_only,omitempty"`
	// Memory mounts are a tmpfs in the guest, gone with the VM.
	Memory bool `json:"memory,omitempty"`
}

// RootID identifies a host directory: its device and inode numbers.
// (Device numbers can change when a filesystem is mounted again, after a
// reboot on btrfs or device-mapper volumes; the directory is then
// refused as changed, and the error shows both identities.)
type RootID struct {
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

func (r RootID) String() string {
	return fmt.Sprintf("device %d:%d inode %d", unix.Major(r.Dev), unix.Minor(r.Dev), r.Ino)
}

// ErrRootChanged is wrapped by the error of a host mount whose directory
// is no longer the one the mount was made with (moved, replaced, or with
// a symlink now in its path).
var ErrRootChanged = errors.New("host directory changed")

func (s Spec) String() string {
	switch {
	case s.Memory:
		return "memfs:" + s.GuestPath
	case s.ReadOnly:
		return s.HostPath + ":" + s.GuestPath + ":ro"
	}
	return s.HostPath + ":" + s.GuestPath
}

// AgentMount is the request that asks the guest agent to mount s.
func (s Spec) AgentMount() *agentproto.Mount {
	return &agentproto.Mount{ID: s.ID, Path: s.GuestPath, ReadOnly: s.ReadOnly, Memory: s.Memory}
}

// ParseHostFS parses a --mount-hostfs value, HOST:GUEST[:ro] (":rw" is
// accepted too). HOST may be relative and may contain colons; it must be
// an existing directory. Its symlinks are resolved here, once, as the
// user meant them: the spec holds the absolute path without symlinks and
// the directory's identity (Root), and from then on the mount is only
// ever opened by that path with no symlink followed, and only if it is
// still the same directory.
func ParseHostFS(s string) (Spec, error) { return parseHostFS(s, false) }

// ParseHostFSElsewhere parses a --mount-hostfs value whose host directory
// is on another machine (a gondolin context): its syntax only, with an
// absolute host path, which that machine's supervisor checks and pins.
func ParseHostFSElsewhere(s string) (Spec, error) { return parseHostFS(s, true) }

func parseHostFS(s string, elsewhere bool) (Spec, error) {
	bad := func(format string, args ...any) (Spec, error) {
		return Spec{}, fmt.Errorf("%w: --mount-hostfs %q: %s", errBadMount, s, fmt.Sprintf(format, args...))
	}
	spec := Spec{}
	rest := s
	if r, ok := strings.CutSuffix(rest, ":ro"); ok {
		spec.ReadOnly, rest = true, r
	} else if r, ok := strings.CutSuffix(rest, ":rw"); ok {
		rest = r
	}
	i := strings.LastIndexByte(rest, ':')
	if i <= 0 {
		return bad("want HOST:GUEST or HOST:GUEST:ro")
	}
	host, guest := rest[:i], rest[i+1:]
	g, err := checkGuestPath(guest)
	if err != nil {
		return bad("%v", err)
	}
	spec.GuestPath = g
	if elsewhere {
		// Another machine's path: resolved, checked and pinned there
		// (its supervisor's Validate and PinRoots), not here.
		if !filepath.IsAbs(host) {
			return bad("the host directory %s is on another machine: give its absolute path there", host)
		}
		spec.HostPath, spec.ID = filepath.Clean(host), mountID(g)
		return spec, nil
	}
	abs, err := filepath.Abs(host)
	if err != nil {
		return bad("%v", err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return bad("host directory %s does not exist", abs)
		}
		return bad("%v", err)
	}
	fd, id, err := openRoot(real)
	switch {
	case errors.Is(err, unix.ENOTDIR):
		return bad("%s is not a directory", abs)
	case err != nil:
		// A symlink here is one that appeared since EvalSymlinks.
		return bad("%s: %v", real, err)
	}
	unix.Close(fd)
	spec.HostPath = real
	spec.Root = id
	spec.ID = mountID(g)
	return spec, nil
}

// ParseMemFS parses a --mount-memfs value: an absolute guest path.
func ParseMemFS(s string) (Spec, error) {
	g, err := checkGuestPath(s)
	if err != nil {
		return Spec{}, fmt.Errorf("%w: --mount-memfs %q: %v", errBadMount, s, err)
	}
	return Spec{GuestPath: g, Memory: true}, nil
}

func mountID(guestPath string) string {
	sum := sha256.Sum256([]byte(guestPath))
	return "m" + hex.EncodeToString(sum[:6])
}

// Guest paths that must stay the guest kernel's own.
var reservedGuestPaths = []string{"/proc", "/sys", "/dev"}

func checkGuestPath(p string) (string, error) {
	switch {
	case p == "":
		return "", errors.New("empty guest path")
	case !strings.HasPrefix(p, "/"):
		return "", fmt.Errorf("guest path %s is not absolute", p)
	case strings.ContainsAny(p, "\x00:"), len(p) > 1024:
		return "", fmt.Errorf("guest path %q is not usable", p)
	}
	c := path.Clean(p)
	if c == "/" {
		return "", errors.New("cannot mount over the guest's root")
	}
	for _, r := range reservedGuestPaths {
		if c == r || strings.HasPrefix(c, r+"/") {
			return "", fmt.Errorf("%s is reserved for the guest kernel", r)
		}
	}
	return c, nil
}

// Check validates a VM's mounts as a set: each must be valid on its own,
// no guest path may be used twice, and mount points may not nest (a mount
// inside a host mount would create its mount point in the user's tree,
// and the outcome would depend on mount order). Host directories may not
// overlap either: see checkHostOverlap.
func Check(specs []Spec) error {
	for i, s := range specs {
		if _, err := checkGuestPath(s.GuestPath); err != nil {
			return fmt.Errorf("%w: %v", errBadMount, err)
		}
		if !s.Memory && (s.ID == "" || len(s.ID) > 64 || !filepath.IsAbs(s.HostPath) || filepath.Clean(s.HostPath) != s.HostPath) {
			return fmt.Errorf("%w: host mount %s lacks an ID or a clean absolute host path", errBadMount, s.GuestPath)
		}
		for _, t := range specs[:i] {
			if !s.Memory && !t.Memory {
				if err := checkHostOverlap(t, s); err != nil {
					return err
				}
			}
			a, b := path.Clean(s.GuestPath), path.Clean(t.GuestPath)
			switch {
			case a == b:
				return fmt.Errorf("%w: %s is mounted twice", errBadMount, a)
			case strings.HasPrefix(a, b+"/"):
				return fmt.Errorf("%w: %s is inside mount %s; nested mounts are not supported", errBadMount, a, b)
			case strings.HasPrefix(b, a+"/"):
				return fmt.Errorf("%w: %s is inside mount %s; nested mounts are not supported", errBadMount, b, a)
			case !s.Memory && !t.Memory && s.ID == t.ID:
				return fmt.Errorf("%w: mounts %s and %s share ID %s", errBadMount, a, b, s.ID)
			}
		}
	}
	return nil
}

// checkHostOverlap refuses two host mounts of one directory, or of one
// directory inside the other. Through the outer mount the guest can
// rename the inner one's directory (or one above it) and put a symlink
// or another directory in its place, which a later server would serve
// with the inner mount's guest path and rights; Root catches that, as it
// must for mounts of different sessions, but a VM should not be set up
// to try. Pairs that are both read-only are refused too, to keep the
// rule simple. The same directory twice would show the guest one file
// under two paths with separate caches, and a read-only mount beside a
// writable one of the same files protects nothing.
func checkHostOverlap(a, b Spec) error {
	inside := func(inner, outer string) bool {
		return outer == "/" || strings.HasPrefix(inner, outer+"/")
	}
	switch {
	case a.HostPath == b.HostPath || a.Root != (RootID{}) && a.Root == b.Root:
		return fmt.Errorf("%w: --mount-hostfs %s and --mount-hostfs %s are the same host directory; mount it once", errBadMount, a, b)
	case inside(b.HostPath, a.HostPath):
		return fmt.Errorf("%w: --mount-hostfs %s is inside --mount-hostfs %s on the host; overlapping host mounts are refused (the guest could replace one through the other)", errBadMount, b, a)
	case inside(a.HostPath, b.HostPath):
		return fmt.Errorf("%w: --mount-hostfs %s is inside --mount-hostfs %s on the host; overlapping host mounts are refused (the guest could replace one through the other)", errBadMount, a, b)
	}
	return nil
}
