package debian

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/cavaliergopher/cpio"
	"github.com/gondolin/gondolin/internal/kmod"
)

// cpioFile is an entry of a cpio archive, with its content.
type cpioFile struct {
	*cpio.Header
	data string
}

// readCpio reads a whole cpio archive, in order, and checks that root
// owns every entry.
func readCpio(t *testing.T, r io.Reader) []cpioFile {
	t.Helper()
	cr := cpio.NewReader(r)
	var files []cpioFile
	for {
		hdr, err := cr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Uid != 0 || hdr.Guid != 0 {
			t.Errorf("%s owned by %d:%d", hdr.Name, hdr.Uid, hdr.Guid)
		}
		b, err := io.ReadAll(cr)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, cpioFile{hdr, string(b)})
	}
}

func TestInitramfs(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	os.WriteFile(agent, []byte("agent binary"), 0o755)
	ko := filepath.Join(dir, "virtio_blk.ko")
	os.WriteFile(ko, []byte("module!"), 0o644)
	ix := kmod.Index{Release: "6.1.0-test", Modules: []kmod.Module{{Name: "virtio_blk", Path: "kernel/drivers/block/virtio_blk.ko"}}}
	mods := []moduleFile{{Module: ix.Modules[0], src: ko}}

	write := func() []byte {
		entries, err := initramfsEntries(agent, ix, mods)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := writeCpio(&buf, entries); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	data := write()
	if !bytes.Equal(data, write()) {
		t.Fatal("the same inputs gave different archives")
	}

	var names []string
	contents := map[string]string{}
	modes := map[string]cpio.FileMode{}
	for _, f := range readCpio(t, bytes.NewReader(data)) {
		if f.ModTime.Unix() != 0 {
			t.Errorf("%s: mtime %v", f.Name, f.ModTime)
		}
		names = append(names, f.Name)
		modes[f.Name] = f.Mode
		contents[f.Name] = f.data
	}
	want := []string{"dev", "dev/console", "init", "lib", "lib/modules", "lib/modules/6.1.0-test", "lib/modules/6.1.0-test/kernel",
		"lib/modules/6.1.0-test/kernel/drivers", "lib/modules/6.1.0-test/kernel/drivers/block",
		"lib/modules/6.1.0-test/kernel/drivers/block/virtio_blk.ko", "lib/modules/index.json", "newroot", "proc", "run", "sys", "tmp"}
	if !slices.Equal(names, want) {
		t.Fatalf("entries\n%q\nwant\n%q", names, want)
	}
	if contents["init"] != "agent binary" || modes["init"] != cpio.TypeReg|0o755 {
		t.Errorf("init: %q mode %o", contents["init"], modes["init"])
	}
	if contents["lib/modules/6.1.0-test/kernel/drivers/block/virtio_blk.ko"] != "module!" {
		t.Error("module content")
	}
	if modes["dev/console"] != cpio.TypeChar|0o600 || modes["tmp"] != cpio.TypeDir|0o1777 {
		t.Errorf("modes: console %o tmp %o", modes["dev/console"], modes["tmp"])
	}
	var got kmod.Index
	if err := json.Unmarshal([]byte(contents["lib/modules/index.json"]), &got); err != nil || got.Release != ix.Release || len(got.Modules) != 1 {
		t.Errorf("index.json = %+v, %v", got, err)
	}
	// The cpio reader ignores device numbers: check /dev/console's
	// rdevmajor and rdevminor fields in the raw header.
	i := bytes.Index(data, []byte("dev/console\x00"))
	if i < 110 {
		t.Fatal("no dev/console header")
	}
	hdr := data[i-110 : i]
	major, _ := strconv.ParseUint(string(hdr[78:86]), 16, 32)
	minor, _ := strconv.ParseUint(string(hdr[86:94]), 16, 32)
	if major != 5 || minor != 1 {
		t.Errorf("dev/console rdev %d:%d, want 5:1", major, minor)
	}
	if !bytes.HasSuffix(bytes.TrimRight(data, "\x00"), []byte("TRAILER!!!")) {
		t.Error("no trailer")
	}
}
