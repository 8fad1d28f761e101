package vm

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// Accel is a QEMU accelerator.
type Accel string

const (
	KVM Accel = "kvm"
	TCG Accel = "tcg"
)

// MachineType is a QEMU machine type.
type MachineType string

const (
	MicroVM MachineType = "microvm" // the fast default
	Q35     MachineType = "q35"     // fallback for a QEMU built without microvm
)

// Config describes one VM. The same Config, apart from Dir and Restore,
// must be used to save and to restore a VM's state: QEMU needs the same
// machine and devices on both sides.
type Config struct {
	// Dir is the VM's run directory: sockets, logs, pid file and disk
	// overlay live there. It must exist and be short enough for unix
	// socket paths.
	Dir       string
	Name      string // shown in ps; defaults to the directory's base name
	Kernel    string // PVH vmlinux or bzImage
	Initramfs string
	// Backing is the disk image under the VM's copy-on-write overlay;
	// empty means no disk (the guest runs from the initramfs).
	Backing       string
	BackingFormat string // "qcow2" (default) or "raw"
	CPUs          int
	MemoryMiB     int
	Accel         Accel
	MachineType   MachineType // default MicroVM
	// Restore, when set, is a state file saved by SaveState; the VM
	// resumes from it instead of booting.
	Restore string
	// Detached VMs outlive the process that starts them (sessions);
	// others are killed by the kernel when it dies.
	Detached bool
	// Network gives the VM a virtio-net NIC whose frames QEMU offers on
	// NetSocket (4-byte big-endian length, then the frame) to the host
	// process that owns the VM's network stack.
	Network bool
	// Debug makes the guest log its boot to the console log.
	Debug bool
}

// Defaults for VM shapes.
const (
	DefaultCPUs      = 1
	DefaultMemoryMiB = 256
)

func (c *Config) fill() {
	if c.CPUs <= 0 {
		c.CPUs = DefaultCPUs
	}
	if c.MemoryMiB <= 0 {
		c.MemoryMiB = DefaultMemoryMiB
	}
	if c.Accel == "" {
		c.Accel = TCG
	}
	if c.MachineType == "" {
		c.MachineType = MicroVM
	}
	if c.BackingFormat == "" {
		c.BackingFormat = "qcow2"
	}
	if c.Name == "" {
		c.Name = filepath.Base(c.Dir)
	}
}

func (c *Config) path(name string) string { return filepath.Join(c.Dir, name) }

// Validate checks what can be checked before starting QEMU.
func (c *Config) Validate() error {
	if c.Dir == "" || !filepath.IsAbs(c.Dir) {
		return fmt.Errorf("vm: run directory %q must be an absolute path", c.Dir)
	}
	if p := c.path(layout.AgentSocket); len(p) > layout.MaxSocketPath {
		return fmt.Errorf("vm: socket path %s is longer than %d bytes: use a shorter GONDOLIN_HOME", p, layout.MaxSocketPath)
	}
	if c.Kernel == "" || c.Initramfs == "" {
		return errors.New("vm: kernel and initramfs are required")
	}
	if c.CPUs > 64 {
		return fmt.Errorf("vm: %d CPUs is more than the 64 supported", c.CPUs)
	}
	if c.MemoryMiB < 64 {
		return fmt.Errorf("vm: %d MiB of memory is too little (at least 64)", c.MemoryMiB)
	}
	switch c.Accel {
	case KVM, TCG:
	default:
		return fmt.Errorf("vm: unknown accelerator %q", c.Accel)
	}
	switch c.MachineType {
	case MicroVM, Q35:
	default:
		return fmt.Errorf("vm: unknown machine type %q", c.MachineType)
	}
	return nil
}

// GuestMAC is every guest NIC's address. Each VM's network is private to
// its own host stack, so they need not differ.
const GuestMAC = "52:54:00:67:64:01"

