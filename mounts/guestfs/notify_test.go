package guestfs_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"testing"
	"time"
	"unsafe"

	"github.com/gondolin/gondolin/internal/testutil"
	"golang.org/x/sys/unix"
)

// seenWithin is how soon a host change must show in the guest: the host
// reports it, so this is far below the guest's cache lifetime (a minute).
// Generous for a loaded machine; the bench measures the real figure.
const seenWithin = 20 * time.Second

// TestHostChangesShowAtOnce changes the host tree behind the guest's
// caches, each change right after the guest looked, and checks that the
// guest sees it long before its caches would expire.
func TestHostChangesShowAtOnce(t *testing.T) {
	e := mount(t, false)
	os.MkdirAll(e.h("dir/sub"), 0o755)
	os.WriteFile(e.h("dir/file"), []byte("one"), 0o644)
	os.WriteFile(e.h("dir/sub/deep"), []byte("deep"), 0o644)
	os.WriteFile(e.h("gone"), []byte("x"), 0o644)
	os.WriteFile(e.h("old"), []byte("renamed"), 0o644)

	read := func(p string) string { b, _ := os.ReadFile(e.g(p)); return string(b) }
	exists := func(p string) bool { _, err := os.Lstat(e.g(p)); return err == nil }
	within := func(what string, cond func() bool) {
		t.Helper()
		start := time.Now()
		if !testutil.Poll(seenWithin, cond) {
			t.Errorf("%s: not seen in the guest after %v", what, seenWithin)
			return
		}
		t.Logf("%s: seen after %v", what, time.Since(start).Round(time.Millisecond))
	}

	// Look at everything first, so that the guest caches it.
	for _, p := range []string{"dir/file", "dir/sub/deep", "gone", "old"} {
		if !exists(p) {
			t.Fatalf("%s missing in the guest", p)
		}
	}
	if read("dir/file") != "one" {
		t.Fatal("dir/file")
	}

	// Contents rewritten in place (same inode).
	os.WriteFile(e.h("dir/file"), []byte("two, longer"), 0o644)
	within("in-place rewrite", func() bool { return read("dir/file") == "two, longer" })

	// Replaced the way editors save: a new file renamed over it.
	os.WriteFile(e.h("dir/file.tmp"), []byte("three"), 0o644)
	os.Rename(e.h("dir/file.tmp"), e.h("dir/file"))
	within("rename over", func() bool { return read("dir/file") == "three" })

	// Created where the guest cached that nothing was (a negative entry).
	if exists("dir/new") || exists("dir/sub/new") {
		t.Fatal("new files exist before they are made")
	}
	os.WriteFile(e.h("dir/new"), nil, 0o644)
	os.WriteFile(e.h("dir/sub/new"), nil, 0o644)
	within("create", func() bool { return exists("dir/new") && exists("dir/sub/new") })

	// Removed.
	os.Remove(e.h("gone"))
	within("remove", func() bool { return !exists("gone") })

	// Renamed: the old name goes, the new one comes.
	os.Rename(e.h("old"), e.h("new-name"))
	within("rename", func() bool { return !exists("old") && read("new-name") == "renamed" })

	// A directory the guest looked into, renamed on the host; then a file
	// below it changes, and is seen at its new path.
	os.Rename(e.h("dir/sub"), e.h("dir/moved"))
	within("directory rename", func() bool { return !exists("dir/sub") && read("dir/moved/deep") == "deep" })
	os.WriteFile(e.h("dir/moved/deep"), []byte("deeper"), 0o644)
	within("change below a moved directory", func() bool { return read("dir/moved/deep") == "deeper" })

	// Mode changes.
	mode := func() os.FileMode { fi, _ := os.Lstat(e.g("dir/new")); return fi.Mode().Perm() }
	if mode() != 0o644 {
		t.Fatalf("dir/new has mode %v", mode())
	}
	os.Chmod(e.h("dir/new"), 0o600)
	within("chmod", func() bool { return mode() == 0o600 })
}

// TestHostChangeWhileOpen: a file the guest holds open and has read (so
// its pages are cached) changes on the host; the guest's next read
// through the same descriptor sees the new contents.
func TestHostChangeWhileOpen(t *testing.T) {
	e := mount(t, false)
	old := bytes.Repeat([]byte("a"), 256<<10)
	os.WriteFile(e.h("f"), old, 0o644)
	f, err := os.Open(e.g("f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, len(old))
	if _, err := f.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, old) {
		t.Fatalf("first read: %v", err)
	}
	// In place, same size: only the host's report can tell the guest.
	hf, err := os.OpenFile(e.h("f"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	hf.WriteAt(bytes.Repeat([]byte("b"), len(old)), 0)
	hf.Close()
	if !testutil.Poll(seenWithin, func() bool {
		n, err := f.ReadAt(buf, 0)
		return (err == nil || errors.Is(err, fs.ErrClosed)) && n == len(buf) && buf[0] == 'b' && buf[len(buf)-1] == 'b'
	}) {
		t.Errorf("the open file still reads %q... after %v", buf[:4], seenWithin)
	}
}

// TestGuestChangesStayCached checks the other direction: what the guest
// does itself is seen on the host at once, and does not cost the guest
// its cache (the host does not report the guest's own changes back): a
// file the guest wrote and read stays in its page cache.
func TestGuestChangesStayCached(t *testing.T) {
	e := mount(t, false)
	data := bytes.Repeat([]byte("guest"), 200<<10)
	if err := os.WriteFile(e.g("w"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(e.h("w")); !bytes.Equal(b, data) {
		t.Fatal("the host does not see the guest's write")
	}
	os.Mkdir(e.g("d"), 0o755)
	os.WriteFile(e.g("d/x"), []byte("x"), 0o644)
	os.Rename(e.g("d/x"), e.g("d/y"))
	if _, err := os.Stat(e.h("d/y")); err != nil {
		t.Fatal("the host does not see the guest's rename")
	}
	os.Remove(e.g("d/y"))
	if _, err := os.Stat(e.h("d/y")); err == nil {
		t.Fatal("the host still sees a file the guest removed")
	}
	if b, _ := os.ReadFile(e.g("w")); !bytes.Equal(b, data) {
		t.Fatal("the guest reads back something else")
	}
	time.Sleep(200 * time.Millisecond) // any report of the guest's own changes has landed
	if n := e.residentPages(t, "w"); n == 0 {
		t.Error("the guest's own write dropped its page cache (reported back to it)")
	}
}

// residentPages counts the pages of the guest's file p in its page cache.
func (e *env) residentPages(t *testing.T, p string) int {
	t.Helper()
	f, err := os.Open(e.g(p))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	mm, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mm)
	vec := make([]byte, (len(mm)+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&mm[0])), uintptr(len(mm)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}
