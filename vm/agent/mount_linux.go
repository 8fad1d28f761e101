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

	"github.com/gondolin/gondolin/mounts/fsproto"
	"github.com/gondolin/gondolin/mounts/guestfs"
	"github.com/gondolin/gondolin/vm/agentproto"
	"golang.org/x/sys/unix"
)

// The agent's mounts: every host mount is a FUSE filesystem served from
// this process, and all of them share one client of the fs port, opened
// on the first host mount.
var guestMounts struct {
	mu     sync.Mutex
	client *fsproto.Client
	byPath map[string]string // mount point -> what is mounted there
}

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
		if guestMounts.client == nil {
			logger := log.New(os.Stderr, "gondolin-agent: ", 0)
			guestMounts.client = fsproto.NewClient(OpenPort(agentproto.FSPortName), logger)
		}
		if _, err := guestfs.Mount(guestMounts.client, m.ID, m.Path, guestfs.Options{ReadOnly: m.ReadOnly}); err != nil {
			return err
		}
	}
	guestMounts.byPath[m.Path] = what
	return nil
}

// fuseModules holds the files of the fuse module and its dependencies
// open from the moment the agent starts. The module is loaded only on the
// first host mount (loading costs 100-400 ms under TCG), but by then Init
// may have switched to a root disk, which carries no modules, and freed
// the initramfs; an open file outlives that.
var fuseModules []*os.File

func init() {
	if os.Getpid() != 1 {
		return // not the VM's init: nothing to keep
	}
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
