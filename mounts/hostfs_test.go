package mounts

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"

	"github.com/gondolin/gondolin/mounts/fsproto"
	"golang.org/x/sys/unix"
)

// TestPOSIX drives every operation through the protocol client against a
// real Server, over a socket pair.
func TestPOSIX(t *testing.T) {
	bothWalks(t, testPOSIX)
}

func testPOSIX(t *testing.T) {
	dir, spec := hostDir(t, "/w", false)
	_, c := serve(t, spec)
	m := fsproto.Mount{C: c, ID: spec.ID}
	ctx := ctxT(t)

	t.Run("create-exclusive", func(t *testing.T) {
		h, a, errno := m.Create(ctx, "f", unix.O_RDWR|unix.O_EXCL, 0o640)
		mustOK(t, "create", errno)
		if a.Mode != unix.S_IFREG|0o640&^uint32(unixUmask()) {
			t.Errorf("mode %o", a.Mode)
		}
		_, _, errno = m.Create(ctx, "f", unix.O_RDWR|unix.O_EXCL, 0o640)
		wantErrno(t, "second O_EXCL create", errno, syscall.EEXIST)
		n, errno := m.Write(ctx, h, 0, []byte("hello, world"))
		mustOK(t, "write", errno)
		if n != 12 {
			t.Errorf("wrote %d", n)
		}
		data, errno := m.Read(ctx, h, 7, 100)
		mustOK(t, "read", errno)
		if string(data) != "world" {
			t.Errorf("read %q", data)
		}
		mustOK(t, "fsync", m.Fsync(ctx, h, false))
		mustOK(t, "fdatasync", m.Fsync(ctx, h, true))
		mustOK(t, "release", m.Release(ctx, h))
		_, errno = m.Read(ctx, h, 0, 1)
		wantErrno(t, "read after release", errno, syscall.ESTALE)
		if b, _ := os.ReadFile(filepath.Join(dir, "f")); string(b) != "hello, world" {
			t.Errorf("host sees %q", b)
		}
	})

	t.Run("stat-and-inode", func(t *testing.T) {
		a, errno := m.Stat(ctx, "f")
		mustOK(t, "stat", errno)
		var st unix.Stat_t
		unix.Lstat(filepath.Join(dir, "f"), &st)
		if a.Ino != st.Ino || a.Size != 12 || a.Nlink != 1 || a.Mtime.Sec != st.Mtim.Sec {
			t.Errorf("stat %+v, host %+v", a, st)
		}
		b, _ := m.Stat(ctx, "f")
		if a.Ino != b.Ino || a.Gen != b.Gen {
			t.Errorf("inode not stable: %v/%v then %v/%v", a.Ino, a.Gen, b.Ino, b.Gen)
		}
		root, errno := m.Stat(ctx, "")
		mustOK(t, "stat root", errno)
		if root.Mode&unix.S_IFMT != unix.S_IFDIR {
			t.Errorf("root mode %o", root.Mode)
		}
		_, errno = m.Stat(ctx, "missing")
		wantErrno(t, "stat missing", errno, syscall.ENOENT)
		_, errno = m.Stat(ctx, "f/x")
		wantErrno(t, "stat under a file", errno, syscall.ENOTDIR)
	})

	t.Run("truncate-chmod-utimes", func(t *testing.T) {
		a, errno := m.Setattr(ctx, "f", 0, fsproto.SetattrIn{Flags: fsproto.SetSize, Size: 5})
		mustOK(t, "truncate by path", errno)
		if a.Size != 5 {
			t.Errorf("size %d", a.Size)
		}
		h, _, errno := m.Open(ctx, "f", unix.O_RDWR)
		mustOK(t, "open", errno)
		defer m.Release(ctx, h)
		a, errno = m.Setattr(ctx, "", h, fsproto.SetattrIn{Flags: fsproto.SetSize, Size: 3})
		mustOK(t, "ftruncate", errno)
		if a.Size != 3 {
			t.Errorf("size %d", a.Size)
		}
		a, errno = m.Setattr(ctx, "f", 0, fsproto.SetattrIn{Flags: fsproto.SetMode, Mode: 0o604})
		mustOK(t, "chmod", errno)
		if a.Mode&0o7777 != 0o604 {
			t.Errorf("mode %o", a.Mode)
		}
		a, errno = m.Setattr(ctx, "f", 0, fsproto.SetattrIn{Flags: fsproto.SetMode, Mode: 0o6755})
		mustOK(t, "chmod setuid", errno)
		if a.Mode&0o7777 != 0o755 {
			t.Errorf("setuid/setgid not stripped: %o", a.Mode)
		}
		_, errno = m.Setattr(ctx, "", h, fsproto.SetattrIn{Flags: fsproto.SetMode, Mode: 0o4777})
		mustOK(t, "fchmod setuid", errno)
		if st, _ := os.Stat(filepath.Join(dir, "f")); st.Mode()&os.ModeSetuid != 0 || st.Mode().Perm() != 0o777 {
			t.Errorf("host mode %v", st.Mode())
		}
		a, errno = m.Setattr(ctx, "f", 0, fsproto.SetattrIn{Flags: fsproto.SetAtime | fsproto.SetMtime,
			Atime: fsproto.Time{Sec: 1000, Nsec: 5}, Mtime: fsproto.Time{Sec: 2000, Nsec: 7}})
		mustOK(t, "utimes", errno)
		if a.Atime != (fsproto.Time{Sec: 1000, Nsec: 5}) || a.Mtime != (fsproto.Time{Sec: 2000, Nsec: 7}) {
			t.Errorf("times %+v %+v", a.Atime, a.Mtime)
		}
		a, errno = m.Setattr(ctx, "", h, fsproto.SetattrIn{Flags: fsproto.SetMtime | fsproto.SetMtimeNow})
		mustOK(t, "futimens now", errno)
		if a.Mtime.Sec < 1e9 || a.Atime.Sec != 1000 {
			t.Errorf("mtime now: %+v, atime kept: %+v", a.Mtime, a.Atime)
		}
	})

	t.Run("mkdir-rmdir-unlink", func(t *testing.T) {
		a, errno := m.Mkdir(ctx, "d", 0o750)
		mustOK(t, "mkdir", errno)
		if a.Mode&unix.S_IFMT != unix.S_IFDIR {
			t.Errorf("mode %o", a.Mode)
		}
		_, errno = m.Mkdir(ctx, "d", 0o750)
		wantErrno(t, "mkdir again", errno, syscall.EEXIST)
		_, _, errno = m.Create(ctx, "d/x", unix.O_WRONLY, 0o644)
		mustOK(t, "create in d", errno)
		wantErrno(t, "rmdir non-empty", m.Rmdir(ctx, "d"), syscall.ENOTEMPTY)
		wantErrno(t, "unlink a directory", m.Unlink(ctx, "d"), syscall.EISDIR)
		wantErrno(t, "rmdir a file", m.Rmdir(ctx, "d/x"), syscall.ENOTDIR)
		mustOK(t, "unlink", m.Unlink(ctx, "d/x"))
		mustOK(t, "rmdir", m.Rmdir(ctx, "d"))
		wantErrno(t, "rmdir root", m.Rmdir(ctx, ""), syscall.EBUSY)
		if _, err := os.Lstat(filepath.Join(dir, "d")); !os.IsNotExist(err) {
			t.Errorf("d still on host: %v", err)
		}
	})

	t.Run("symlink-readlink", func(t *testing.T) {
		a, errno := m.Symlink(ctx, "f", "sl")
		mustOK(t, "symlink", errno)
		if a.Mode&unix.S_IFMT != unix.S_IFLNK {
			t.Errorf("mode %o", a.Mode)
		}
		target, errno := m.Readlink(ctx, "sl")
		if errno != 0 || target != "f" {
			t.Errorf("readlink = %q, %v", target, errno)
		}
		_, errno = m.Readlink(ctx, "f")
		wantErrno(t, "readlink a file", errno, syscall.EINVAL)
	})

	t.Run("hard-links", func(t *testing.T) {
		a, errno := m.Link(ctx, "f", "f2")
		mustOK(t, "link", errno)
		b, _ := m.Stat(ctx, "f")
		if a.Nlink != 2 || a.Ino != b.Ino || b.Nlink != 2 {
			t.Errorf("link %+v, original %+v", a, b)
		}
		_, errno = m.Link(ctx, "f", "f2")
		wantErrno(t, "link over existing", errno, syscall.EEXIST)
		mustOK(t, "unlink link", m.Unlink(ctx, "f2"))
	})

	t.Run("rename", func(t *testing.T) {
		os.WriteFile(filepath.Join(dir, "old"), []byte("new contents"), 0o644)
		os.WriteFile(filepath.Join(dir, "target"), []byte("replaced"), 0o644)
		mustOK(t, "rename over existing", m.Rename(ctx, "old", "target", 0))
		if b, _ := os.ReadFile(filepath.Join(dir, "target")); string(b) != "new contents" {
			t.Errorf("target has %q", b)
		}
		os.WriteFile(filepath.Join(dir, "a"), []byte("A"), 0o644)
		wantErrno(t, "RENAME_NOREPLACE", m.Rename(ctx, "a", "target", unix.RENAME_NOREPLACE), syscall.EEXIST)
		mustOK(t, "RENAME_EXCHANGE", m.Rename(ctx, "a", "target", unix.RENAME_EXCHANGE))
		if b, _ := os.ReadFile(filepath.Join(dir, "a")); string(b) != "new contents" {
			t.Errorf("a has %q", b)
		}
		wantErrno(t, "RENAME_WHITEOUT", m.Rename(ctx, "a", "b", unix.RENAME_WHITEOUT), syscall.EINVAL)
		os.Mkdir(filepath.Join(dir, "sub"), 0o755)
		mustOK(t, "rename into subdirectory", m.Rename(ctx, "a", "sub/a", 0))
		wantErrno(t, "rename missing", m.Rename(ctx, "a", "b", 0), syscall.ENOENT)
	})

	t.Run("statfs", func(t *testing.T) {
		st, errno := m.Statfs(ctx)
		mustOK(t, "statfs", errno)
		var want unix.Statfs_t
		unix.Statfs(dir, &want)
		if st.Blocks != want.Blocks || st.Bsize != uint32(want.Bsize) || st.Namelen == 0 {
			t.Errorf("statfs %+v, host %+v", st, want)
		}
	})

	t.Run("large-and-sparse", func(t *testing.T) {
		h, _, errno := m.Create(ctx, "big", unix.O_RDWR, 0o644)
		mustOK(t, "create", errno)
		defer m.Release(ctx, h)
		const off = 5 << 30 // past 4 GiB: offsets are 64-bit end to end
		_, errno = m.Write(ctx, h, off, []byte("tail"))
		mustOK(t, "write at 5 GiB", errno)
		a, _ := m.Fstat(ctx, h)
		if a.Size != off+4 || a.Blocks*512 > 1<<20 {
			t.Errorf("size %d, %d blocks: not sparse?", a.Size, a.Blocks)
		}
		data, errno := m.Read(ctx, h, off-2, 10)
		if errno != 0 || !bytes.Equal(data, []byte("\x00\x00tail")) {
			t.Errorf("read %q, %v", data, errno)
		}
		data, _ = m.Read(ctx, h, 1<<30, 4)
		if !bytes.Equal(data, make([]byte, 4)) {
			t.Errorf("hole reads %q", data)
		}
		dataAt, errno := m.Lseek(ctx, h, 0, unix.SEEK_DATA)
		mustOK(t, "SEEK_DATA", errno)
		if dataAt > off || dataAt < off-1<<20 {
			t.Errorf("SEEK_DATA = %d", dataAt)
		}
		hole, errno := m.Lseek(ctx, h, 0, unix.SEEK_HOLE)
		if errno != 0 || hole != 0 {
			t.Errorf("SEEK_HOLE = %d, %v", hole, errno)
		}
		_, errno = m.Lseek(ctx, h, 0, unix.SEEK_END)
		wantErrno(t, "SEEK_END", errno, syscall.EINVAL)
		mustOK(t, "fallocate", m.Fallocate(ctx, h, 0, 4096, 0))
		mustOK(t, "punch hole", m.Fallocate(ctx, h, 0, 4096, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE))
		mustOK(t, "truncate", func() syscall.Errno {
			_, e := m.Setattr(ctx, "", h, fsproto.SetattrIn{Flags: fsproto.SetSize, Size: 0})
			return e
		}())
	})

	t.Run("open-flags", func(t *testing.T) {
		os.WriteFile(filepath.Join(dir, "g"), []byte("0123456789"), 0o644)
		h, _, errno := m.Open(ctx, "g", unix.O_WRONLY|unix.O_APPEND)
		mustOK(t, "open O_APPEND", errno)
		// O_APPEND is the guest kernel's business: the offset is honoured.
		_, errno = m.Write(ctx, h, 2, []byte("ab"))
		mustOK(t, "write", errno)
		m.Release(ctx, h)
		if b, _ := os.ReadFile(filepath.Join(dir, "g")); string(b) != "01ab456789" {
			t.Errorf("g = %q", b)
		}
		h, a, errno := m.Open(ctx, "g", unix.O_RDWR|unix.O_TRUNC)
		mustOK(t, "open O_TRUNC", errno)
		m.Release(ctx, h)
		if a.Size != 0 {
			t.Errorf("size after O_TRUNC %d", a.Size)
		}
		_, _, errno = m.Open(ctx, "g", unix.O_ACCMODE)
		wantErrno(t, "O_ACCMODE", errno, syscall.EINVAL)
		_, _, errno = m.Open(ctx, "", unix.O_RDONLY)
		wantErrno(t, "open root as a file", errno, syscall.EISDIR)
		_, _, errno = m.Open(ctx, "sl", unix.O_RDONLY)
		wantErrno(t, "open a symlink", errno, syscall.ELOOP)
	})

	t.Run("unlinked-open-file", func(t *testing.T) {
		h, _, errno := m.Create(ctx, "tmp", unix.O_RDWR, 0o600)
		mustOK(t, "create", errno)
		mustOK(t, "unlink", m.Unlink(ctx, "tmp"))
		_, errno = m.Write(ctx, h, 0, []byte("still here"))
		mustOK(t, "write after unlink", errno)
		data, _ := m.Read(ctx, h, 0, 100)
		a, _ := m.Fstat(ctx, h)
		if string(data) != "still here" || a.Nlink != 0 {
			t.Errorf("read %q, nlink %d", data, a.Nlink)
		}
		m.Release(ctx, h)
	})

	t.Run("bad-handles", func(t *testing.T) {
		_, errno := m.Read(ctx, 12345, 0, 1)
		wantErrno(t, "unknown handle", errno, syscall.ESTALE)
		_, errno = m.C.Call(ctx, &fsproto.Request{Op: fsproto.OpStat, Mount: "nope"})
		wantErrno(t, "unknown mount", errno, syscall.ENODEV)
	})
}

