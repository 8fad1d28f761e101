package cptar

import (
	"archive/tar"
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// FuzzExtract feeds Extract what a hostile guest could send: whatever the
// stream, nothing appears beside the root, nothing outside changes, and
// nothing inside is setuid, setgid, a device or a fifo.
func FuzzExtract(f *testing.F) {
	for _, tt := range hostileCases {
		f.Add(stream(f, tt.entries...), tt.rename != "")
	}
	f.Add(stream(f,
		entry{typ: tar.TypeDir, name: "d", mode: 0o500},
		entry{typ: tar.TypeReg, name: "d/f", mode: 0o6777, body: "x"},
		entry{typ: tar.TypeSymlink, name: "d/up", linkname: "../../outside"},
		entry{typ: tar.TypeLink, name: "d/h", linkname: "d/f"},
		entry{typ: tar.TypeReg, name: "d/up/secret", body: "evil"},
	), false)
	f.Add([]byte("garbage"), true)
	f.Add(sparseStream(), false)
	f.Fuzz(func(t *testing.T, data []byte, rename bool) {
		base, root := hostileBase(t, true)
		name := ""
		if rename {
			name = "out"
		}
		Extract(bytes.NewReader(data), root, Options{Name: name})
		checkOutside(t, base)
		filepath.WalkDir(filepath.Join(base, "root"), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			fi, err := d.Info()
			if err != nil {
				return nil
			}
			if fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky|fs.ModeDevice|fs.ModeNamedPipe|fs.ModeSocket) != 0 {
				t.Errorf("%s: mode %v", p, fi.Mode())
			}
			if fi.IsDir() {
				os.Chmod(p, 0o755) // for t.TempDir's cleanup
			}
			return nil
		})
	})
}
