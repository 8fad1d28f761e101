package mounts

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gondolin/gondolin/mounts/fsproto"
	"golang.org/x/sys/unix"
)

// outside makes a directory next to the mount with a secret file, and
// returns it with a function that fails the test if it changed.
func outside(t *testing.T) (string, func()) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte("OUTSIDE"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "sub"), 0o700)
	before := treeHash(t, dir)
	return dir, func() {
		t.Helper()
		if after := treeHash(t, dir); after != before {
			t.Errorf("the directory outside the mount changed")
		}
	}
}

// TestConfinement tries every way out of the root that a guest could
// send: dot-dot paths, absolute paths, symlinks to files and directories
// outside (absolute and relative), and ops on symlinks that must act on
// the link, not its target.
func TestConfinement(t *testing.T) {
	bothWalks(t, testConfinement)
}

func testConfinement(t *testing.T) {
	out, unchanged := outside(t)
	defer unchanged()
	dir, spec := hostDir(t, "/w", false)
	rel, _ := filepath.Rel(dir, out)
	for name, target := range map[string]string{
		"passwd":    "/etc/passwd",
		"abs-file":  filepath.Join(out, "secret"),
		"abs-dir":   out,
		"rel-file":  filepath.Join(rel, "secret"),
		"rel-dir":   rel,
		"dotdot":    "..",
		"self-loop": "self-loop",
	} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	os.Mkdir(filepath.Join(dir, "in"), 0o755)
	os.WriteFile(filepath.Join(dir, "in", "file"), []byte("inside"), 0o644)
	_, c := serve(t, spec)
	m := fsproto.Mount{C: c, ID: spec.ID}
	ctx := ctxT(t)

	badPaths := []string{
		"..", "../secret", "in/../..", "in/../../secret", ".", "./in", "in/.",
		"/etc/passwd", "/", "in//file", "in/", "a\x00b",
		rel + "/secret",
	}
	for _, p := range badPaths {
		if _, errno := m.Stat(ctx, p); errno == 0 {
			t.Errorf("stat %q succeeded", p)
		}
		if _, _, errno := m.Open(ctx, p, unix.O_RDONLY); errno == 0 {
			t.Errorf("open %q succeeded", p)
		}
		for _, q := range []string{p, p + "/x"} {
			if _, _, errno := m.Create(ctx, q, unix.O_RDWR, 0o644); errno == 0 {
				t.Errorf("create %q succeeded", q)
			}
		}
		if _, errno := m.Opendir(ctx, p); errno == 0 {
			t.Errorf("opendir %q succeeded", p)
		}
	}

	for _, link := range []string{"passwd", "abs-file", "rel-file", "abs-dir", "rel-dir", "dotdot", "self-loop"} {
		t.Run(link, func(t *testing.T) {
			// The link itself is visible and readable as a link.
			a, errno := m.Stat(ctx, link)
			mustOK(t, "lstat", errno)
			if a.Mode&unix.S_IFMT != unix.S_IFLNK {
				t.Errorf("stat followed the link: mode %o", a.Mode)
			}
			if _, errno := m.Readlink(ctx, link); errno != 0 {
				t.Errorf("readlink: %v", errno)
			}
			// Nothing goes through it.
			for _, p := range []string{link, link + "/secret", link + "/sub/x", link + "/passwd"} {
				if h, _, errno := m.Open(ctx, p, unix.O_RDONLY); errno == 0 {
					data, _ := m.Read(ctx, h, 0, 100)
					t.Errorf("open %s succeeded; read %q", p, data)
				}
				if a, errno := m.Stat(ctx, p); errno == 0 && p != link {
					t.Errorf("stat %s succeeded: %+v", p, a)
				}
				if _, _, errno := m.Create(ctx, p+".new", unix.O_RDWR, 0o644); errno == 0 && p != link {
					t.Errorf("create %s.new succeeded", p)
				}
				if _, errno := m.Mkdir(ctx, p+".d", 0o755); errno == 0 && p != link {
					t.Errorf("mkdir %s.d succeeded", p)
				}
			}
			_, _, errno = m.Open(ctx, link, unix.O_WRONLY|unix.O_TRUNC)
			wantErrno(t, "open for writing", errno, syscall.ELOOP)
			_, errno = m.Setattr(ctx, link, 0, fsproto.SetattrIn{Flags: fsproto.SetSize})
			wantErrno(t, "truncate", errno, syscall.ELOOP)
			_, errno = m.Setattr(ctx, link, 0, fsproto.SetattrIn{Flags: fsproto.SetMode, Mode: 0o777})
			wantErrno(t, "chmod", errno, syscall.EOPNOTSUPP)
			// utimes changes the link's own times.
			a, errno = m.Setattr(ctx, link, 0, fsproto.SetattrIn{Flags: fsproto.SetMtime, Mtime: fsproto.Time{Sec: 12345}})
			mustOK(t, "utimes", errno)
			if a.Mode&unix.S_IFMT != unix.S_IFLNK || a.Mtime.Sec != 12345 {
				t.Errorf("utimes on a link: %+v", a)
			}
			// A hard link to a symlink links the symlink.
			a, errno = m.Link(ctx, link, link+".hard")
			mustOK(t, "link", errno)
			if a.Mode&unix.S_IFMT != unix.S_IFLNK {
				t.Errorf("link followed the symlink: mode %o", a.Mode)
			}
			mustOK(t, "rename", m.Rename(ctx, link+".hard", link+".moved", 0))
			mustOK(t, "unlink", m.Unlink(ctx, link+".moved"))
		})
	}
	if b, _ := os.ReadFile("/etc/passwd"); len(b) == 0 {
		t.Error("/etc/passwd is empty: did a test truncate it?")
	}
}

