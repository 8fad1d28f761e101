package snapshots

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/gondolin/gondolin/internal/qcow2"
	"github.com/gondolin/gondolin/internal/testreq"
)

// qcow2At creates a 16M qcow2 at path with qemu-img.
func qcow2At(t *testing.T, path string, args ...string) string {
	t.Helper()
	args = append([]string{"create", "-q", "-f", "qcow2"}, append(args, path, "16M")...)
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v: %s", args, err, out)
	}
	return path
}

// renameBacking records another backing file name in a qcow2, opening
// neither.
func renameBacking(t *testing.T, path, backing, format string) {
	t.Helper()
	if out, err := exec.Command("qemu-img", "rebase", "-u", "-f", "qcow2", "-F", format, "-b", backing, path).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
}

func header(t *testing.T, path string) qcow2.Header {
	t.Helper()
	h, _, err := readHeader(path)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestForeignBacking: a foreign disk is copied and checked before
// qemu-img sees it; its backing file, whatever it names, is never
// opened, and becomes this home's image root disk when it is named after
// it; anything that would make QEMU open another file is refused.
func TestForeignBacking(t *testing.T) {
	testreq.Tool(t, "qemu-img")
	const digest = "0cc494d8e36cc79605e34d3e846a360ad6781742818154d00c7305b32e7300a5"
	base := qcow2At(t, filepath.Join(t.TempDir(), digest))
	// Another home's copy of the same image: a foreign snapshot's disk
	// names it, and it must not be opened (here it is a file of the
	// user's that merely has the name).
	elsewhere := qcow2At(t, filepath.Join(t.TempDir(), digest))
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("host secret"), 0o600)

	for _, tt := range []struct {
		name string
		make func(t *testing.T, path string) // the foreign disk
		want string                          // "": accepted
		// backing is what the accepted copy must be on ("" none).
		backing string
	}{
		{"self-contained", func(t *testing.T, p string) { qcow2At(t, p) }, "", ""},
		{"on this home's image", func(t *testing.T, p string) { qcow2At(t, p, "-F", "qcow2", "-b", base) }, "", base},
		{"on another home's copy of the image", func(t *testing.T, p string) { qcow2At(t, p, "-F", "qcow2", "-b", elsewhere) }, "", base},
		{"relative backing name", func(t *testing.T, p string) {
			qcow2At(t, p, "-F", "qcow2", "-b", elsewhere)
			renameBacking(t, p, digest, "qcow2")
		}, "", base},
		{"backing file on a host file", func(t *testing.T, p string) {
			qcow2At(t, p, "-F", "raw", "-b", secret)
		}, "is not the root disk", ""},
		{"backing file on /etc/shadow", func(t *testing.T, p string) {
			qcow2At(t, p, "-F", "qcow2", "-b", elsewhere)
			renameBacking(t, p, "/etc/shadow", "raw")
		}, "is not the root disk", ""},
		{"external data file", func(t *testing.T, p string) {
			qcow2At(t, p, "-o", "data_file="+secret+".raw", "-F", "qcow2", "-b", base)
		}, "external file", ""},
		{"symlink to a disk", func(t *testing.T, p string) {
			os.Symlink(qcow2At(t, p+".real", "-F", "qcow2", "-b", base), p)
		}, "symbolic link", ""},
		{"symlink to a host file", func(t *testing.T, p string) { os.Symlink(secret, p) }, "symbolic link", ""},
		{"fifo", func(t *testing.T, p string) { syscall.Mkfifo(p, 0o600) }, "not a regular file", ""},
		{"virtual size past the bound", func(t *testing.T, p string) {
			if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", p, "2T").CombinedOutput(); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
		}, "out of range", ""},
		{"not a qcow2", func(t *testing.T, p string) { os.WriteFile(p, bytes.Repeat([]byte{0}, 4096), 0o600) }, "QFI", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			disk := filepath.Join(t.TempDir(), "theirs.qcow2")
			tt.make(t, disk)
			var before []byte
			if tt.want == "" {
				before, _ = os.ReadFile(disk)
			}
			s := &Snapshot{ID: "000000000000", Kind: Disk, Path: disk}
			dir := t.TempDir()
			got, err := ForeignBacking(t.Context(), s, base, dir)
			if tt.want != "" {
				if !errors.Is(err, errBadRequest) || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
					t.Fatalf("err = %v; want a one-line refusal about %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != filepath.Join(dir, ResumeDisk) {
				t.Errorf("backing %s: not a copy in the run directory", got)
			}
			if h := header(t, got); h.BackingFile != tt.backing {
				t.Errorf("the copy is on %q, want %q", h.BackingFile, tt.backing)
			}
			if after, _ := os.ReadFile(disk); !bytes.Equal(before, after) {
				t.Error("the snapshot's disk changed")
			}
		})
	}

	t.Run("checksum", func(t *testing.T) {
		disk := qcow2At(t, filepath.Join(t.TempDir(), "theirs.qcow2"), "-F", "qcow2", "-b", base)
		b, _ := os.ReadFile(disk)
		sum := sha256.Sum256(b)
		s := &Snapshot{ID: "000000000000", Kind: Disk, Path: disk,
			Files: []File{{Name: DiskFile, Size: int64(len(b)), SHA256: hex.EncodeToString(sum[:])}}}
		if _, err := ForeignBacking(t.Context(), s, base, t.TempDir()); err != nil {
			t.Fatalf("a disk matching its checksum: %v", err)
		}
		s.Files[0].SHA256 = strings.Repeat("0", 64)
		if _, err := ForeignBacking(t.Context(), s, base, t.TempDir()); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("a disk not matching its checksum: %v", err)
		}
	})
}
