package mounts

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/gondolin/gondolin/mounts/fsproto"
	"golang.org/x/sys/unix"
)

// TestSpecialFiles: the guest may create only regular files with mknod,
// since a FIFO, socket or device left in the user's tree is a trap for
// host tools (a FIFO named Makefile hangs make). Special files the host
// already has are never opened in a way that blocks or acts on them.
func TestSpecialFiles(t *testing.T) {
	dir, spec := hostDir(t, "/w", false)
	s := startServer(t, spec)
	// do calls the server directly, with a deadline: a blocking open
	// would never answer.
	do := func(t *testing.T, req fsproto.Request) *fsproto.Reply {
		t.Helper()
		req.Mount = spec.ID
		done := make(chan *fsproto.Reply, 1)
		go func() { done <- s.handle(&req) }()
		select {
		case rep := <-done:
			if rep.Handle != 0 {
				s.handles.release(s.mounts[spec.ID], rep.Handle)
			}
			return rep
		case <-time.After(5 * time.Second):
			t.Fatalf("%s %s blocked", req.Op, req.Path)
			return nil
		}
	}

	t.Run("mknod", func(t *testing.T) {
		tests := []struct {
			name  string
			mode  uint32
			dev   uint32
			errno syscall.Errno
		}{
			{"regular", unix.S_IFREG | 0o644, 0, 0},
			{"fifo", unix.S_IFIFO | 0o644, 0, syscall.EPERM},
			{"socket", unix.S_IFSOCK | 0o755, 0, syscall.EPERM},
			{"char-device", unix.S_IFCHR | 0o666, uint32(unix.Mkdev(1, 3)), syscall.EPERM},
			{"block-device", unix.S_IFBLK | 0o666, uint32(unix.Mkdev(8, 0)), syscall.EPERM},
			{"no-type", 0o644, 0, syscall.EPERM},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				name := "mknod-" + tt.name
				rep := do(t, fsproto.Request{Op: fsproto.OpMknod, Path: name, Mode: tt.mode, Dev: tt.dev})
				wantErrno(t, "mknod", rep.Errno, tt.errno)
				st, err := os.Lstat(filepath.Join(dir, name))
				switch {
				case tt.errno != 0 && err == nil:
					t.Errorf("a refused mknod left %v on the host", st.Mode())
				case tt.errno == 0 && (err != nil || !st.Mode().IsRegular()):
					t.Errorf("host has %v, %v; want a regular file", st, err)
				}
			})
		}
	})

	t.Run("host-made", func(t *testing.T) {
		must(t, unix.Mkfifo(filepath.Join(dir, "fifo"), 0o666))
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "sock"), Net: "unix"})
		must(t, err)
		ln.SetUnlinkOnClose(false)
		ln.Close()
		names := []string{"fifo", "sock"}
		if os.Geteuid() == 0 {
			must(t, unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
			names = append(names, "null")
		}
		reqs := []struct {
			what  string
			req   fsproto.Request
			errno syscall.Errno
		}{
			{"open-read", fsproto.Request{Op: fsproto.OpOpen, Flags: unix.O_RDONLY}, syscall.EPERM},
			{"open-write", fsproto.Request{Op: fsproto.OpOpen, Flags: unix.O_WRONLY}, syscall.EPERM},
			{"open-rdwr", fsproto.Request{Op: fsproto.OpOpen, Flags: unix.O_RDWR}, syscall.EPERM},
			{"create", fsproto.Request{Op: fsproto.OpCreate, Flags: unix.O_WRONLY, Mode: 0o644}, syscall.EPERM},
			{"truncate", fsproto.Request{Op: fsproto.OpSetattr, Flags: fsproto.SetSize}, syscall.EPERM},
			{"opendir", fsproto.Request{Op: fsproto.OpOpendir}, syscall.ENOTDIR},
		}
		for _, name := range names {
			for _, r := range reqs {
				t.Run(fmt.Sprintf("%s/%s", name, r.what), func(t *testing.T) {
					r.req.Path = name
					wantErrno(t, r.what, do(t, r.req).Errno, r.errno)
				})
			}
		}
	})
}
