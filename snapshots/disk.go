package snapshots

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/gondolin/gondolin/internal/atomicfile"
)

// CopyDisk copies a paused VM's overlay into a snapshot.
func CopyDisk(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return atomicfile.Write(dst, 0o600, func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	})
}

// qemuImg runs qemu-img and returns its output.
func qemuImg(ctx context.Context, args ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("qemu-img %s: %v: %s", args[0], err, bytes.TrimSpace(out))
	}
	return out, nil
}

// backingFile returns a qcow2 file's backing file, resolved as QEMU does
// (relative to the file's directory).
func backingFile(path string) (string, error) {
	out, err := exec.Command("qemu-img", "info", "--output=json", "-U", path).Output()
	if err != nil {
		return "", fmt.Errorf("qemu-img info: %v", err)
	}
	var info struct {
		Format  string `json:"format"`
		Backing string `json:"backing-filename"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return "", err
	}
	if info.Format != "qcow2" {
		return "", fmt.Errorf("format %q, not qcow2", info.Format)
	}
	if info.Backing == "" {
		return "", fmt.Errorf("no backing file")
	}
	if !filepath.IsAbs(info.Backing) {
		return filepath.Join(filepath.Dir(path), info.Backing), nil
	}
	return info.Backing, nil
}

// Flatten rebases a copied overlay onto the image's root disk, pulling in
// what the layers between them (a template's disk) held, so the snapshot
// depends on the image alone.
func Flatten(ctx context.Context, disk, base string) error {
	current, err := backingFile(disk)
	if err != nil {
		return err
	}
	if current == base {
		return nil
	}
	_, err = qemuImg(ctx, "rebase", "-f", "qcow2", "-b", base, "-F", "qcow2", disk)
	return err
}

// ResumeBacking returns the disk a resumed session's overlay goes on. That
// is the snapshot's own disk when its backing file (the image's root disk)
// is where it says; otherwise the disk is copied into dir and its backing
// path repaired to base there, so the snapshot itself never changes.
func ResumeBacking(ctx context.Context, s *Snapshot, base, dir string) (string, error) {
	disk := s.DiskPath()
	current, err := backingFile(disk)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %v", ErrCorrupt, disk, err)
	}
	if current == base {
		return disk, nil
	}
	if _, err := os.Stat(current); err == nil && filepath.Base(current) == filepath.Base(base) {
		return disk, nil // the same blob in another store: still valid
	}
	repaired := filepath.Join(dir, "snapshot-disk.qcow2")
	if err := CopyDisk(disk, repaired); err != nil {
		return "", err
	}
	if _, err := qemuImg(ctx, "rebase", "-u", "-f", "qcow2", "-b", base, "-F", "qcow2", repaired); err != nil {
		return "", err
	}
	return repaired, nil
}
