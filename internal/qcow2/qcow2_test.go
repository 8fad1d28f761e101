package qcow2

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// header builds a qcow2 header; a non-empty backing name is placed after
// the extensions exts (already encoded), as qemu-img lays them out.
func header(version uint32, crypt uint32, incompat uint64, exts []byte, backing string) []byte {
	h := make([]byte, 112)
	copy(h, magic)
	be := binary.BigEndian
	be.PutUint32(h[4:], version)
	be.PutUint32(h[offClusterBits:], 16)
	be.PutUint32(h[offCryptMethod:], crypt)
	be.PutUint64(h[offIncompatible:], incompat)
	be.PutUint32(h[offHeaderLength:], 112)
	h = append(h, exts...)
	if backing != "" {
		be.PutUint64(h[offBackingOffset:], uint64(len(h)))
		be.PutUint32(h[offBackingSize:], uint32(len(backing)))
		h = append(h, backing...)
	}
	return append(h, make([]byte, 64)...)
}

// ext encodes one header extension, padded to 8 bytes.
func ext(typ uint32, data string) []byte {
	b := binary.BigEndian.AppendUint32(nil, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	for len(b)%8 != 0 {
		b = append(b, 0)
	}
	return b
}

func errIs(err error, want string) bool {
	if want == "" {
		return err == nil
	}
	return err != nil && strings.Contains(err.Error(), want)
}

// TestSelfContained is image import's header check, moved here from
// imagestore/internal/format unchanged.
func TestSelfContained(t *testing.T) {
	withBacking := header(3, 0, 0, nil, "/x")
	for _, tt := range []struct {
		name    string
		b       []byte
		wantErr string
	}{
		{"v3", header(3, 0, 0, nil, ""), ""},
		{"v2", header(2, 0, 0, nil, ""), ""},
		{"backing file", withBacking, "backing file"},
		{"backing file out of bounds", func() []byte {
			b := bytes.Clone(withBacking)
			binary.BigEndian.PutUint64(b[offBackingOffset:], 1<<40)
			return b
		}(), "backing file"},
		{"external data", header(3, 0, 4, nil, ""), "external file"},
		{"encrypted", header(3, 1, 0, nil, ""), "encrypted"},
		{"dirty", header(3, 0, 1, nil, ""), "dirty"},
		{"corrupt", header(3, 0, 2, nil, ""), "corrupt"},
		{"v4", header(4, 0, 0, nil, ""), "version 4"},
		{"raw", make([]byte, 4096), "no QFI magic"},
		{"short", []byte("QFI\xfb"), "too short"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := SelfContained(bytes.NewReader(tt.b), int64(len(tt.b))); !errIs(err, tt.wantErr) {
				t.Errorf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestReadHeader(t *testing.T) {
	fmtExt := ext(extBackingFormat, "qcow2")
	for _, tt := range []struct {
		name        string
		b           []byte
		wantBacking string
		wantFormat  string
		wantErr     string
	}{
		{"none", header(3, 0, 0, nil, ""), "", "", ""},
		{"backing", header(3, 0, 0, nil, "/images/blobs/abc"), "/images/blobs/abc", "", ""},
		{"backing and format", header(3, 0, 0, append(ext(0x6803f857, "features"), fmtExt...), "base.qcow2"), "base.qcow2", "qcow2", ""},
		{"format after the end marker", header(3, 0, 0, append(ext(extEnd, ""), fmtExt...), "b"), "b", "", ""},
		// v2 has no header length: its extensions start at 72 (zeros: none).
		{"v2", header(2, 0, 0, nil, "b"), "b", "", ""},
		{"extension too large", func() []byte {
			e := ext(extBackingFormat, "qcow2")
			binary.BigEndian.PutUint32(e[4:], 4096)
			return header(3, 0, 0, e, "b")
		}(), "", "", "too large"},
		{"name past the end", func() []byte {
			b := header(3, 0, 0, nil, "b")
			binary.BigEndian.PutUint32(b[offBackingSize:], 1000)
			return b[:len(b)-64]
		}(), "", "", "out of bounds"},
		{"name past the first cluster", func() []byte {
			b := header(3, 0, 0, nil, "b")
			binary.BigEndian.PutUint64(b[offBackingOffset:], 1<<17)
			return b
		}(), "", "", "out of bounds"},
		{"name too long", header(3, 0, 0, nil, strings.Repeat("a", 1024)), "", "", "out of bounds"},
		{"bad cluster size", func() []byte {
			b := header(3, 0, 0, nil, "b")
			binary.BigEndian.PutUint32(b[offClusterBits:], 40)
			return b
		}(), "", "", "cluster size"},
		{"header length past the name", func() []byte {
			b := header(3, 0, 0, nil, "b")
			binary.BigEndian.PutUint32(b[offHeaderLength:], 4000)
			return b
		}(), "", "", "header length"},
		// What Check refuses is still parsed: the caller decides.
		{"external data", header(3, 0, 4, nil, "b"), "b", "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ReadHeader(bytes.NewReader(tt.b), int64(len(tt.b)))
			if !errIs(err, tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			if err == nil && (h.BackingFile != tt.wantBacking || h.BackingFormat != tt.wantFormat) {
				t.Errorf("backing %q format %q, want %q %q", h.BackingFile, h.BackingFormat, tt.wantBacking, tt.wantFormat)
			}
		})
	}
}

// TestReadHeaderOfQemuImg reads what qemu-img writes, so the layout
// assumed above is the real one.
func TestReadHeaderOfQemuImg(t *testing.T) {
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Skip("qemu-img not installed")
	}
	dir := t.TempDir()
	create := func(name string, args ...string) Header {
		t.Helper()
		p := filepath.Join(dir, name)
		args = append([]string{"create", "-q", "-f", "qcow2"}, append(args, p, "16M")...)
		if out, err := exec.Command(qemuImg, args...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		h, err := ReadHeader(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return h
	}
	base := filepath.Join(dir, "base.qcow2")
	if h := create("base.qcow2"); h.BackingFile != "" || h.Check() != nil {
		t.Errorf("base: %+v %v", h, h.Check())
	}
	if h := create("over.qcow2", "-F", "qcow2", "-b", base); h.BackingFile != base || h.BackingFormat != "qcow2" || h.Check() != nil {
		t.Errorf("overlay: %+v %v", h, h.Check())
	}
	h := create("data.qcow2", "-o", "data_file="+filepath.Join(dir, "data.raw"))
	if err := h.Check(); !errIs(err, "external file") {
		t.Errorf("data file: %v", err)
	}
}

func TestInfoCheck(t *testing.T) {
	info := func(js string) Info {
		i, err := ParseInfo([]byte(js))
		if err != nil {
			t.Fatal(err)
		}
		return i
	}
	plain := `{"format":"qcow2","virtual-size":65536}`
	backed := `{"format":"qcow2","virtual-size":65536,"backing-filename":"b","full-backing-filename":"/d/b"}`
	for _, tt := range []struct {
		name, js, backing, wantErr string
	}{
		{"plain", plain, "", ""},
		{"plain, backing allowed", plain, "/d/b", ""},
		{"raw", `{"format":"raw","virtual-size":65536}`, "", "not qcow2"},
		{"backing file", backed, "", "backing file"},
		{"the allowed backing file", backed, "/d/b", ""},
		{"another backing file", backed, "/d/c", "backing file"},
		{"data file", `{"format":"qcow2","virtual-size":65536,"format-specific":{"data":{"data-file":"x"}}}`, "", "external file"},
		{"corrupt", `{"format":"qcow2","virtual-size":65536,"format-specific":{"data":{"corrupt":true}}}`, "", "corrupt"},
		{"empty", `{"format":"qcow2","virtual-size":0}`, "", "out of range"},
		{"huge", `{"format":"qcow2","virtual-size":1099511627777}`, "", "out of range"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := info(tt.js).Check(tt.backing, 1<<40); !errIs(err, tt.wantErr) {
				t.Errorf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// The checks read untrusted files: any input must give an answer, never a
// panic or a huge allocation.
func FuzzReadHeader(f *testing.F) {
	f.Add(header(3, 0, 0, nil, ""))
	f.Add(header(3, 0, 0, ext(extBackingFormat, "qcow2"), "/base"))
	f.Add(header(2, 0, 0, nil, "b"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		SelfContained(r, int64(len(b)))
		if h, err := ReadHeader(r, int64(len(b))); err == nil {
			_ = h.Check()
		}
	})
}
