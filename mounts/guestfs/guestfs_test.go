package guestfs_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/testreq"
	"github.com/gondolin/gondolin/internal/testutil"
	"github.com/gondolin/gondolin/mounts"
	"github.com/gondolin/gondolin/mounts/guestfs"
	"golang.org/x/sys/unix"
)

// These tests mount the FUSE filesystem on the host, playing the guest:
// the same code the agent runs, talking to a real Server over a socket
// pair. They need root and /dev/fuse.

func needFUSE(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		testreq.Skipf(t, "needs root to mount FUSE without fusermount")
	}
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		testreq.Skipf(t, "no usable /dev/fuse: %v", err)
	}
	f.Close()
}

// TestMain doubles as the daemon that serves the mount: mount
// re-executes the test binary with envDaemon set, as the agent
// re-executes itself. The daemon runs the host's Server too, so the test
// process, which plays the agent (it runs git, tar and find with vfork,
// and maps files), serves nothing itself: a vfork child or a page fault
// that waits for a FUSE request must never wait for a process that is
// stopped for garbage collection behind it.
func TestMain(m *testing.M) {
	if spec := os.Getenv(envDaemon); spec != "" {
		if err := daemon(spec); err != nil {
			fmt.Fprintln(os.Stderr, "fs daemon:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const (
	envDaemon = "GUESTFS_TEST_DAEMON_SPEC"
	// envRestarted names a file the daemon appends a line to after each
	// restart, so that the test can wait for one to be done.
	envRestarted = "GUESTFS_TEST_RESTARTED"
)

// daemon serves spec with a Server and mounts it as told on fd 3.
// SIGUSR1 replaces the Server with a new one (a supervisor restart).
func daemon(specJSON string) error {
	var spec mounts.Spec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return err
	}
	logger := log.New(io.Discard, "", 0)
	if os.Getenv("GUESTFS_TEST_VERBOSE") != "" {
		logger = log.New(os.Stderr, "fs: ", 0)
	}
	var mu sync.Mutex
	var hostEnd net.Conn
	server, err := mounts.NewServer([]mounts.Spec{spec}, logger)
	if err != nil {
		return err
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
			s, err := mounts.NewServer([]mounts.Spec{spec}, logger)
			if err != nil {
				logger.Print(err)
				continue
			}
			mu.Lock()
			old := server
			server = s
			if hostEnd != nil {
				hostEnd.Close()
			}
			mu.Unlock()
			old.Close()
			// Tell the test the old connection is gone: a request it
			// sends from now on reaches the new Server.
			if f, err := os.OpenFile(os.Getenv(envRestarted), os.O_WRONLY|os.O_APPEND, 0); err == nil {
				f.WriteString("restarted\n")
				f.Close()
			}
		}
	}()
	open := func() (io.ReadWriteCloser, error) {
		g, h, err := socketPair()
		if err != nil {
			return nil, err
		}
		mu.Lock()
		s := server
		hostEnd = h
		mu.Unlock()
		go s.Serve(h)
		return g, nil
	}
	return guestfs.RunDaemon(os.NewFile(3, "ctrl"), open, logger)
}

func socketPair() (net.Conn, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, nil, err
		}
	}
	return conns[0], conns[1], nil
}

type env struct {
	host   string // the host directory
	guest  string // where the FUSE filesystem is mounted
	spec   mounts.Spec
	daemon *os.Process
	// restarted is the daemon's file of restarts (see envRestarted).
	restarted string
}

// restart replaces the host's Server with a new one and drops the
// connection, as a supervisor restart does.
// It returns once the old connection is closed: a request on the wire
// at that moment would fail with EIO if it is not idempotent (as it
// would in a VM), which is not what the tests look at.
func (e *env) restart(t testing.TB) {
	before, _ := os.ReadFile(e.restarted)
	if err := e.daemon.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 20*time.Second, "the fs daemon restarted", func() bool {
		after, _ := os.ReadFile(e.restarted)
		return len(after) > len(before)
	})
}

// mount serves a new host directory and mounts it at a new directory.
func mount(t testing.TB, ro bool) *env {
	t.Helper()
	needFUSE(t)
	host := t.TempDir()
	arg := host + ":/w"
	if ro {
		arg += ":ro"
	}
	spec, err := mounts.ParseHostFS(arg)
	if err != nil {
		t.Fatal(err)
	}
	return mountSpec(t, spec)
}

