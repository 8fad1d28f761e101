// Package format recognises the guest files an image is made of (kernels,
// initramfs archives, raw root disks, the agent) from their bytes, so that
// a file from outside (an import, a download) is checked before the store
// takes it. qcow2 disks are checked by internal/qcow2, which snapshots
// share. Every check reads through an io.ReaderAt with the file's size
// and never trusts a length field without a bounds check.
package format

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// x86 boot protocol header fields (Documentation/arch/x86/boot.rst).
const (
	offBootFlag    = 0x1fe // 0xaa55
	offHeaderMagic = 0x202 // "HdrS"
	offVersion     = 0x206
	minBzVersion   = 0x206 // the oldest protocol QEMU's loader handles well
)

// xenElfnotePhys32Entry is the ELF note (owner "Xen") that marks a kernel
// as PVH-bootable: QEMU jumps straight to that 32-bit entry point.
const xenElfnotePhys32Entry = 18

func readAt(r io.ReaderAt, off int64, n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := r.ReadAt(b, off); err != nil {
		return nil, err
	}
	return b, nil
}

// BzImage checks for an x86 boot protocol kernel image.
func BzImage(r io.ReaderAt, size int64) error {
	if size < offVersion+2 {
		return errors.New("not a bzImage (too short)")
	}
	h, err := readAt(r, 0, offVersion+2)
	if err != nil {
		return err
	}
	if h[offBootFlag] != 0x55 || h[offBootFlag+1] != 0xaa || string(h[offHeaderMagic:offHeaderMagic+4]) != "HdrS" {
		return errors.New("not a bzImage (no boot sector flag and HdrS header)")
	}
	if v := binary.LittleEndian.Uint16(h[offVersion:]); v < minBzVersion {
		return fmt.Errorf("bzImage boot protocol %#x is too old", v)
	}
	return nil
}

