package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"log"
	"os"
	"path"
	"path/filepath"
	"sync"
	"time"

	"github.com/gondolin/gondolin/mounts/guestfs"
	"github.com/gondolin/gondolin/vm/agentproto"
	"golang.org/x/sys/unix"
)

// Host mounts are FUSE filesystems served by a daemon: the agent
// re-executed with fsDaemonArg, one process for all mounts and the fs
// port. The agent starts every guest command with vfork, and a child
// that touches a FUSE mount served by its own parent can hang the parent
// for good (see guestfs.RunDaemon); a separate daemon also keeps FUSE
// out of PID 1, whose crash would panic the kernel.
var guestMounts struct {
	mu     sync.Mutex
	daemon *fsDaemon
	byPath map[string]string   // mount point -> what is mounted there
	host   []*agentproto.Mount // host mounts in order, to restore after a daemon crash
}

// fsDaemonArg, as the only argument, makes the agent binary the fs daemon.
const fsDaemonArg = "gondolin-fs-daemon"

// Mount mounts a host directory served on the fs port, or a memory
// filesystem, at a guest path. Asking again for a mount that is already
// in place succeeds, so a host that re-adopted the VM may repeat its
// requests.
func (Guest) Mount(m *agentproto.Mount) error {
	if m.Path == "" || m.Path[0] != '/' || path.Clean(m.Path) != m.Path || m.Path == "/" {
		return fmt.Errorf("mount: bad guest path %q", m.Path)
	}
	what := "memory"
	if !m.Memory {
		if m.ID == "" {
			return errors.New("mount: a host mount needs an ID")
		}
		what = "host:" + m.ID
	}
	if m.ReadOnly {
		what += ":ro"
	}
	guestMounts.mu.Lock()
	defer guestMounts.mu.Unlock()
	if guestMounts.byPath == nil {
		guestMounts.byPath = map[string]string{}
	}
	if prev, ok := guestMounts.byPath[m.Path]; ok {
		if prev == what {
			return nil
		}
		return fmt.Errorf("mount: %s is already a mount point (%s)", m.Path, prev)
	}
	if err := os.MkdirAll(m.Path, 0o755); err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	if m.Memory {
		flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV)
		if m.ReadOnly {
			flags |= unix.MS_RDONLY
		}
		if err := unix.Mount("tmpfs", m.Path, "tmpfs", flags, "mode=0755"); err != nil {
			return fmt.Errorf("mount tmpfs on %s: %w", m.Path, err)
		}
	} else {
		if err := ensureFUSE(); err != nil {
			return fmt.Errorf("mount %s: %w", m.Path, err)
		}
		if err := mountHostLocked(m); err != nil {
			return err
		}
		guestMounts.host = append(guestMounts.host, m)
	}
	guestMounts.byPath[m.Path] = what
	return nil
}

// mountHostLocked has the daemon (started if need be) mount m.
func mountHostLocked(m *agentproto.Mount) error {
	if guestMounts.daemon == nil {
		d, err := startFSDaemon()
		if err != nil {
			return fmt.Errorf("mount %s: start fs daemon: %w", m.Path, err)
		}
		guestMounts.daemon = d
	}
	return guestMounts.daemon.conn.Mount(m.ID, m.Path, m.ReadOnly)
}

type fsDaemon struct {
	conn *guestfs.DaemonConn
	ctrl *os.File
}

var fsLog = log.New(os.Stderr, "gondolin-agent: ", 0)

func startFSDaemon() (*fsDaemon, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ctrl, child := os.NewFile(uintptr(fds[0]), "fs-ctrl"), os.NewFile(uintptr(fds[1]), "fs-ctrl")
	defer child.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		ctrl.Close()
		return nil, err
	}
	defer null.Close()
	attr := &os.ProcAttr{
		Files: []*os.File{null, os.Stderr, os.Stderr, child},
		Sys:   &unix.SysProcAttr{Setsid: true},
	}
	// /proc/self/exe: the agent's own binary, even after Init freed the
	// initramfs it came from.
	p, wait, err := processReaper().start(func() (*os.Process, error) {
		return os.StartProcess("/proc/self/exe", []string{"gondolin-agent", fsDaemonArg}, attr)
	})
	if err != nil {
		ctrl.Close()
		return nil, err
	}
	d := &fsDaemon{conn: guestfs.NewDaemonConn(ctrl), ctrl: ctrl}
	go func() {
		ws := <-wait
		fsLog.Printf("fs daemon (pid %d) exited: %v; restoring host mounts", p.Pid, ws)
		ctrl.Close()
		restoreMounts(d)
	}()
	return d, nil
}