// qemuArgs builds QEMU's command line. The layout is what measured
// fastest on our machines (see PLATFORM.md): microvm with virtio-mmio
// devices, a PVH kernel, no firmware, no default devices.
func qemuArgs(c Config, tscKHz int) []string {
	// microvm has virtio-mmio devices; q35, the fallback for a QEMU
	// without microvm, has the same devices on PCI.
	machine, bus := "microvm,acpi=on,pcie=off,rtc=on", "device"
	if c.MachineType == Q35 {
		machine, bus = "q35,acpi=on", "pci"
	}
	dev := func(kind string) string { return "virtio-" + kind + "-" + bus }
	args := []string{
		"-name", c.Name + ",debug-threads=off",
		// microvm finds virtio-mmio devices through ACPI in the Debian
		// kernel; acpi=off finds nothing.
		"-M", machine,
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-m", strconv.Itoa(c.MemoryMiB) + "M",
		"-smp", strconv.Itoa(c.CPUs),
		// microvm's virtio-mmio is legacy unless told otherwise.
		"-global", "virtio-mmio.force-legacy=false",
		"-kernel", c.Kernel,
		"-initrd", c.Initramfs,
		"-append", kernelCmdline(c, tscKHz),
		// Appending, so that the host can cut the log short while QEMU
		// writes it (see capConsole).
		"-chardev", "file,id=console,append=on,path=" + c.path(layout.ConsoleLog),
		"-serial", "chardev:console",
		// QEMU listens on every socket so that a new host (a restarted
		// supervisor) can connect at any time.
		"-device", dev("serial") + ",max_ports=4",
		"-chardev", "socket,id=agent,server=on,wait=off,path=" + c.path(layout.AgentSocket),
		"-device", "virtserialport,chardev=agent,name=" + agentproto.PortName,
		// Every VM has the fs port, used or not, so that the device list
		// (and so the saved template) does not depend on the mounts.
		"-chardev", "socket,id=fs,server=on,wait=off,path=" + c.path(layout.FSSocket),
		"-device", "virtserialport,chardev=fs,name=" + agentproto.FSPortName,
		"-qmp", "unix:" + c.path(layout.QMPSocket) + ",server=on,wait=off",
		"-pidfile", c.path(layout.QEMUPid),
		// QEMU parses the guest's device traffic as the user running
		// gondolin: a seccomp filter takes away the system calls an
		// exploited device model would want and QEMU never needs
		// (obsolete ones, set*uid, scheduler and resource controls).
		// Spawning stays allowed: a restore reads its state through
		// -incoming exec:zstd.
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny",
	}
	switch c.Accel {
	case KVM:
		// Bare -cpu host aborts on nested PVM hosts (MSR 0x10a).
		args = append(args, "-accel", "kvm", "-cpu", "host,-arch-capabilities")
	default:
		args = append(args, "-accel", "tcg", "-cpu", "max")
	}
	if c.Backing != "" {
		// Exec VMs are disposable and sessions are saved through the
		// agent's sync, so the host page cache may hold writes.
		args = append(args,
			"-drive", "id=root,if=none,format=qcow2,discard=unmap,cache=unsafe,file="+c.path(layout.Disk),
			"-device", dev("blk")+",drive=root")
	}
	if c.Network {
		args = append(args,
			"-netdev", "stream,id=net0,server=on,addr.type=unix,addr.path="+c.path(layout.NetSocket),
			// A fixed MAC: a restored template's guest keeps its ARP and
			// DHCP state, which must match every clone's host stack.
			"-device", dev("net")+",netdev=net0,mac="+GuestMAC)
	}
	if c.Restore != "" {
		args = append(args, "-incoming", "exec:zstd -dcq "+shellQuote(c.Restore))
	}
	return args
}

// CommandLine returns the QEMU arguments gondolin uses for cfg, for tools
// that measure a bare QEMU against gondolin.
func CommandLine(cfg Config) []string {
	cfg.fill()
	return qemuArgs(cfg, hostTSCKHz())
}

func kernelCmdline(c Config, tscKHz int) string {
	params := []string{
		"console=ttyS0", "panic=-1", "quiet", "loglevel=2",
		"cryptomgr.notests", "no_timer_check", "8250.nr_uarts=1",
		"random.trust_cpu=on", "i8042.noaux", "i8042.nokbd",
	}
	if tscKHz > 0 {
		// TSC calibration under TCG hangs about one boot in ten; tell the
		// kernel the frequency instead (and skip the delay loop).
		params = append(params, fmt.Sprintf("tsc_early_khz=%d", tscKHz), fmt.Sprintf("lpj=%d", tscKHz*4))
	}
	if c.Backing != "" {
		params = append(params, agentproto.ParamRoot+"=/dev/vda")
	}
	if c.Debug {
		params = append(params, agentproto.ParamDebug+"=1")
	}
	return strings.Join(params, " ")
}

// shellQuote quotes s for /bin/sh, which runs QEMU's exec: migration URIs.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// hostTSCKHz reads the host's CPU frequency; TCG's guest TSC runs at the
// host's rate.
func hostTSCKHz() int {
	if b, err := os.ReadFile("/sys/devices/system/cpu/cpu0/tsc_freq_khz"); err == nil {
		if khz, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			return khz
		}
	}
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int(mhz * 1000)
			}
		}
	}
	return 0
}

// Tools gondolin runs, with the Debian package that provides each.
var tools = map[string]string{
	"qemu-system-x86_64": "qemu-system-x86",
	"qemu-img":           "qemu-utils",
	"zstd":               "zstd",
}

// LookTool finds a host tool or says which package to install.
func LookTool(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found: install it with: sudo apt-get install %s", name, tools[name])
	}
	return p, nil
}
