package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"log"
	"os"
	"path"
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

// ensureFUSE makes /dev/fuse usable: the fuse module is loaded on the
// first host mount only (loading costs 100-400 ms under TCG), and
// devtmpfs creates the device node when the module registers it.
func ensureFUSE() error {
	const dev = "/dev/fuse"
	if _, err := os.Stat(dev); err == nil {
		return nil
	}
	loadErr := LoadModules("fuse") // fails harmlessly when fuse is built in
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