// TestSwapRace swaps a directory for a symlink that leaves the root (and
// a file for a symlink to a file outside) while other goroutines keep
// opening, reading, listing, creating and changing through those names.
// No operation may ever reach the outside.
func TestSwapRace(t *testing.T) {
	bothWalks(t, func(t *testing.T) { testSwapRace(t, time.Second) })
}

func testSwapRace(t *testing.T, d time.Duration) {
	out, unchanged := outside(t)
	defer unchanged()
	var outIno uint64
	{
		var st unix.Stat_t
		unix.Stat(filepath.Join(out, "secret"), &st)
		outIno = st.Ino
	}
	dir, spec := hostDir(t, "/w", false)
	rel, _ := filepath.Rel(dir, out)
	// "d" flips between a real directory holding "secret" and a symlink
	// to the outside directory; "f" between a file and a symlink to the
	// outside secret.
	real := filepath.Join(dir, "real")
	os.Mkdir(real, 0o755)
	os.WriteFile(filepath.Join(real, "secret"), []byte("inside"), 0o644)
	os.WriteFile(filepath.Join(dir, "f.file"), []byte("inside"), 0o644)
	os.Rename(real, filepath.Join(dir, "d"))
	os.Link(filepath.Join(dir, "f.file"), filepath.Join(dir, "f"))

	_, c := serve(t, spec)
	m := fsproto.Mount{C: c, ID: spec.ID}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	bg := context.Background()

	var wg sync.WaitGroup
	wg.Add(1)
	var swaps atomic.Int64
	go func() { // the swapper
		defer wg.Done()
		dPath, fPath, park := filepath.Join(dir, "d"), filepath.Join(dir, "f"), filepath.Join(dir, "parked")
		targets := []string{out, rel}
		for i := 0; ctx.Err() == nil; i++ {
			// "d": directory -> symlink out of the root -> directory
			os.Rename(dPath, park)
			os.Symlink(targets[i%2], dPath)
			os.Remove(dPath)
			os.Rename(park, dPath)
			// "f": atomically a symlink to the outside secret, then a file
			os.Symlink(filepath.Join(out, "secret"), fPath+".tmp")
			os.Rename(fPath+".tmp", fPath)
			os.Link(filepath.Join(dir, "f.file"), fPath+".tmp")
			os.Rename(fPath+".tmp", fPath)
			swaps.Add(1)
		}
	}()

	var breaches, ops atomic.Int64
	breach := func(format string, args ...any) {
		breaches.Add(1)
		t.Errorf(format, args...)
	}
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				ops.Add(1)
				for _, p := range []string{"d/secret", "f"} {
					if h, _, errno := m.Open(bg, p, unix.O_RDONLY); errno == 0 {
						data, _ := m.Read(bg, h, 0, 100)
						if bytes.Contains(data, []byte("OUTSIDE")) {
							breach("open %s read the outside secret", p)
						}
						m.Release(bg, h)
					}
					if a, errno := m.Stat(bg, p); errno == 0 && a.Ino == outIno {
						breach("stat %s reached the outside inode", p)
					}
				}
				switch (w + i) % 4 {
				case 0:
					if h, errno := m.Opendir(bg, "d"); errno == 0 {
						entries, _, _ := m.Readdir(bg, h, 0, 100)
						for _, e := range entries {
							if e.Name == "sub" || e.Attr.Ino == outIno {
								breach("listing d showed the outside directory")
							}
						}
						m.Release(bg, h)
					}
				case 1:
					if h, _, errno := m.Create(bg, fmt.Sprintf("d/new-%d-%d", w, i), unix.O_RDWR|unix.O_EXCL, 0o644); errno == 0 {
						m.Release(bg, h)
					}
				case 2:
					m.Setattr(bg, "d/secret", 0, fsproto.SetattrIn{Flags: fsproto.SetMode | fsproto.SetMtime, Mode: 0o666, Mtime: fsproto.Time{Sec: 1}})
					m.Setattr(bg, "f", 0, fsproto.SetattrIn{Flags: fsproto.SetMode | fsproto.SetSize | fsproto.SetMtime, Mode: 0o666, Mtime: fsproto.Time{Sec: 1}})
				case 3:
					m.Mkdir(bg, fmt.Sprintf("d/dir-%d-%d", w, i), 0o755)
					m.Rename(bg, "d/secret", "d/secret2", 0)
					m.Rename(bg, "d/secret2", "d/secret", 0)
					m.Unlink(bg, "d/nonexistent")
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d swaps, %d rounds of operations, %d breaches", swaps.Load(), ops.Load(), breaches.Load())
	if swaps.Load() < 10 || ops.Load() < 10 {
		t.Errorf("the race did not run: %d swaps, %d rounds", swaps.Load(), ops.Load())
	}
}

// TestReadOnly tries every mutating operation on a read-only mount: each
// gets EROFS, and the host tree stays byte-identical.
func TestReadOnly(t *testing.T) {
	dir, spec := hostDir(t, "/w", true)
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	os.WriteFile(filepath.Join(dir, "d", "f"), []byte("data"), 0o644)
	os.WriteFile(filepath.Join(dir, "empty"), nil, 0o644)
	os.Symlink("d/f", filepath.Join(dir, "link"))
	os.Mkdir(filepath.Join(dir, "emptydir"), 0o755)
	before := treeHash(t, dir)

	_, c := serve(t, spec)
	m := fsproto.Mount{C: c, ID: spec.ID}
	ctx := ctxT(t)
	erofs := func(what string, errno syscall.Errno) { t.Helper(); wantErrno(t, what, errno, syscall.EROFS) }

	for _, flags := range []uint32{unix.O_WRONLY, unix.O_RDWR, unix.O_RDONLY | unix.O_TRUNC, unix.O_RDONLY | unix.O_CREAT} {
		_, _, errno := m.Open(ctx, "d/f", flags)
		erofs(fmt.Sprintf("open flags %#x", flags), errno)
	}
	_, _, errno := m.Create(ctx, "new", unix.O_WRONLY, 0o644)
	erofs("create", errno)
	_, _, errno = m.Create(ctx, "d/f", unix.O_RDONLY, 0o644)
	erofs("create existing", errno)
	for _, in := range []fsproto.SetattrIn{
		{Flags: fsproto.SetMode, Mode: 0o777},
		{Flags: fsproto.SetSize},
		{Flags: fsproto.SetAtime | fsproto.SetAtimeNow},
		{Flags: fsproto.SetMtime, Mtime: fsproto.Time{Sec: 1}},
	} {
		_, errno = m.Setattr(ctx, "d/f", 0, in)
		erofs(fmt.Sprintf("setattr %#x", in.Flags), errno)
	}
	_, errno = m.Mkdir(ctx, "newdir", 0o755)
	erofs("mkdir", errno)
	_, errno = m.Mknod(ctx, "fifo", unix.S_IFIFO|0o644, 0)
	erofs("mknod", errno)
	_, errno = m.Symlink(ctx, "x", "newlink")
	erofs("symlink", errno)
	_, errno = m.Link(ctx, "d/f", "hard")
	erofs("link", errno)
	erofs("unlink", m.Unlink(ctx, "d/f"))
	erofs("unlink link", m.Unlink(ctx, "link"))
	erofs("rmdir", m.Rmdir(ctx, "emptydir"))
	erofs("rename", m.Rename(ctx, "d/f", "g", 0))
	erofs("rename exchange", m.Rename(ctx, "d", "emptydir", unix.RENAME_EXCHANGE))

	// Reading works, and a read-only handle cannot be turned into a writer.
	h, _, errno := m.Open(ctx, "d/f", unix.O_RDONLY)
	mustOK(t, "open read-only", errno)
	data, errno := m.Read(ctx, h, 0, 100)
	if errno != 0 || string(data) != "data" {
		t.Errorf("read %q, %v", data, errno)
	}
	_, errno = m.Write(ctx, h, 0, []byte("XXXX"))
	erofs("write", errno)
	_, errno = m.Setattr(ctx, "", h, fsproto.SetattrIn{Flags: fsproto.SetSize})
	erofs("ftruncate", errno)
	erofs("fallocate", m.Fallocate(ctx, h, 0, 1<<20, 0))
	mustOK(t, "fsync", m.Fsync(ctx, h, false))
	m.Release(ctx, h)
	dh, errno := m.Opendir(ctx, "")
	mustOK(t, "opendir", errno)
	entries, _, errno := m.Readdir(ctx, dh, 0, 100)
	if errno != 0 || len(entries) != 4 {
		t.Errorf("readdir: %d entries, %v", len(entries), errno)
	}
	m.Release(ctx, dh)

	if after := treeHash(t, dir); after != before {
		t.Fatal("the read-only tree changed")
	}
}
