package debian

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/gondolin/gondolin/imagestore/internal/format"
	"github.com/pierrec/lz4/v4"
)

// x86 boot protocol header fields (Documentation/arch/x86/boot.rst).
const (
	offSetupSects    = 0x1f1
	offHeaderMagic   = 0x202 // "HdrS"
	offVersion       = 0x206
	offPayloadOffset = 0x248
	offPayloadLength = 0x24c
	minBootVersion   = 0x208 // first protocol version with the payload fields
)

// maxVmlinux bounds decompression: a distribution vmlinux is 30-70 MB, so
// anything bigger is a corrupt or hostile payload.
const maxVmlinux = 256 << 20

var lz4LegacyMagic = []byte{0x02, 0x21, 0x4c, 0x18}

// extractPVH returns the ELF vmlinux inside a bzImage when the payload is
// LZ4 (Debian's choice) and the ELF has a PVH entry note. QEMU boots that
// vmlinux directly, measurably faster than the bzImage under TCG. The
// error says why not otherwise; the caller then keeps the bzImage.
func extractPVH(bz []byte) ([]byte, error) {
	if len(bz) < offPayloadLength+4 || string(bz[offHeaderMagic:offHeaderMagic+4]) != "HdrS" {
		return nil, errors.New("not a bzImage (no HdrS header)")
	}
	if v := binary.LittleEndian.Uint16(bz[offVersion:]); v < minBootVersion {
		return nil, fmt.Errorf("boot protocol %#x has no payload fields", v)
	}
	setup := uint64(bz[offSetupSects])
	if setup == 0 {
		setup = 4
	}
	start := (setup+1)*512 + uint64(binary.LittleEndian.Uint32(bz[offPayloadOffset:]))
	length := uint64(binary.LittleEndian.Uint32(bz[offPayloadLength:]))
	if start+length > uint64(len(bz)) || length < 8 {
		return nil, fmt.Errorf("payload [%d, +%d) outside the %d-byte image", start, length, len(bz))
	}
	payload := bz[start : start+length]
	if !bytes.HasPrefix(payload, lz4LegacyMagic) {
		return nil, fmt.Errorf("payload is %s, not LZ4", compression(payload))
	}
	// The kernel build appends the uncompressed size (4 bytes LE) to the
	// LZ4 stream; the reader would take it for a block header.
	want := binary.LittleEndian.Uint32(payload[len(payload)-4:])
	if want > maxVmlinux {
		return nil, fmt.Errorf("payload claims %d bytes uncompressed", want)
	}
	zr := lz4.NewReader(bytes.NewReader(payload[:len(payload)-4]))
	// Read no more than claimed; memory grows only with real output.
	vmlinux, err := io.ReadAll(io.LimitReader(zr, int64(want)+1))
	if err != nil {
		return nil, fmt.Errorf("decompress LZ4 payload: %w", err)
	}
	if int64(len(vmlinux)) != int64(want) {
		return nil, fmt.Errorf("LZ4 payload gave %d bytes, its trailer says %d", len(vmlinux), want)
	}
	if err := checkPVH(vmlinux); err != nil {
		return nil, err
	}
	return vmlinux, nil
}

// checkPVH checks that b is a complete x86-64 ELF with a PVH entry note.
func checkPVH(b []byte) error {
	return format.PVH(bytes.NewReader(b), int64(len(b)))
}

// compression names a payload's format for the fallback message.
func compression(b []byte) string {
	for _, c := range []struct {
		magic []byte
		name  string
	}{
		{[]byte{0x1f, 0x8b}, "gzip"},
		{[]byte{0xfd, '7', 'z', 'X', 'Z', 0}, "xz"},
		{[]byte{0x28, 0xb5, 0x2f, 0xfd}, "zstd"},
		{[]byte{'B', 'Z', 'h'}, "bzip2"},
		{[]byte{0x89, 'L', 'Z', 'O'}, "lzo"},
		{[]byte{0x5d, 0, 0}, "lzma"},
		{[]byte{0x7f, 'E', 'L', 'F'}, "uncompressed ELF"},
	} {
		if bytes.HasPrefix(b, c.magic) {
			return c.name
		}
	}
	return "in an unknown format"
}
