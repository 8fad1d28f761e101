// Package qcow2 checks qcow2 disks that come from outside (an image
// import, a snapshot another home made) for what would make QEMU open
// files besides the disk itself: a backing file, an external data file.
// The header is read here, with every length bounds-checked, before
// qemu-img or QEMU is let near the file; qemu-img's own view (Info) is
// the second check, as it parses qcow2 exactly as QEMU will.
package qcow2

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Header fields and feature bits (docs/interop/qcow2.txt in QEMU).
const (
	magic              = "QFI\xfb"
	offBackingOffset   = 8
	offBackingSize     = 16
	offClusterBits     = 20
	offCryptMethod     = 32
	offIncompatible    = 72
	offHeaderLength    = 100
	v2HeaderLen        = 72
	v3HeaderLen        = 104
	minClusterBits     = 9
	maxClusterBits     = 21 // QEMU's limit: 2 MiB clusters
	maxBackingName     = 1023
	extEnd             = 0
	extBackingFormat   = 0xe2792aca
	incompatDirty      = 1 << 0
	incompatCorrupt    = 1 << 1
	incompatExternData = 1 << 2
)

// Header is what a qcow2 header says about files other than the disk.
type Header struct {
	Version uint32
	// BackingFile is the backing file's name as recorded: QEMU resolves a
	// relative one against the disk's directory. Empty for none.
	BackingFile string
	// BackingFormat is the backing file's format as recorded; empty when
	// absent, and QEMU then probes it.
	BackingFormat string

	hasBacking   bool
	encrypted    bool
	externalData bool
	corrupt      bool
	dirty        bool
}

func readAt(r io.ReaderAt, off int64, n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := r.ReadAt(b, off); err != nil {
		return nil, err
	}
	return b, nil
}

// ReadHeader parses a qcow2 header and its backing file's name and
// format. It refuses only what makes the file no qcow2 QEMU would open;
// Check says whether QEMU would open other files through it.
func ReadHeader(r io.ReaderAt, size int64) (Header, error) {
	h, raw, err := readFixed(r, size)
	if err != nil || !h.hasBacking {
		return h, err
	}
	be := binary.BigEndian
	bits := be.Uint32(raw[offClusterBits:])
	if bits < minClusterBits || bits > maxClusterBits {
		return h, fmt.Errorf("qcow2 cluster size 2^%d is out of range", bits)
	}
	cluster := uint64(1) << bits
	// QEMU's bounds: the name lies in the first cluster, at most 1023
	// bytes, and the header extensions end where it starts.
	off, n := be.Uint64(raw[offBackingOffset:]), uint64(be.Uint32(raw[offBackingSize:]))
	if off > cluster || n > maxBackingName || n > cluster-off || off+n > uint64(size) {
		return h, fmt.Errorf("qcow2 backing file name at %#x+%d is out of bounds", off, n)
	}
	name, err := readAt(r, int64(off), int(n))
	if err != nil {
		return h, err
	}
	h.BackingFile = string(name)
	if h.BackingFile == "" {
		return h, errors.New("qcow2 backing file name is empty")
	}
	hdrLen := uint64(v2HeaderLen)
	if h.Version == 3 {
		hdrLen = uint64(be.Uint32(raw[offHeaderLength:]))
	}
	if h.Version == 3 && hdrLen < v3HeaderLen || hdrLen > off {
		return h, fmt.Errorf("qcow2 header length %d is out of bounds", hdrLen)
	}
	exts, err := readAt(r, int64(hdrLen), int(off-hdrLen))
	if err != nil {
		return h, err
	}
	h.BackingFormat, err = backingFormat(exts)
	return h, err
}

