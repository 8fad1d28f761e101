package main

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gondolin/gondolin/imagestore/oci/ocitest"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testenv"
)

// busyboxLayer is a layer with the host's static busybox as /bin/busybox
// and the applets the tests run.
func busyboxLayer(t *testing.T) v1.Layer {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err == nil {
		var f *elf.File
		if f, err = elf.NewFile(bytes.NewReader(bb)); err == nil {
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP {
					err = errors.New("it is dynamically linked")
				}
			}
		}
	}
	if err != nil {
		msg := fmt.Sprintf("needs a static /bin/busybox (apt-get install busybox-static): %v", err)
		if os.Getenv(testenv.EnvRequireVM) != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return ocitest.Layer(t,
		ocitest.Dir("bin/"),
		ocitest.Executable("bin/busybox", string(bb)),
		ocitest.Symlink("bin/sh", "busybox"),
		ocitest.Symlink("bin/cat", "busybox"),
	)
}

// storeFiles lists the files of a home's image store (scratch space
// included), to show that a failed command left nothing.
func storeFiles(t *testing.T, home layout.Home) []string {
	t.Helper()
	var files []string
	filepath.WalkDir(home.Images(), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(home.Images(), p)
			files = append(files, rel)
		}
		return nil
	})
	return files
}

// TestImagePullAndExec pulls an image made here from an in-process
// registry and runs a command in it that only it has.
func TestImagePullAndExec(t *testing.T) {
	home := testenv.PrivateHome(t) // it changes the image store
	host := ocitest.Registry(t)
	ref := host + "/test/img:1"
	const content = "only in the pulled image\n"
	ocitest.Push(t, ref, ocitest.Image(t, v1.Config{Env: []string{"PATH=/bin", "FROM_IMAGE=yes"}, WorkingDir: "/"},
		busyboxLayer(t),
		ocitest.Layer(t, ocitest.File("only-here.txt", content)),
	))

	r := gondolin(t, home, "", "image", "pull", "--insecure", ref)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "img:1 ") || !strings.Contains(r.stdout, "(pulled)") {
		t.Fatalf("pull: code %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if r.stderr != "" {
		t.Errorf("pull wrote progress into a pipe: %q", r.stderr)
	}
	r = gondolin(t, home, "", "exec", "--image", "img:1", "--", "cat", "/only-here.txt")
	if r.code != 0 || r.stdout != content {
		t.Fatalf("exec in the pulled image: code %d\nstdout: %q\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	// The default image does not have the file.
	if r := gondolin(t, home, "", "exec", "--", "cat", "/only-here.txt"); r.code == 0 {
		t.Errorf("the default image has /only-here.txt: %q", r.stdout)
	}

	r = gondolin(t, home, "", "image", "pull", "--insecure", "--tag", "again:1", ref)
	if r.code != 0 || !strings.Contains(r.stdout, "(up to date)") || !strings.Contains(r.stdout, "again:1, img:1") {
		t.Fatalf("second pull: code %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	r = gondolin(t, home, "", "image", "inspect", "img:1")
	var im struct {
		Manifest struct {
			OCI struct {
				Source string   `json:"source"`
				Env    []string `json:"env"`
			} `json:"oci"`
		} `json:"manifest"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &im); err != nil || im.Manifest.OCI.Source != ref || len(im.Manifest.OCI.Env) != 2 {
		t.Errorf("inspect: %v\n%s", err, r.stdout)
	}
	if r := gondolin(t, home, "", "image", "ls"); !strings.Contains(r.stdout, "again:1,img:1") || !strings.Contains(r.stdout, ref) {
		t.Errorf("image ls:\n%s", r.stdout)
	}
}

// TestImagePullRejectsEscapes: a layer entry that would land outside the
// root, or a hard link to a host file, fails the pull with one line that
// names the layer and the entry, and leaves the store as it was.
func TestImagePullRejectsEscapes(t *testing.T) {
	home := testenv.PrivateHome(t) // it changes the image store
	host := ocitest.Registry(t)
	base := ocitest.Layer(t, ocitest.Dir("etc/"), ocitest.File("etc/hostname", "guest\n"))
	for _, tt := range []struct {
		repo  string
		layer v1.Layer
		want  string
	}{
		{"dotdot", ocitest.Layer(t, ocitest.File("../../etc/cron.d/evil", "* * * * * root sh")),
			`entry "../../etc/cron.d/evil": path "../../etc/cron.d/evil" escapes the root`},
		{"hardlink", ocitest.Layer(t, ocitest.Hardlink("passwd", "/etc/passwd")),
			`entry "passwd": hard link target "/etc/passwd" is absolute`},
		{"hardlink-up", ocitest.Layer(t, ocitest.Hardlink("shadow", "../../../etc/shadow")),
			`entry "shadow": hard link target: path "../../../etc/shadow" escapes the root`},
		{"symlink-up", ocitest.Layer(t, ocitest.Symlink("etc/evil", "../../../../root")),
			`entry "etc/evil": symlink target "../../../../root" escapes the root`},
	} {
		t.Run(tt.repo, func(t *testing.T) {
			ref := host + "/evil/" + tt.repo + ":1"
			ocitest.Push(t, ref, ocitest.Image(t, v1.Config{}, base, tt.layer))
			before := storeFiles(t, home)
			r := gondolin(t, home, "", "image", "pull", "--insecure", ref)
			if r.code != 2 || !strings.Contains(r.stderr, "layer 2 of 2 (") || !strings.Contains(r.stderr, tt.want) ||
				strings.Count(r.stderr, "\n") != 1 {
				t.Fatalf("pull: code %d\nstderr: %s\nwant exit 2 and one line with %q", r.code, r.stderr, tt.want)
			}
			if after := storeFiles(t, home); strings.Join(after, " ") != strings.Join(before, " ") {
				t.Fatalf("a rejected pull changed the store:\n%v\n%v", before, after)
			}
		})
	}
}

// TestImageRmInUse: an image a session uses is not removed without -f.
func TestImageRmInUse(t *testing.T) {
	home := testenv.PrivateHome(t) // it changes the image store
	r := gondolin(t, home, "", "image", "inspect", "default")
	var im struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &im); err != nil || im.ID == "" {
		t.Fatalf("inspect: %v: %s %s", err, r.stdout, r.stderr)
	}
	if r := gondolin(t, home, "", "image", "tag", "default", "mine:1"); r.code != 0 {
		t.Fatalf("tag: %d %s", r.code, r.stderr)
	}
	// A session (not running: only its record matters) uses the image.
	session := home.Session("0123456789ab")
	os.MkdirAll(session, 0o700)
	spec := `{"id":"0123456789ab","image_ref":"default:latest","image_id":"` + im.ID + `","spec":{"name":"work"}}`
	if err := os.WriteFile(filepath.Join(session, layout.SpecFile), []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}

	// Another ref still points at the image: untagging is fine.
	if r := gondolin(t, home, "", "image", "rm", "mine:1"); r.code != 0 || r.stdout != "untagged mine:1\n" {
		t.Fatalf("rm mine:1: code %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	before := storeFiles(t, home)
	r = gondolin(t, home, "", "image", "rm", "default")
	if r.code != 125 || !strings.Contains(r.stderr, "in use by session 0123456789ab (work)") || !strings.Contains(r.stderr, "gondolin image rm -f default") {
		t.Fatalf("rm of an image in use: code %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if after := storeFiles(t, home); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Fatalf("a refused rm changed the store:\n%v\n%v", before, after)
	}
	r = gondolin(t, home, "", "image", "rm", "-f", "default")
	if r.code != 0 || !strings.Contains(r.stdout, "untagged default:latest\ndeleted ") || !strings.Contains(r.stderr, "still used by session 0123456789ab") {
		t.Fatalf("rm -f: code %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	// The image is gone: its ref, its manifest (GC of its other files is
	// imagestore's unit tests' business: this home shares them with the
	// other images linked in from the user's store).
	for _, f := range storeFiles(t, home) {
		if strings.HasPrefix(f, "refs/default/") || f == "blobs/sha256/"+strings.TrimPrefix(im.ID, "sha256:") {
			t.Errorf("left after rm -f: %s", f)
		}
	}
	if r := gondolin(t, home, "", "image", "inspect", im.ID); r.code == 0 {
		t.Errorf("inspect after rm -f: %s", r.stdout)
	}
}

// TestImageExportImport: an exported image comes back under a new ref;
// a directory with a symlink out of it is refused.
func TestImageExportImport(t *testing.T) {
	home := testenv.PrivateHome(t) // it changes the image store
	dir := filepath.Join(t.TempDir(), "export")
	if r := gondolin(t, home, "", "image", "export", "default", dir); r.code != 0 {
		t.Fatalf("export: code %d: %s", r.code, r.stderr)
	}
	r := gondolin(t, home, "", "image", "import", "--tag", "copy:1", dir)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "imported ") || !strings.HasSuffix(r.stdout, " as copy:1\n") {
		t.Fatalf("import: code %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}

	bare := t.TempDir()
	os.Symlink("/etc/passwd", filepath.Join(bare, "vmlinux"))
	os.WriteFile(filepath.Join(bare, "initramfs.cpio"), []byte("070701"), 0o644)
	before := storeFiles(t, home)
	r = gondolin(t, home, "", "image", "import", bare)
	if r.code != 2 || !strings.Contains(r.stderr, "vmlinux is a symlink that leaves the directory") {
		t.Fatalf("import of an escaping symlink: code %d\nstderr: %s", r.code, r.stderr)
	}
	if after := storeFiles(t, home); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Fatalf("a refused import changed the store:\n%v\n%v", before, after)
	}
}