// mountSpec starts a daemon that serves spec and mounts it.
func mountSpec(t testing.TB, spec mounts.Spec) *env {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	parent, child := os.NewFile(uintptr(fds[0]), "ctrl"), os.NewFile(uintptr(fds[1]), "ctrl")
	specJSON, _ := json.Marshal(spec)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	restarted := filepath.Join(t.TempDir(), "restarted")
	if err := os.WriteFile(restarted, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), envDaemon+"="+string(specJSON), envRestarted+"="+restarted)
	if testing.Verbose() {
		cmd.Env = append(cmd.Env, "GUESTFS_TEST_VERBOSE=1")
	}
	cmd.ExtraFiles = []*os.File{child}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	child.Close()
	guest := t.TempDir()
	t.Cleanup(func() {
		parent.Close() // the daemon unmounts and exits
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("fs daemon: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("fs daemon did not exit")
			cmd.Process.Kill()
			<-done
		}
		syscall.Unmount(guest, syscall.MNT_DETACH) // after a failure
	})
	if err := guestfs.NewDaemonConn(parent).Mount(spec.ID, guest, spec.ReadOnly); err != nil {
		t.Fatal(err)
	}
	return &env{host: spec.HostPath, guest: guest, spec: spec, daemon: cmd.Process, restarted: restarted}
}

func (e *env) g(p string) string { return filepath.Join(e.guest, p) }
func (e *env) h(p string) string { return filepath.Join(e.host, p) }