// restoreMounts replaces a daemon that died: its mounts are dead (every
// access fails with ENOTCONN), so they are detached and mounted again by
// a new daemon.
func restoreMounts(dead *fsDaemon) {
	guestMounts.mu.Lock()
	defer guestMounts.mu.Unlock()
	if guestMounts.daemon != dead {
		return
	}
	guestMounts.daemon = nil
	for _, m := range guestMounts.host {
		unix.Unmount(m.Path, unix.MNT_DETACH)
	}
	time.Sleep(100 * time.Millisecond) // a daemon that dies at once must not spin
	for _, m := range guestMounts.host {
		if err := mountHostLocked(m); err != nil {
			fsLog.Printf("restore mount %s: %v", m.Path, err)
		}
	}
}

// IsFSDaemon reports whether the agent binary was started as the fs
// daemon (the agent re-executes itself for that; see Mount).
func IsFSDaemon(args []string) bool {
	return len(args) == 2 && args[1] == fsDaemonArg && os.Getpid() != 1
}

// RunFSDaemon is the whole life of the fs daemon process.
func RunFSDaemon() {
	logger := log.New(os.Stderr, "gondolin-fs: ", 0)
	err := guestfs.RunDaemon(os.NewFile(3, "ctrl"), OpenPort(agentproto.FSPortName), logger)
	if err != nil {
		logger.Print(err)
		os.Exit(1)
	}
	os.Exit(0)
}

// fuseModules holds the files of the fuse module and its dependencies
// open from the moment the agent starts. The module is loaded only on the
// first host mount (loading costs 100-400 ms under TCG), but by then Init
// may have switched to a root disk, which carries no modules, and freed
// the initramfs; an open file outlives that.
var fuseModules []*os.File

// holdFUSEModules opens the fuse module's files while the initramfs is
// still there (Init calls it before switching root).
func holdFUSEModules() {
	modMu.Lock()
	defer modMu.Unlock()
	ix, err := loadIndex()
	if err != nil {
		return
	}
	order, err := ix.LoadOrder("fuse")
	if err != nil {
		return
	}
	for _, name := range order {
		mod, ok := ix.Find(name)
		if !ok {
			break
		}
		f, err := os.Open(filepath.Join(modulesDir, ix.Release, mod.Path))
		if err != nil {
			break
		}
		fuseModules = append(fuseModules, f)
	}
	if len(fuseModules) != len(order) {
		for _, f := range fuseModules {
			f.Close()
		}
		fuseModules = nil
	}
}

// loadFUSE loads the fuse module, from the image's module directory when
// it is still there, else from the files held since boot.
func loadFUSE() error {
	err := LoadModules("fuse")
	if err == nil || len(fuseModules) == 0 {
		return err
	}
	for _, f := range fuseModules {
		if e := unix.FinitModule(int(f.Fd()), "", 0); e != nil && e != unix.EEXIST {
			return fmt.Errorf("load %s: %w", f.Name(), e)
		}
	}
	return nil
}

// ensureFUSE makes /dev/fuse usable: it loads the fuse module on the
// first host mount, and devtmpfs creates the device node when the module
// registers it.
func ensureFUSE() error {
	const dev = "/dev/fuse"
	if _, err := os.Stat(dev); err == nil {
		return nil
	}
	loadErr := loadFUSE() // fails harmlessly when fuse is built in
	for i := 0; i < 50; i++ {
		if _, err := os.Stat(dev); err == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	// No devtmpfs node (yet): make it; fuse is misc device 10:229.
	if err := unix.Mknod(dev, unix.S_IFCHR|0o666, int(unix.Mkdev(10, 229))); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("no %s (loading fuse: %v): %w", dev, loadErr, err)
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("%s unusable (loading fuse: %v): %w", dev, loadErr, err)
	}
	f.Close()
	return nil
}
