package imagestore

import (
	"path/filepath"
	"strings"
	"testing"
)

func FuzzParseRef(f *testing.F) {
	for _, s := range []string{"default", "default:latest", "a:b:c", "../x", "sha256:abc", "x:.."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRef(s)
		if err != nil {
			return
		}
		// A valid ref must stay two plain path elements under refs/.
		for _, el := range []string{r.Name, r.Tag} {
			if el == "" || el == "." || el == ".." || strings.ContainsAny(el, "/\\:\x00") || !filepath.IsLocal(el) {
				t.Fatalf("ParseRef(%q) = %#v: unsafe element %q", s, r, el)
			}
		}
		if again, err := ParseRef(r.String()); err != nil || again != r {
			t.Fatalf("round trip of %q: %v, %v", s, again, err)
		}
	})
}

func FuzzDecodeManifest(f *testing.F) {
	valid := `{"schema_version":1,"build_id":"` + strings.Repeat("a", 64) + `","created":"2026-01-01T00:00:00Z",` +
		`"kernel":{"digest":"sha256:` + strings.Repeat("0", 64) + `","size":1,"format":"pvh"},` +
		`"rootfs":{"digest":"sha256:` + strings.Repeat("1", 64) + `","size":1,"format":"qcow2"},` +
		`"packages":[{"name":"bash","version":"5","sha256":"x"}],"config":{"disk_size":"4G"},"modules":["virtio_blk"]}`
	f.Add([]byte(valid))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"schema_version":1,"kernel":{"digest":"sha256:../../etc/passwd","format":"pvh"}}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeManifest(data)
		if err != nil {
			return
		}
		s := &Store{root: "/store"}
		for _, file := range m.files() {
			if file.file.IsZero() {
				continue
			}
			p := s.Path(file.file)
			if !strings.HasPrefix(p, "/store/blobs/sha256/") || filepath.Clean(p) != p {
				t.Fatalf("manifest %q gives %s path %q", data, file.role, p)
			}
		}
		if _, err := encodeManifest(m); err != nil {
			t.Fatal(err)
		}
	})
}
