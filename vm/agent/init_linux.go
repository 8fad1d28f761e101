package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/gondolin/gondolin/internal/kmod"
	"github.com/gondolin/gondolin/vm/agentproto"
	"golang.org/x/sys/unix"
)

const modulesDir = "/lib/modules"

// Init turns a freshly booted kernel into a usable system. It runs only as
// PID 1: it mounts the basics, loads the modules the VM's devices need,
// switches to the root disk when there is one, and brings up loopback.
func Init(logger *log.Logger) error {
	start := time.Now()
	if err := mountAll([]mountSpec{
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	}); err != nil {
		return err
	}
	params := kernelParams() // needs /proc
	debug := params[agentproto.ParamDebug] != ""
	step := func(what string) {
		if debug {
			logger.Printf("%-12s %v", what, time.Since(start).Round(time.Millisecond))
		}
	}
	step("mounts")
	if err := LoadDeviceModules(); err != nil {
		logger.Printf("modules: %v", err)
	}
	step("modules")
	holdFUSEModules()
	if root := params[agentproto.ParamRoot]; root != "" {
		fstype := params[agentproto.ParamRootFSType]
		if fstype == "" {
			fstype = "ext4"
		}
		if err := switchRoot(root, fstype); err != nil {
			return fmt.Errorf("switch to root disk %s: %w", root, err)
		}
		step("switchroot")
	}
	if err := mountAll([]mountSpec{
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0620,ptmxmode=0666,gid=5"},
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	}); err != nil {
		return err
	}
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		os.Symlink(target, "/dev/"+name)
	}
	if err := unix.Sethostname([]byte("gondolin")); err != nil {
		logger.Printf("hostname: %v", err)
	}
	if err := linkUp("lo"); err != nil {
		logger.Printf("loopback: %v", err)
	}
	step("ready")
	return nil
}

func kernelParams() map[string]string {
	params := map[string]string{}
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return params
	}
	for _, f := range strings.Fields(string(b)) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			v = "1"
		}
		params[k] = v
	}
	return params
}

type mountSpec struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

func mountAll(specs []mountSpec) error {
	for _, m := range specs {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil && err != unix.EBUSY {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	return nil
}

var (
	modMu     sync.Mutex
	modIndex  *kmod.Index
	modLoaded = map[string]bool{}
)

func loadIndex() (*kmod.Index, error) {
	if modIndex != nil {
		return modIndex, nil
	}
	b, err := os.ReadFile(filepath.Join(modulesDir, kmod.IndexFile))
	if err != nil {
		return nil, err
	}
	var ix kmod.Index
	if err := json.Unmarshal(b, &ix); err != nil {
		return nil, fmt.Errorf("%s: %w", kmod.IndexFile, err)
	}
	modIndex = &ix
	return modIndex, nil
}

// LoadDeviceModules loads the modules that the VM's devices need, as udev
// would at boot: it matches every device's modalias against the image's
// module index, loads the matches, and repeats, because a bus driver
// (virtio_mmio) reveals new devices (the console, the disk).
func LoadDeviceModules() error {
	modMu.Lock()
	defer modMu.Unlock()
	ix, err := loadIndex()
	if errors.Is(err, fs.ErrNotExist) {
		return nil // an image without modules: everything is built in
	}
	if err != nil {
		return err
	}
	for round := 0; round < 5; round++ {
		aliases, _ := filepath.Glob("/sys/bus/*/devices/*/modalias")
		var want []string
		for _, path := range aliases {
			b, err := os.ReadFile(path)
			if err != nil {
				continue
			}
			for _, name := range ix.Match(strings.TrimSpace(string(b))) {
				if !modLoaded[name] {
					want = append(want, name)
				}
			}
		}
		if len(want) == 0 {
			return nil
		}
		if err := loadLocked(ix, want...); err != nil {
			return err
		}
	}
	return nil
}

// LoadModules loads modules by name with their dependencies (for example
// fuse when a mount needs it).
func LoadModules(names ...string) error {
	modMu.Lock()
	defer modMu.Unlock()
	ix, err := loadIndex()
	if err != nil {
		return err
	}
	return loadLocked(ix, names...)
}

func loadLocked(ix *kmod.Index, names ...string) error {
	order, err := ix.LoadOrder(names...)
	if err != nil {
		return err
	}
	for _, name := range order {
		if modLoaded[name] {
			continue
		}
		mod, _ := ix.Find(name)
		if err := finitModule(filepath.Join(modulesDir, ix.Release, mod.Path)); err != nil && err != unix.EEXIST {
			return fmt.Errorf("load %s: %w", name, err)
		}
		modLoaded[name] = true
	}
	return nil
}

func finitModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.FinitModule(int(f.Fd()), "", 0)
}

// switchRoot mounts dev and makes it the root, freeing the initramfs as
// busybox's switch_root does: the agent keeps running from memory.
func switchRoot(dev, fstype string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(dev); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear", dev)
		}
		time.Sleep(5 * time.Millisecond)
	}
	const newRoot = "/newroot"
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(dev, newRoot, fstype, unix.MS_NOATIME, ""); err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	keep := map[string]bool{"dev": true, "proc": true, "sys": true, "newroot": true}
	if entries, err := os.ReadDir("/"); err == nil {
		for _, e := range entries {
			if !keep[e.Name()] {
				os.RemoveAll("/" + e.Name())
			}
		}
	}
	for _, m := range []string{"/dev", "/proc", "/sys"} {
		os.MkdirAll(newRoot+m, 0o755)
		if err := unix.Mount(m, newRoot+m, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s: %w", m, err)
		}
	}
	if err := unix.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return err
	}
	return unix.Chdir("/")
}

func linkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// OpenPort returns an opener for the virtio-serial port called name. The
// port is found by name in sysfs (there is no udev to make symlinks) and
// opened afresh for every host connection, which also unblocks writes left
// pending by a host that went away.
func OpenPort(name string) func() (io.ReadWriteCloser, error) {
	return func() (io.ReadWriteCloser, error) {
		dirs, _ := filepath.Glob("/sys/class/virtio-ports/*")
		for _, dir := range dirs {
			b, err := os.ReadFile(filepath.Join(dir, "name"))
			if err != nil || strings.TrimSpace(string(b)) != name {
				continue
			}
			return os.OpenFile("/dev/"+filepath.Base(dir), os.O_RDWR, 0)
		}
		// The console module may still be probing; make sure it is loaded.
		LoadDeviceModules()
		return nil, fmt.Errorf("virtio port %s not found", name)
	}
}
