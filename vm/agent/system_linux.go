package agent

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/gondolin/gondolin/vm/agentproto"
	"golang.org/x/sys/unix"
)

// Guest is the System of a real guest: it acts on the kernel it runs on.
type Guest struct{}

// Setup applies what the host sends after every handshake. A restored
// snapshot shares its RNG state and clock with every other clone of the
// same template, so both are refreshed here before anything runs.
func (Guest) Setup(s *agentproto.Setup) error {
	if len(s.Seed) > 0 {
		if err := addEntropy(s.Seed); err != nil {
			return fmt.Errorf("seed rng: %w", err)
		}
	}
	if s.UnixNano > 0 {
		ts := unix.NsecToTimespec(s.UnixNano)
		if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
			return fmt.Errorf("set clock: %w", err)
		}
	}
	if s.Hostname != "" {
		if err := unix.Sethostname([]byte(s.Hostname)); err != nil {
			return fmt.Errorf("set hostname: %w", err)
		}
	}
	return nil
}

// addEntropy mixes seed into the kernel pool and credits it, so that
// getrandom() does not block and two clones do not share a stream.
func addEntropy(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	var b bytes.Buffer
	binary.Write(&b, binary.NativeEndian, int32(len(seed)*8))
	binary.Write(&b, binary.NativeEndian, int32(len(seed)))
	b.Write(seed)
	buf := b.Bytes()
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0])))
	if errno != 0 {
		return errno
	}
	// Crediting entropy does not rekey an initialised CRNG until its next
	// scheduled reseed (a minute away): force it, so that two clones of one
	// snapshot diverge from the first random byte after setup.
	const rndReseedCRNG = 0x5207 // _IO('R', 0x07)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndReseedCRNG, 0); errno != 0 {
		return fmt.Errorf("reseed: %w", errno)
	}
	return nil
}

// Info reports the kernel, this boot's ID and the uptime.
func (Guest) Info() agentproto.Info {
	info := agentproto.Info{Version: agentproto.Version}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		info.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		info.BootID = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/uptime"); err == nil {
		f := strings.Fields(string(b))
		if len(f) > 0 {
			info.Uptime, _ = strconv.ParseFloat(f[0], 64)
		}
	}
	return info
}

// Sync flushes every filesystem.
func (Guest) Sync() error {
	unix.Sync()
	return nil
}

// Shutdown powers the VM off; QEMU runs with -no-reboot, so it exits.
func (Guest) Shutdown() error {
	unix.Sync()
	time.Sleep(10 * time.Millisecond)
	return unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

// ioctl numbers from linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int).
const (
	fiFreeze = 0xc0045877
	fiThaw   = 0xc0045878
)

var (
	freezeMu    sync.Mutex
	freezeTimer *time.Timer
)

// Freeze freezes or thaws the root filesystem (FIFREEZE/FITHAW). A freeze
// thaws itself after its timeout.
func (Guest) Freeze(f *agentproto.Freeze) error {
	freezeMu.Lock()
	defer freezeMu.Unlock()
	if f.Thaw {
		if freezeTimer != nil {
			freezeTimer.Stop()
			freezeTimer = nil
		}
		return fsIoctl("/", fiThaw)
	}
	unix.Sync()
	if err := fsIoctl("/", fiFreeze); err != nil {
		return fmt.Errorf("freeze /: %w", err)
	}
	timeout := time.Duration(f.TimeoutMS) * time.Millisecond
	if timeout <= 0 || timeout > time.Minute {
		timeout = 10 * time.Second
	}
	if freezeTimer != nil {
		freezeTimer.Stop()
	}
	freezeTimer = time.AfterFunc(timeout, func() {
		freezeMu.Lock()
		defer freezeMu.Unlock()
		fsIoctl("/", fiThaw)
		freezeTimer = nil
	})
	return nil
}

func fsIoctl(path string, req uint) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), 0)
	if errno != 0 {
		return errno
	}
	return nil
}