// PVH checks for a complete x86-64 ELF kernel with a PVH entry note.
func PVH(r io.ReaderAt, size int64) error {
	f, err := elf.NewFile(r)
	if err != nil {
		return fmt.Errorf("kernel is not ELF: %w", err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("kernel is %v %v, not x86-64", f.Class, f.Machine)
	}
	found := false
	for _, p := range f.Progs {
		// A truncated file still has intact headers: insist on every
		// segment's bytes being there.
		if p.Off > uint64(size) || p.Filesz > uint64(size)-p.Off {
			return fmt.Errorf("kernel is truncated (segment at %#x+%#x)", p.Off, p.Filesz)
		}
		if p.Type != elf.PT_NOTE || found || p.Filesz > 1<<20 {
			continue
		}
		notes, err := readAt(r, int64(p.Off), int(p.Filesz))
		if err != nil {
			return err
		}
		found = hasNote(notes, f.ByteOrder, "Xen", xenElfnotePhys32Entry)
	}
	if !found {
		return errors.New("kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")
	}
	return nil
}

// hasNote walks an ELF note segment looking for (owner, type).
func hasNote(b []byte, bo binary.ByteOrder, owner string, typ uint32) bool {
	align4 := func(n uint64) uint64 { return (n + 3) &^ 3 }
	for len(b) >= 12 {
		namesz, descsz, t := uint64(bo.Uint32(b)), uint64(bo.Uint32(b[4:])), bo.Uint32(b[8:])
		b = b[12:]
		if align4(namesz) > uint64(len(b)) {
			return false
		}
		name := string(bytes.TrimRight(b[:namesz], "\x00"))
		b = b[align4(namesz):]
		if align4(descsz) > uint64(len(b)) {
			return name == owner && t == typ && descsz <= uint64(len(b))
		}
		if name == owner && t == typ {
			return true
		}
		b = b[align4(descsz):]
	}
	return false
}

// StaticELF checks for an x86-64 executable without a dynamic loader,
// which is what can run as /init of an initramfs.
func StaticELF(r io.ReaderAt, size int64) error {
	f, err := elf.NewFile(r)
	if err != nil {
		return fmt.Errorf("not an ELF executable: %w", err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("%v %v %v is not an x86-64 executable", f.Class, f.Machine, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("executable is dynamically linked")
		}
		if p.Off > uint64(size) || p.Filesz > uint64(size)-p.Off {
			return fmt.Errorf("executable is truncated (segment at %#x+%#x)", p.Off, p.Filesz)
		}
	}
	return nil
}

// newc cpio header: magic and 13 eight-digit hex fields.
const (
	cpioHeaderLen = 110
	cpioTrailer   = "TRAILER!!!"
	maxCpioName   = 4096
)

// Cpio checks for uncompressed newc cpio archives (one, or several
// concatenated as the kernel accepts them) and that one of them holds a
// regular file /init, which the kernel runs.
func Cpio(r io.ReaderAt, size int64) error {
	var off int64
	hasInit, archives := false, 0
	for off < size {
		h, err := readAt(r, off, min(cpioHeaderLen, int(size-off)))
		if err != nil {
			return err
		}
		if n := len(h) - len(bytes.TrimLeft(h, "\x00")); archives > 0 && n >= 4 {
			off += int64(n &^ 3) // zero padding after a trailer
			continue
		}
		switch {
		case off == 0 && (len(h) < 6 || string(h[:6]) != "070701" && string(h[:6]) != "070702"):
			return errors.New("not an uncompressed newc cpio archive (no 070701 magic)")
		case len(h) < cpioHeaderLen:
			return fmt.Errorf("cpio: truncated header at offset %d", off)
		case string(h[:6]) != "070701" && string(h[:6]) != "070702":
			return fmt.Errorf("cpio: bad header at offset %d", off)
		}
		field := func(i int) (int64, error) {
			v, err := strconv.ParseUint(string(h[6+8*i:6+8*i+8]), 16, 32)
			return int64(v), err
		}
		mode, err1 := field(1)
		filesize, err2 := field(6)
		namesize, err3 := field(11)
		if err := errors.Join(err1, err2, err3); err != nil {
			return fmt.Errorf("cpio: bad header at offset %d: %v", off, err)
		}
		if namesize < 1 || namesize > maxCpioName {
			return fmt.Errorf("cpio: bad name size %d at offset %d", namesize, off)
		}
		nameEnd := off + cpioHeaderLen + namesize
		if nameEnd > size {
			return fmt.Errorf("cpio: truncated at offset %d", off)
		}
		nb, err := readAt(r, off+cpioHeaderLen, int(namesize))
		if err != nil {
			return err
		}
		name := string(bytes.TrimRight(nb, "\x00"))
		data := align4(nameEnd)
		next := align4(data + filesize)
		if data+filesize > size {
			return fmt.Errorf("cpio: %s is truncated", name)
		}
		if name == "init" || name == "./init" || name == "/init" {
			hasInit = hasInit || mode&0o170000 == 0o100000
		}
		if name == cpioTrailer {
			archives++
		}
		off = next
	}
	if archives == 0 {
		return errors.New("cpio: no trailer (truncated archive)")
	}
	if !hasInit {
		return errors.New("the initramfs has no /init")
	}
	return nil
}

func align4(n int64) int64 { return (n + 3) &^ 3 }

// Ext checks for an ext2/3/4 superblock at the start of a raw disk image.
func Ext(r io.ReaderAt, size int64) error {
	const sbOff, magicOff = 1024, 56
	if size < sbOff+magicOff+2 {
		return errors.New("not an ext4 image (too short)")
	}
	b, err := readAt(r, sbOff+magicOff, 2)
	if err != nil {
		return err
	}
	if binary.LittleEndian.Uint16(b) != 0xef53 {
		return errors.New("not an ext2/3/4 filesystem image (no superblock magic)")
	}
	return nil
}
