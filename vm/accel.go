package vm

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// KVMStatus says whether KVM can be tried at all on this host, and why
// not. A usable /dev/kvm is necessary but not sufficient: nested "PVM"
// KVM creates VMs yet cannot run a stock guest kernel (see PLATFORM.md),
// so "auto" also needs a probe boot.
func KVMStatus() (ok bool, reason string) {
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		return false, "KVM is nested PVM, which cannot run a stock guest kernel"
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Sprintf("cannot open /dev/kvm: %v", err)
	}
	defer f.Close()
	const kvmCreateVM = 0xae01 // _IO(KVMIO, 0x01)
	fd, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), kvmCreateVM, 0)
	if errno != 0 {
		return false, fmt.Sprintf("KVM_CREATE_VM failed: %v", errno)
	}
	unix.Close(int(fd))
	return true, ""
}

// ParseAccel reads GONDOLIN_ACCEL's spelling: kvm, tcg, auto or empty.
func ParseAccel(s string) (accel Accel, auto bool, err error) {
	switch s {
	case "", "auto":
		return "", true, nil
	case "kvm":
		return KVM, false, nil
	case "tcg":
		return TCG, false, nil
	}
	return "", false, fmt.Errorf("GONDOLIN_ACCEL=%q: use kvm, tcg or auto", s)
}