func unixUmask() int {
	old := unix.Umask(0)
	unix.Umask(old)
	return old
}

// TestReaddirLarge lists 10,000 entries in pages, as the guest does, and
// checks that cookies resume and restart a listing.
func TestReaddirLarge(t *testing.T) {
	dir, spec := hostDir(t, "/w", true)
	const n = 10000
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprintf("file-%05d-%s", i, bytes.Repeat([]byte{'x'}, i%200))
		if err := os.WriteFile(filepath.Join(dir, want[i]), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sort.Strings(want)
	_, c := serve(t, spec)
	m := fsproto.Mount{C: c, ID: spec.ID}
	ctx := ctxT(t)

	list := func(pageSize int) ([]fsproto.DirEntry, int) {
		h, errno := m.Opendir(ctx, "")
		mustOK(t, "opendir", errno)
		defer m.Release(ctx, h)
		var all []fsproto.DirEntry
		cookie, pages := uint64(0), 0
		for {
			page, eof, errno := m.Readdir(ctx, h, cookie, pageSize)
			mustOK(t, "readdir", errno)
			pages++
			all = append(all, page...)
			if len(page) > 0 {
				cookie = page[len(page)-1].Next
			}
			if eof {
				return all, pages
			}
			if len(page) == 0 {
				t.Fatal("empty page before EOF")
			}
		}
	}
	for _, pageSize := range []int{100, fsproto.MaxEntries} {
		all, pages := list(pageSize)
		var names []string
		for _, e := range all {
			names = append(names, e.Name)
			if e.Attr.Mode&unix.S_IFMT != unix.S_IFREG || e.Attr.Ino == 0 {
				t.Fatalf("entry %+v", e)
			}
		}
		sort.Strings(names)
		if len(names) != n || fmt.Sprint(names) != fmt.Sprint(want) {
			t.Fatalf("page size %d: listed %d names, want %d", pageSize, len(names), n)
		}
		t.Logf("page size %d: %d pages", pageSize, pages)
	}

	// Resume from a cookie in the middle, after reading further (seekdir).
	h, _ := m.Opendir(ctx, "")
	defer m.Release(ctx, h)
	first, _, _ := m.Readdir(ctx, h, 0, 500)
	m.Readdir(ctx, h, first[len(first)-1].Next, 500)
	again, _, errno := m.Readdir(ctx, h, first[99].Next, 1)
	mustOK(t, "seekdir", errno)
	if len(again) != 1 || again[0].Name != first[100].Name {
		t.Fatalf("after seekdir got %v, want %s", again, first[100].Name)
	}
}

// TestConcurrent runs many readers and writers on one file and on many
// files at once.
func TestConcurrent(t *testing.T) {
	dir, spec := hostDir(t, "/w", false)
	_, c := serve(t, spec)
	m := fsproto.Mount{C: c, ID: spec.ID}
	ctx := ctxT(t)
	h, _, errno := m.Create(ctx, "shared", unix.O_RDWR, 0o644)
	mustOK(t, "create", errno)
	const workers, chunk = 16, 64 << 10
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			block := bytes.Repeat([]byte{byte('a' + i)}, chunk)
			for round := range 8 {
				if _, errno := m.Write(ctx, h, uint64(i*chunk), block); errno != 0 {
					t.Error(errno)
					return
				}
				data, errno := m.Read(ctx, h, uint64(i*chunk), chunk)
				if errno != 0 || !bytes.Equal(data, block) {
					t.Errorf("worker %d round %d: read back %d bytes, %v", i, round, len(data), errno)
					return
				}
				name := fmt.Sprintf("w%d-%d", i, round)
				fh, _, errno := m.Create(ctx, name, unix.O_WRONLY|unix.O_EXCL, 0o644)
				if errno != 0 {
					t.Error(errno)
					return
				}
				m.Write(ctx, fh, 0, []byte(name))
				m.Release(ctx, fh)
				if _, errno := m.Stat(ctx, name); errno != 0 {
					t.Error(errno)
				}
				if errno := m.Unlink(ctx, name); errno != 0 {
					t.Error(errno)
				}
			}
		}()
	}
	wg.Wait()
	m.Release(ctx, h)
	b, _ := os.ReadFile(filepath.Join(dir, "shared"))
	for i := range workers {
		if !bytes.Equal(b[i*chunk:(i+1)*chunk], bytes.Repeat([]byte{byte('a' + i)}, chunk)) {
			t.Errorf("chunk %d corrupted", i)
		}
	}
}
