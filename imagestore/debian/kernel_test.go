package debian

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// testBzImage wraps payload in a minimal x86 boot header, as the kernel
// build lays it out: setup sectors, then the protected-mode part holding
// the payload at payload_offset.
func testBzImage(payload []byte, setupSects byte) []byte {
	setup := int(setupSects)
	if setup == 0 {
		setup = 4
	}
	pm := (setup + 1) * 512
	const payloadOffset = 0x80
	bz := make([]byte, pm+payloadOffset+len(payload)+16)
	bz[offSetupSects] = setupSects
	copy(bz[offHeaderMagic:], "HdrS")
	binary.LittleEndian.PutUint16(bz[offVersion:], 0x20f)
	binary.LittleEndian.PutUint32(bz[offPayloadOffset:], payloadOffset)
	binary.LittleEndian.PutUint32(bz[offPayloadLength:], uint32(len(payload)))
	copy(bz[pm+payloadOffset:], payload)
	return bz
}

// lz4Kernel compresses like the kernel build: LZ4 legacy frames followed
// by the uncompressed size.
func lz4Kernel(t testing.TB, data []byte) []byte {
	var buf bytes.Buffer
	zw := lz4.NewWriter(&buf)
	if err := zw.Apply(lz4.LegacyOption(true)); err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.AppendUint32(buf.Bytes(), uint32(len(data)))
}

func pvhELF() []byte {
	return testELF(append(elfNote("GNU", 3, []byte("build-id")), elfNote("Xen", xenElfnotePhys32Entry, []byte{0, 0, 0, 1})...),
		elfSection{Name: ".text", Type: 1, Data: bytes.Repeat([]byte{0x90}, 4096)})
}

func TestExtractPVH(t *testing.T) {
	vmlinux := pvhELF()
	noNote := testELF(elfNote("GNU", 3, []byte("x")), elfSection{Name: ".text", Type: 1, Data: []byte{0x90}})
	compressed := lz4Kernel(t, vmlinux)
	tests := []struct {
		name    string
		bz      []byte
		wantErr string
	}{
		{name: "lz4 pvh", bz: testBzImage(compressed, 27)},
		{name: "setup_sects 0 means 4", bz: testBzImage(compressed, 0)},
		{name: "gzip", bz: testBzImage(append([]byte{0x1f, 0x8b, 8, 0}, make([]byte, 64)...), 27), wantErr: "gzip, not LZ4"},
		{name: "xz", bz: testBzImage(append([]byte{0xfd, '7', 'z', 'X', 'Z', 0}, make([]byte, 64)...), 27), wantErr: "xz"},
		{name: "no pvh note", bz: testBzImage(lz4Kernel(t, noNote), 27), wantErr: "no PVH entry note"},
		{name: "not elf", bz: testBzImage(lz4Kernel(t, bytes.Repeat([]byte("kernel"), 100)), 27), wantErr: "not ELF"},
		{name: "truncated payload", bz: testBzImage(append(compressed[:len(compressed)/2:len(compressed)/2], compressed[len(compressed)-4:]...), 27), wantErr: "LZ4"},
		{name: "wrong size trailer", bz: testBzImage(append(compressed[:len(compressed)-4:len(compressed)-4], 1, 0, 0, 0), 27), wantErr: "trailer says 1"},
		{name: "payload out of range", bz: func() []byte {
			bz := testBzImage(compressed, 27)
			binary.LittleEndian.PutUint32(bz[offPayloadLength:], 1<<31)
			return bz
		}(), wantErr: "outside"},
		{name: "old boot protocol", bz: func() []byte {
			bz := testBzImage(compressed, 27)
			binary.LittleEndian.PutUint16(bz[offVersion:], 0x206)
			return bz
		}(), wantErr: "boot protocol"},
		{name: "no header", bz: make([]byte, 4096), wantErr: "not a bzImage"},
		{name: "short", bz: []byte("MZ"), wantErr: "not a bzImage"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := extractPVH(tt.bz)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("extractPVH: %v; want error about %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, vmlinux) {
				t.Fatalf("extracted %d bytes, want the %d-byte vmlinux", len(got), len(vmlinux))
			}
		})
	}
}

func FuzzExtractPVH(f *testing.F) {
	f.Add(testBzImage(lz4Kernel(f, pvhELF()), 27))
	f.Add(testBzImage([]byte{0x02, 0x21, 0x4c, 0x18, 0xff, 0xff, 0, 0, 1, 2, 3, 4}, 1))
	f.Add(pvhELF())
	f.Fuzz(func(t *testing.T, bz []byte) {
		vmlinux, err := extractPVH(bz)
		if err == nil && checkPVH(vmlinux) != nil {
			t.Fatal("accepted a kernel without a PVH note")
		}
	})
}
