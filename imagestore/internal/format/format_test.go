package format

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/gondolin/gondolin/imagestore/internal/format/elftest"
)

// newc builds a newc cpio archive from (name, mode, data) triples and its
// trailer.
func newc(entries ...cpioFile) []byte {
	var b bytes.Buffer
	pad := func() {
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	for i, e := range append(entries, cpioFile{name: "TRAILER!!!"}) {
		fmt.Fprintf(&b, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
			i+1, e.mode, 0, 0, 1, 0, len(e.data), 0, 0, 0, 0, len(e.name)+1, 0)
		b.WriteString(e.name + "\x00")
		pad()
		b.WriteString(e.data)
		pad()
	}
	return b.Bytes()
}

type cpioFile struct {
	name string
	mode uint32
	data string
}

const (
	sIFREG = 0o100000
	sIFDIR = 0o040000
)

func check(name string, fn func([]byte) error, b []byte, wantErr string) string {
	err := fn(b)
	switch {
	case wantErr == "" && err != nil:
		return fmt.Sprintf("%s: %v", name, err)
	case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
		return fmt.Sprintf("%s: %v; want error about %q", name, err, wantErr)
	}
	return ""
}

func on(fn func(io.ReaderAt, int64) error) func([]byte) error {
	return func(b []byte) error { return fn(bytes.NewReader(b), int64(len(b))) }
}

func TestCpio(t *testing.T) {
	good := newc(cpioFile{"dev", sIFDIR | 0o755, ""}, cpioFile{"init", sIFREG | 0o755, "agent"})
	tests := []struct {
		name    string
		b       []byte
		wantErr string
	}{
		{"good", good, ""},
		{"padded", append(good, make([]byte, 512)...), ""},
		{"concatenated", append(append(good, make([]byte, 4)...), newc(cpioFile{"extra", sIFREG | 0o644, "x"})...), ""},
		{"no init", newc(cpioFile{"bin", sIFDIR | 0o755, ""}), "no /init"},
		{"init is a dir", newc(cpioFile{"init", sIFDIR | 0o755, ""}), "no /init"},
		{"gzip", []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0}, "not an uncompressed newc cpio"},
		{"empty", nil, "no trailer"},
		{"short", []byte("0707"), "no 070701 magic"},
		{"truncated", good[:len(good)-40], "truncated"},
		{"garbage after", append(good, "junk"...), "header at offset"},
		{"huge name", []byte("070701" + strings.Repeat("0", 8*11) + "ffffffff" + "00000000"), "bad name size"},
		{"bad hex", []byte("070701" + strings.Repeat("z", 8*13)), "bad header"},
	}
	for _, tt := range tests {
		if msg := check(tt.name, on(Cpio), tt.b, tt.wantErr); msg != "" {
			t.Error(msg)
		}
	}
}

func TestKernels(t *testing.T) {
	pvh := elftest.ELF(elftest.Note("Xen", elftest.XenPVHNote, []byte{0, 0, 0, 1}), elftest.Section{Name: ".text", Type: 1, Data: []byte{0x90}})
	noNote := elftest.ELF(elftest.Note("GNU", 3, []byte("x")))
	bz := make([]byte, 0x300)
	bz[0x1fe], bz[0x1ff] = 0x55, 0xaa
	copy(bz[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(bz[0x206:], 0x20f)
	old := bytes.Clone(bz)
	binary.LittleEndian.PutUint16(old[0x206:], 0x200)
	for _, msg := range []string{
		check("pvh", on(PVH), pvh, ""),
		check("pvh without note", on(PVH), noNote, "no PVH entry note"),
		check("pvh truncated", on(PVH), pvh[:len(pvh)-20], "not ELF"),
		check("pvh not elf", on(PVH), bz, "not ELF"),
		check("bzimage", on(BzImage), bz, ""),
		check("bzimage old", on(BzImage), old, "too old"),
		check("bzimage short", on(BzImage), bz[:0x100], "too short"),
		check("bzimage elf", on(BzImage), pvh, "not a bzImage"),
	} {
		if msg != "" {
			t.Error(msg)
		}
	}
}

func TestStaticELF(t *testing.T) {
	if msg := check("synthetic", on(StaticELF), elftest.ELF(nil), ""); msg != "" {
		t.Error(msg)
	}
	if msg := check("text", on(StaticELF), []byte("#!/bin/sh\n"), "not an ELF"); msg != "" {
		t.Error(msg)
	}
	if b, err := os.ReadFile("/bin/ls"); err == nil {
		if msg := check("/bin/ls", on(StaticELF), b, "dynamically linked"); msg != "" {
			t.Error(msg)
		}
	}
}

func TestExt(t *testing.T) {
	img := make([]byte, 4096)
	binary.LittleEndian.PutUint16(img[1024+56:], 0xef53)
	if msg := check("ext4", on(Ext), img, ""); msg != "" {
		t.Error(msg)
	}
	if msg := check("zeros", on(Ext), make([]byte, 4096), "no superblock magic"); msg != "" {
		t.Error(msg)
	}
}

// FuzzCpio: the checks read untrusted files, so any input must give an
// answer, never a panic or a huge allocation.
func FuzzCpio(f *testing.F) {
	f.Add(newc(cpioFile{"init", sIFREG | 0o755, "x"}))
	f.Add([]byte("070701"))
	f.Fuzz(func(t *testing.T, b []byte) { Cpio(bytes.NewReader(b), int64(len(b))) })
}

func FuzzPVH(f *testing.F) {
	f.Add(elftest.ELF(elftest.Note("Xen", elftest.XenPVHNote, []byte{0, 0, 0, 1})))
	f.Fuzz(func(t *testing.T, b []byte) { PVH(bytes.NewReader(b), int64(len(b))) })
}
