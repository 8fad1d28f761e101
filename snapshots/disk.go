package snapshots

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/internal/atomicfile"
	"github.com/gondolin/gondolin/internal/qcow2"
)

// ResumeDisk, in a resumed session's run directory, is the snapshot's
// disk when it could not be used where it is: a copy, checked (a foreign
// snapshot's) or repaired (an own snapshot whose image moved).
const ResumeDisk = "snapshot-disk.qcow2"

// maxDiskSize bounds a foreign disk's virtual size, as image import
// bounds an imported root disk's.
const maxDiskSize = 1 << 40

// openRegular opens a file a snapshot names for reading, and only if it
// is a regular file: a FIFO would hang the open or the read, a device
// would never end. With follow false a symbolic link is refused too.
func openRegular(path string, follow bool) (*os.File, os.FileInfo, error) {
	flags := os.O_RDONLY | syscall.O_NONBLOCK
	if !follow {
		flags |= syscall.O_NOFOLLOW
	}
	f, err := os.OpenFile(path, flags, 0)
	if errors.Is(err, syscall.ELOOP) && !follow {
		return nil, nil, fmt.Errorf("%s is a symbolic link; name the file itself", path)
	}
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err == nil && !st.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", path)
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, st, nil
}

// readHeader parses the qcow2 header of the file at path.
func readHeader(path string) (qcow2.Header, time.Time, error) {
	f, st, err := openRegular(path, true)
	if err != nil {
		return qcow2.Header{}, time.Time{}, err
	}
	defer f.Close()
	h, err := qcow2.ReadHeader(f, st.Size())
	return h, st.ModTime(), err
}

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
// hostToolError is a failure of a host tool rather than of the file it
// read.
type hostToolError struct{ err error }

func (e *hostToolError) Error() string { return e.err.Error() }

// corruptUnlessHost reads a failure to read disk's header as the
// snapshot's damage (ErrCorrupt), unless the host's tool failed.
func corruptUnlessHost(disk string, err error) error {
	var he *hostToolError
	if errors.As(err, &he) {
		return err
	}
	return fmt.Errorf("%w: %s: %v", ErrCorrupt, disk, err)
}

func backingFile(path string) (string, error) {
	out, err := exec.Command("qemu-img", "info", "--output=json", "-U", path).Output()
	if err != nil {
		// The host's tool failed (missing, or the file unreadable): not
		// the snapshot's fault, so not ErrCorrupt.
		return "", &hostToolError{fmt.Errorf("qemu-img info %s: %v", path, err)}
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
		return "", corruptUnlessHost(disk, err)
	}
	if current == base {
		return disk, nil
	}
	if _, err := os.Stat(current); err == nil && filepath.Base(current) == filepath.Base(base) {
		return disk, nil // the same blob in another store: still valid
	}
	repaired := filepath.Join(dir, ResumeDisk)
	if err := CopyDisk(disk, repaired); err != nil {
		return "", err
	}
	if _, err := qemuImg(ctx, "rebase", "-u", "-f", "qcow2", "-b", base, "-F", "qcow2", repaired); err != nil {
		return "", err
	}
	return repaired, nil
}

// ForeignBacking returns the disk a resumed session's overlay goes on for
// a snapshot this home did not make (see Store.Own), without qemu-img or
// QEMU ever reading the file where it lies. Its disk must be a regular
// file, not a symbolic link, and a qcow2 with no external data file
// (image import's checks). It is copied into dir, and the checks are made
// again on the copy, which is what QEMU opens; the file itself may change
// meanwhile. A self-contained disk is used as it is. A disk with a
// backing file must name base's blob (the image root disk with the
// digest this home booted it from): its recorded path, which could be
// any file (/etc/shadow, another home's snapshot), is never opened, but
// replaced with base.
func ForeignBacking(ctx context.Context, s *Snapshot, base, dir string) (string, error) {
	src := s.DiskPath()
	in, st, err := openRegular(src, false)
	if err != nil {
		return "", fmt.Errorf("%w: %v", errBadRequest, err)
	}
	defer in.Close()
	// A first look before copying what may be a large file that is no
	// snapshot at all.
	if _, err := checkForeignHeader(in, st.Size(), base); err != nil {
		return "", fmt.Errorf("%w: %s: %v", errBadRequest, src, err)
	}
	dst := filepath.Join(dir, ResumeDisk)
	h := sha256.New()
	var n int64
	if err := atomicfile.Write(dst, 0o600, func(w io.Writer) (err error) {
		n, err = io.Copy(io.MultiWriter(w, h), in)
		return err
	}); err != nil {
		return "", err
	}
	if want, ok := s.file(DiskFile); ok && (want.Size != n || want.SHA256 != hex.EncodeToString(h.Sum(nil))) {
		return "", fmt.Errorf("%w: %s does not match its checksum", ErrCorrupt, src)
	}
	hdr, err := checkCopy(dst, base)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %v", errBadRequest, src, err)
	}
	backing := ""
	if hdr.BackingFile != "" {
		backing = base
		if _, err := qemuImg(ctx, "rebase", "-u", "-f", "qcow2", "-b", base, "-F", "qcow2", dst); err != nil {
			return "", foreignDiskError(ctx, src, err)
		}
	}
	out, err := qemuImg(ctx, "info", "--output=json", "-f", "qcow2", dst)
	if err != nil {
		return "", foreignDiskError(ctx, src, err)
	}
	info, err := qcow2.ParseInfo(out)
	if err != nil {
		return "", fmt.Errorf("qemu-img info: %w", err)
	}
	if err := info.Check(backing, maxDiskSize); err != nil {
		return "", fmt.Errorf("%w: %s: %v", errBadRequest, src, err)
	}
	return dst, nil
}

// foreignDiskError is qemu-img failing on a foreign disk's copy: the disk
// is at fault, and what qemu-img said goes on one line.
func foreignDiskError(ctx context.Context, src string, err error) error {
	if ctx.Err() != nil {
		return err // not the disk: the caller gave up
	}
	return fmt.Errorf("%w: %s: %s", errBadRequest, src, strings.Join(strings.Fields(err.Error()), " "))
}

func checkCopy(path, base string) (qcow2.Header, error) {
	f, st, err := openRegular(path, false)
	if err != nil {
		return qcow2.Header{}, err
	}
	defer f.Close()
	return checkForeignHeader(f, st.Size(), base)
}

// checkForeignHeader reads a foreign disk's header: a qcow2 that opens no
// other file, or whose backing file is named after base's blob.
func checkForeignHeader(r io.ReaderAt, size int64, base string) (qcow2.Header, error) {
	h, err := qcow2.ReadHeader(r, size)
	if err != nil {
		return h, err
	}
	if err := h.Check(); err != nil {
		return h, err
	}
	if h.BackingFile != "" && filepath.Base(h.BackingFile) != filepath.Base(base) {
		return h, fmt.Errorf("its backing file %q is not the root disk of this home's image %s", h.BackingFile, filepath.Base(base))
	}
	return h, nil
}
