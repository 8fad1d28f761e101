package tartest

import (
	"archive/tar"
	"bytes"
	"io"
	"strings"
	"testing"
)

// TestSparse checks that archive/tar reads every format back as the
// file it stands for: the apparent size in Header.Size, the data, then
// zeros for the hole.
func TestSparse(t *testing.T) {
	const size = 1 << 40 // base-256 in the old GNU header
	for _, f := range SparseFormats {
		t.Run(f.String(), func(t *testing.T) {
			a := Sparse(f, "dir/big", size, "hello")
			if len(a) > 4<<10 {
				t.Errorf("archive of %d bytes", len(a))
			}
			tr := tar.NewReader(bytes.NewReader(a))
			hdr, err := tr.Next()
			if err != nil {
				t.Fatal(err)
			}
			if hdr.Name != "dir/big" || hdr.Size != size || (hdr.Typeflag != tar.TypeReg && hdr.Typeflag != tar.TypeGNUSparse) {
				t.Fatalf("header %q type %q size %d", hdr.Name, hdr.Typeflag, hdr.Size)
			}
			head := make([]byte, 4096)
			if _, err := io.ReadFull(tr, head); err != nil {
				t.Fatal(err)
			}
			if want := "hello" + strings.Repeat("\x00", len(head)-5); string(head) != want {
				t.Fatalf("content starts %q", head[:16])
			}
		})
	}
}