// readFixed reads the fixed part of the header.
func readFixed(r io.ReaderAt, size int64) (Header, []byte, error) {
	var h Header
	if size < v3HeaderLen {
		return h, nil, errors.New("not a qcow2 image (too short)")
	}
	raw, err := readAt(r, 0, v3HeaderLen)
	if err != nil {
		return h, nil, err
	}
	if string(raw[:4]) != magic {
		return h, nil, errors.New("not a qcow2 image (no QFI magic)")
	}
	be := binary.BigEndian
	h.Version = be.Uint32(raw[4:])
	if h.Version != 2 && h.Version != 3 {
		return h, nil, fmt.Errorf("qcow2 version %d is not supported", h.Version)
	}
	h.hasBacking = be.Uint64(raw[offBackingOffset:]) != 0
	h.encrypted = be.Uint32(raw[offCryptMethod:]) != 0
	if h.Version == 3 {
		inc := be.Uint64(raw[offIncompatible:])
		h.externalData = inc&incompatExternData != 0
		h.corrupt = inc&incompatCorrupt != 0
		h.dirty = inc&incompatDirty != 0
	}
	return h, raw, nil
}

// backingFormat walks the header extensions (8-byte aligned type, length,
// data, up to an end marker) for the backing format.
func backingFormat(b []byte) (string, error) {
	for len(b) >= 8 {
		typ, n := binary.BigEndian.Uint32(b), uint64(binary.BigEndian.Uint32(b[4:]))
		b = b[8:]
		if typ == extEnd {
			return "", nil
		}
		if n > uint64(len(b)) {
			return "", fmt.Errorf("qcow2 header extension %#x is too large", typ)
		}
		if typ == extBackingFormat {
			return string(b[:n]), nil
		}
		b = b[min((n+7)&^7, uint64(len(b))):]
	}
	return "", nil
}

// Check refuses what would make QEMU open another file than the disk and
// its backing file, or refuse to boot: an external data file, encryption,
// the corrupt or dirty bits.
func (h Header) Check() error {
	switch {
	case h.encrypted:
		return errors.New("qcow2 image is encrypted")
	case h.externalData:
		return errors.New("qcow2 image keeps its data in an external file")
	case h.corrupt:
		return errors.New("qcow2 image is marked corrupt")
	case h.dirty:
		return errors.New("qcow2 image is dirty (not closed cleanly); repair it with qemu-img check -r all")
	}
	return nil
}

// SelfContained checks that a qcow2 header names no file QEMU would open
// besides the disk: no backing file, and Check. It reads no name, so a
// file with a backing file is refused whatever its name's bounds.
func SelfContained(r io.ReaderAt, size int64) error {
	h, _, err := readFixed(r, size)
	if err != nil {
		return err
	}
	if h.hasBacking {
		return errors.New("qcow2 image has a backing file")
	}
	return h.Check()
}

// Info is what `qemu-img info --output=json -f qcow2` says of a disk, as
// far as the checks need.
type Info struct {
	Format              string `json:"format"`
	VirtualSize         int64  `json:"virtual-size"`
	BackingFilename     string `json:"backing-filename"`
	FullBackingFilename string `json:"full-backing-filename"`
	FormatSpecific      struct {
		Data struct {
			Corrupt  bool   `json:"corrupt"`
			DataFile string `json:"data-file"`
		} `json:"data"`
	} `json:"format-specific"`
}

// ParseInfo decodes qemu-img info's JSON.
func ParseInfo(out []byte) (Info, error) {
	var info Info
	err := json.Unmarshal(out, &info)
	return info, err
}

// Check refuses a disk qemu-img does not see as a self-contained qcow2 of
// a virtual size up to maxSize; with backing set, a backing file that
// resolves to exactly backing is allowed.
func (i Info) Check(backing string, maxSize int64) error {
	switch {
	case i.Format != "qcow2":
		return fmt.Errorf("qemu-img says the disk is %q, not qcow2", i.Format)
	case i.BackingFilename != "" && (backing == "" || i.FullBackingFilename != backing):
		return errors.New("qcow2 image has a backing file")
	case i.FormatSpecific.Data.DataFile != "":
		return errors.New("qcow2 image keeps its data in an external file")
	case i.FormatSpecific.Data.Corrupt:
		return errors.New("qcow2 image is marked corrupt")
	case i.VirtualSize <= 0 || i.VirtualSize > maxSize:
		return fmt.Errorf("qcow2 virtual size %d is out of range", i.VirtualSize)
	}
	return nil
}