func run(t testing.TB, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@t", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@t", "HOME="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestFileOps(t *testing.T) {
	e := mount(t, false)

	// create, write, read back on both sides
	if err := os.WriteFile(e.g("a"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(e.h("a")); string(b) != "hello" {
		t.Fatalf("host reads %q", b)
	}
	st, err := os.Stat(e.g("a"))
	if err != nil || st.Size() != 5 || st.Mode().Perm() != 0o644 {
		t.Fatalf("stat %v %v", st, err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	var hst unix.Stat_t
	unix.Stat(e.h("a"), &hst)
	if sys.Uid != 0 || sys.Gid != 0 || sys.Ino != hst.Ino {
		t.Errorf("owner %d:%d ino %d, host ino %d", sys.Uid, sys.Gid, sys.Ino, hst.Ino)
	}

	// O_EXCL
	if _, err := os.OpenFile(e.g("a"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); !errors.Is(err, fs.ErrExist) {
		t.Errorf("O_EXCL on an existing file: %v", err)
	}

	// truncate, chmod, utimes, chown (accepted, changes nothing)
	if err := os.Truncate(e.g("a"), 2); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(e.g("a"), 0o600); err != nil {
		t.Fatal(err)
	}
	when := time.Date(2001, 2, 3, 4, 5, 6, 7000, time.UTC)
	if err := os.Chtimes(e.g("a"), when, when); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(e.g("a"), 1000, 1000); err != nil {
		t.Errorf("chown: %v", err)
	}
	hs, _ := os.Stat(e.h("a"))
	if hs.Size() != 2 || hs.Mode().Perm() != 0o600 || !hs.ModTime().Equal(when) {
		t.Errorf("host sees size %d mode %v mtime %v", hs.Size(), hs.Mode(), hs.ModTime())
	}

	// mkdir, rmdir, unlink, rename over an existing file
	os.MkdirAll(e.g("d/e"), 0o755)
	os.WriteFile(e.g("d/e/f"), []byte("1"), 0o644)
	os.WriteFile(e.g("d/g"), []byte("2"), 0o644)
	if err := os.Rename(e.g("d/e/f"), e.g("d/g")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(e.g("d/g")); string(b) != "1" {
		t.Errorf("rename over: %q", b)
	}
	if err := os.Remove(e.g("d")); err == nil {
		t.Error("removed a non-empty directory")
	}
	if err := os.Rename(e.g("d/e"), e.g("e2")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(e.g("d")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(e.h("d")); !os.IsNotExist(err) {
		t.Errorf("d still on the host: %v", err)
	}

	// hard links and symlinks
	if err := os.Link(e.g("a"), e.g("a2")); err != nil {
		t.Fatal(err)
	}
	s1, _ := os.Stat(e.g("a"))
	s2, _ := os.Stat(e.g("a2"))
	if !os.SameFile(s1, s2) || s1.Sys().(*syscall.Stat_t).Nlink != 2 {
		t.Errorf("hard link is not the same file")
	}
	if err := os.Symlink("a", e.g("sl")); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(e.g("sl")); err != nil || string(b) != "he" {
		t.Errorf("through symlink: %q %v", b, err)
	}
	if target, _ := os.Readlink(e.h("sl")); target != "a" {
		t.Errorf("host link target %q", target)
	}
	// An absolute symlink resolves in the guest's namespace, never the
	// host's: the guest kernel follows it, not the provider.
	os.Symlink("/etc/hostname-of-the-guest", e.g("abs"))
	if _, err := os.ReadFile(e.g("abs")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("absolute symlink: %v", err)
	}

	// sparse file past 4 GiB
	f, err := os.Create(e.g("sparse"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("end"), 5<<30); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := f.ReadAt(buf, 5<<30-2); err != nil || string(buf) != "\x00\x00end" {
		t.Errorf("read at 5 GiB: %q %v", buf, err)
	}
	if off, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_DATA); err != nil || off < 4<<30 {
		t.Errorf("SEEK_DATA = %d, %v", off, err)
	}
	if err := f.Sync(); err != nil {
		t.Errorf("fsync: %v", err)
	}
	f.Close()
	var hs2 unix.Stat_t
	unix.Stat(e.h("sparse"), &hs2)
	if hs2.Size != 5<<30+3 || hs2.Blocks*512 > 1<<20 {
		t.Errorf("host size %d blocks %d", hs2.Size, hs2.Blocks)
	}

	// statfs
	var sfs unix.Statfs_t
	if err := unix.Statfs(e.guest, &sfs); err != nil || sfs.Blocks == 0 {
		t.Errorf("statfs %+v %v", sfs, err)
	}

	// no FIFOs, sockets or device nodes on the host
	if err := unix.Mkfifo(e.g("fifo"), 0o644); err != unix.EPERM {
		t.Errorf("mkfifo: %v, want EPERM", err)
	}
	if err := unix.Mknod(e.g("null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != unix.EPERM {
		t.Errorf("mknod of a device: %v, want EPERM", err)
	}

	// unlinked open file keeps working
	f, _ = os.Create(e.g("tmp"))
	os.Remove(e.g("tmp"))
	f.WriteString("still")
	f.Seek(0, 0)
	if b, _ := io.ReadAll(f); string(b) != "still" {
		t.Errorf("unlinked file reads %q", b)
	}
	f.Close()
}

func TestMmapAndHostChanges(t *testing.T) {
	e := mount(t, false)
	data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	os.WriteFile(e.h("m"), data, 0o644)
	f, err := os.OpenFile(e.g("m"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	mm, err := unix.Mmap(int(f.Fd()), 0, len(data), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mm, data) {
		t.Error("mapped contents differ")
	}
	copy(mm, "MMAP")
	if err := unix.Msync(mm, unix.MS_SYNC); err != nil {
		t.Error(err)
	}
	unix.Munmap(mm)
	f.Close()
	if b, _ := os.ReadFile(e.h("m")); !bytes.HasPrefix(b, []byte("MMAP4567")) {
		t.Errorf("host sees %q", b[:8])
	}

	// A change on the host shows within the cache time.
	if b, _ := os.ReadFile(e.g("m")); len(b) != len(data) {
		t.Fatal("short read")
	}
	os.Mkdir(e.h("d"), 0o755)
	if names, _ := os.ReadDir(e.g("d")); len(names) != 0 {
		t.Fatal("d not empty")
	}
	os.WriteFile(e.h("m"), []byte("changed on the host"), 0o644)
	os.WriteFile(e.h("new"), []byte("new"), 0o644)
	os.WriteFile(e.h("d/listed"), nil, 0o644)
	var b []byte
	var statErr error
	if !testutil.Poll(mounts.CacheTimeout+2*time.Second, func() bool {
		b, _ = os.ReadFile(e.g("m"))
		_, statErr = os.Stat(e.g("new"))
		names, _ := os.ReadDir(e.g("d"))
		return string(b) == "changed on the host" && statErr == nil && len(names) == 1
	}) {
		t.Fatalf("host change not visible after %v: %q, %v", mounts.CacheTimeout+2*time.Second, b[:min(len(b), 20)], statErr)
	}
}

func TestTools(t *testing.T) {
	e := mount(t, false)
	// tar x of a source tree
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for i := range 200 {
		name := fmt.Sprintf("src/pkg%d/file%d.go", i%10, i)
		body := fmt.Sprintf("package pkg%d\n\n// file %d\n", i%10, i)
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), ModTime: time.Unix(1e9, 0), Uid: 1234, Gid: 5678})
		tw.Write([]byte(body))
	}
	tw.WriteHeader(&tar.Header{Name: "src/link", Typeflag: tar.TypeSymlink, Linkname: "pkg0/file0.go"})
	tw.WriteHeader(&tar.Header{Name: "src/hard", Typeflag: tar.TypeLink, Linkname: "src/pkg1/file1.go"})
	tw.Close()
	os.WriteFile(filepath.Join(t.TempDir(), "x"), nil, 0o644)
	archive := filepath.Join(t.TempDir(), "src.tar")
	os.WriteFile(archive, tb.Bytes(), 0o644)
	run(t, e.guest, "tar", "xf", archive) // as root: chowns every file
	if n := strings.Count(run(t, e.host, "find", "src", "-type", "f"), "\n"); n != 201 {
		t.Errorf("host has %d files after tar x, want 201", n)
	}

	// git init && git add -A && git commit
	run(t, e.guest, "git", "init", "-q", "repo")
	repo := filepath.Join(e.guest, "repo")
	run(t, e.guest, "cp", "-a", "src", "repo/")
	run(t, repo, "git", "add", "-A")
	run(t, repo, "git", "commit", "-q", "-m", "import")
	if out := run(t, repo, "git", "status", "--porcelain"); out != "" {
		t.Errorf("git status after commit: %q", out)
	}
	run(t, repo, "git", "fsck", "--no-progress")
	// The host's own git agrees.
	if got := run(t, filepath.Join(e.host, "repo"), "git", "log", "--format=%s"); got != "import\n" {
		t.Errorf("host git log: %q", got)
	}
}

func TestLargeDirectory(t *testing.T) {
	e := mount(t, false)
	const n = 10000
	os.Mkdir(e.h("big"), 0o755)
	for i := range n {
		if err := os.WriteFile(e.h(fmt.Sprintf("big/f%05d", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	entries, err := os.ReadDir(e.g("big"))
	if err != nil || len(entries) != n {
		t.Fatalf("ReadDir: %d entries, %v", len(entries), err)
	}
	names := make([]string, 0, n)
	for _, de := range entries {
		names = append(names, de.Name())
	}
	if !sort.StringsAreSorted(names) || names[0] != "f00000" || names[n-1] != fmt.Sprintf("f%05d", n-1) {
		t.Errorf("names %v ... %v", names[:2], names[n-2:])
	}
	out := run(t, e.guest, "find", "big", "-type", "f")
	if c := strings.Count(out, "\n"); c != n {
		t.Errorf("find found %d files", c)
	}
	out = run(t, e.guest, "ls", "-la", "big")
	if c := strings.Count(out, "\n"); c != n+3 { // total, ., ..
		t.Errorf("ls -la printed %d lines", c)
	}
}

func TestReadOnlyMount(t *testing.T) {
	e := mount(t, true)
	_ = e
	os.WriteFile(e.h("f"), []byte("data"), 0o644)
	os.Mkdir(e.h("d"), 0o755)
	hash := treeHash(t, e.host)
	if b, err := os.ReadFile(e.g("f")); err != nil || string(b) != "data" {
		t.Fatalf("read: %q %v", b, err)
	}
	erofs := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s: %v, want EROFS", what, err)
		}
	}
	erofs("write", os.WriteFile(e.g("f"), []byte("x"), 0o644))
	erofs("create", os.WriteFile(e.g("new"), []byte("x"), 0o644))
	erofs("mkdir", os.Mkdir(e.g("nd"), 0o755))
	erofs("rmdir", os.Remove(e.g("d")))
	erofs("unlink", os.Remove(e.g("f")))
	erofs("rename", os.Rename(e.g("f"), e.g("g")))
	erofs("chmod", os.Chmod(e.g("f"), 0o777))
	erofs("truncate", os.Truncate(e.g("f"), 0))
	erofs("utimes", os.Chtimes(e.g("f"), time.Now(), time.Now()))
	erofs("symlink", os.Symlink("f", e.g("l")))
	erofs("link", os.Link(e.g("f"), e.g("l")))
	if h2 := treeHash(t, e.host); h2 != hash {
		t.Fatal("read-only tree changed")
	}
}

// TestExecFromMount starts programs from the mount and in it, many at a
// time with one P, as a one-vCPU agent does: the vfork children touch the
// mount, which the daemon serves (see RunDaemon).
func TestExecFromMount(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	e := mount(t, false)
	b, err := os.ReadFile(testreq.Tool(t, "busybox"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(e.g("busybox"), b, 0o755)
	done := make(chan string)
	const n = 50
	for range n {
		go func() {
			cmd := exec.Command(e.g("busybox"), "pwd")
			cmd.Dir = e.guest
			out, err := cmd.CombinedOutput()
			runtime.GC()
			done <- fmt.Sprint(strings.TrimSpace(string(out)), err)
		}()
	}
	for range n {
		select {
		case out := <-done:
			if out != e.guest+"<nil>" {
				t.Errorf("exec: %s", out)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("exec from the mount hung")
		}
	}
}

// TestHostRestart replaces the host provider under open files, as a
// supervisor restart does: open files are reopened by path, directory
// listings continue, and new operations work.
func TestHostRestart(t *testing.T) {
	e := mount(t, false)
	os.WriteFile(e.h("f"), []byte("0123456789"), 0o644)
	os.Mkdir(e.h("d"), 0o755)
	for i := range 100 {
		os.WriteFile(e.h(fmt.Sprintf("d/%03d", i)), nil, 0o644)
	}
	f, err := os.OpenFile(e.g("f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := os.Open(e.g("d"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	first, err := d.Readdirnames(10)
	if err != nil || len(first) != 10 {
		t.Fatalf("readdir: %v %v", first, err)
	}
	for round := range 3 {
		e.restart(t)
		buf := make([]byte, 4)
		if _, err := f.ReadAt(buf, int64(round)); err != nil || string(buf) != "0123456789"[round:round+4] {
			t.Fatalf("round %d: read after restart: %q %v", round, buf, err)
		}
		if _, err := f.WriteAt([]byte("X"), 9); err != nil {
			t.Fatalf("round %d: write after restart: %v", round, err)
		}
		if err := os.WriteFile(e.g(fmt.Sprintf("new%d", round)), []byte("n"), 0o644); err != nil {
			t.Fatalf("round %d: create after restart: %v", round, err)
		}
	}
	rest, err := d.Readdirnames(-1)
	if err != nil || len(first)+len(rest) != 100 {
		t.Fatalf("listing across restarts: %d + %d names, %v", len(first), len(rest), err)
	}
	if b, _ := os.ReadFile(e.h("f")); string(b) != "012345678X" {
		t.Errorf("host has %q", b)
	}
}

// TestSHA256 writes 1 GiB through the mount and compares checksums on
// both sides.
func TestSHA256(t *testing.T) {
	if testing.Short() {
		t.Skip("1 GiB file in -short mode")
	}
	e := mount(t, false)
	const size = 1 << 30
	f, err := os.Create(e.g("big"))
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	block := make([]byte, 1<<20)
	start := time.Now()
	for i := range size / len(block) {
		for j := 0; j < len(block); j += 8 {
			block[j] = byte(i)
			block[j+1] = byte(j >> 8)
		}
		h.Write(block)
		if _, err := f.Write(block); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	want := hex.EncodeToString(h.Sum(nil))
	t.Logf("wrote 1 GiB in %v", time.Since(start))
	start = time.Now()
	guest := strings.Fields(run(t, e.guest, "sha256sum", "big"))[0]
	t.Logf("sha256 through the mount in %v", time.Since(start))
	host := strings.Fields(run(t, e.host, "sha256sum", "big"))[0]
	if guest != want || host != want {
		t.Fatalf("sha256: written %s, guest %s, host %s", want, guest, host)
	}
}

// treeHash hashes names, modes, sizes, mtimes and contents under dir.
func treeHash(t testing.TB, dir string) string {
	h := sha256.New()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		st, _ := os.Lstat(p)
		fmt.Fprintf(h, "%s %v %d %d\n", p, st.Mode(), st.Size(), st.ModTime().UnixNano())
		if st.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			h.Write(b)
		}
		return nil
	})
	return hex.EncodeToString(h.Sum(nil))
}
