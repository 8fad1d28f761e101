package imagestore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/imagestore/internal/format"
	"github.com/gondolin/gondolin/imagestore/internal/rootfs"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/qcow2"
)

// File names of an exported image directory: the manifest and one file
// per blob, named by its role.
const (
	ExportManifest  = "manifest.json"
	ExportKernel    = "kernel"
	ExportInitramfs = "initramfs"
	ExportRootfs    = "rootfs.qcow2"
	ExportAgent     = "agent"
)

// File names of a bare guest directory that Import also accepts.
const (
	bareVmlinux   = "vmlinux"
	bareBzImage   = "bzImage"
	bareInitramfs = "initramfs.cpio"
	bareQcow2     = "rootfs.qcow2"
	bareRaw       = "rootfs.img"
)

var exportNames = map[string]string{
	"kernel": ExportKernel, "initramfs": ExportInitramfs, "rootfs": ExportRootfs, "agent": ExportAgent,
}

// Size limits for imported files: a distribution kernel is 10-70 MB and
// an initramfs with modules a few tens, so anything far bigger is a
// mistake or hostile; a disk is bounded like a build's.
const (
	maxKernelSize    = 256 << 20
	maxInitramfsSize = 1 << 30
	maxAgentSize     = 256 << 20
	maxImportDisk    = maxDiskSize
)

// Export writes the image spec resolves to into dir (created; it must
// not exist or be empty): manifest.json, byte for byte the stored
// manifest, and its blobs as kernel, initramfs, rootfs.qcow2 and agent.
// Each blob is checked against its digest on the way out.
func (s *Store) Export(spec, dir string) (*Image, error) {
	im, err := s.Resolve(spec)
	if err != nil {
		return nil, err
	}
	created, err := makeEmptyDir(dir)
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", spec, err)
	}
	var written []string
	fail := func(err error) (*Image, error) {
		for _, p := range written {
			os.Remove(p)
		}
		if created {
			os.Remove(dir)
		}
		return nil, fmt.Errorf("export %s: %w", spec, err)
	}
	for _, f := range im.Manifest.files() {
		if f.file.IsZero() {
			continue
		}
		dst := filepath.Join(dir, exportNames[f.role])
		written = append(written, dst)
		if err := copyBlob(s.Path(f.file), dst, f.file); err != nil {
			return fail(fmt.Errorf("%s: %w", f.role, err))
		}
	}
	h, _ := digestHex(im.ID)
	data, err := os.ReadFile(filepath.Join(s.blobDir(), h))
	if err != nil {
		return fail(err)
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != h {
		return fail(fmt.Errorf("%w: manifest blob is corrupt (digest mismatch)", errdefs.ErrInvalid))
	}
	dst := filepath.Join(dir, ExportManifest)
	written = append(written, dst)
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		return fail(err)
	}
	return im, nil
}

// makeEmptyDir creates dir, or accepts an existing empty directory.
func makeEmptyDir(dir string) (created bool, err error) {
	err = os.Mkdir(dir, 0o755)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return false, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	if len(entries) > 0 {
		return false, fmt.Errorf("%w: %s is not empty", errdefs.ErrInvalid, dir)
	}
	return false, nil
}

// copyBlob copies a blob to a new file and checks its digest and size.
func copyBlob(src, dst string, want File) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if got := idPrefix + hex.EncodeToString(h.Sum(nil)); got != want.Digest || n != want.Size {
		return fmt.Errorf("%w: blob %s is corrupt (digest or size mismatch)", errdefs.ErrInvalid, want.Digest)
	}
	return nil
}

// Import stores the guest files in dir as a new image, untagged. dir is
// either what Export wrote (manifest.json and the blobs by name) or a
// bare directory with vmlinux (a PVH ELF) or bzImage, initramfs.cpio (an
// uncompressed newc archive whose /init is the agent), and optionally
// rootfs.qcow2 or rootfs.img (a raw ext4 image, converted to qcow2).
//
// Nothing in dir is trusted: every file is opened through dir (a symlink
// that leaves it is an error), copied into the store's scratch space,
// bounded in size, hashed (a manifest's digests and sizes must match what
// is there), and recognised by its content; a qcow2 disk may not name a
// backing or data file. An imported manifest's build_id is dropped, so a
// later `image build` never mistakes an imported image for its own. The
// store changes only once every file has passed.
func (s *Store) Import(ctx context.Context, dir string) (*Image, error) {
	im, err := s.importDir(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", dir, err)
	}
	return im, nil
}

func (s *Store) importDir(ctx context.Context, dir string) (*Image, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	work, err := os.MkdirTemp(s.TempDir(), "import-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	in := &importer{root: root, work: work}

	var m Manifest
	staged := map[string]string{} // role -> file in work
	if _, err := root.Lstat(ExportManifest); err == nil {
		if m, err = in.manifest(); err != nil {
			return nil, err
		}
		for _, f := range m.files() {
			if f.file.IsZero() {
				continue
			}
			p, got, err := in.copy(exportNames[f.role], maxSizes[f.role])
			if err != nil {
				return nil, err
			}
			if got.Digest != f.file.Digest || got.Size != f.file.Size {
				return nil, fmt.Errorf("%w: %s is %s (%d bytes) but manifest.json says %s (%d bytes)",
					errdefs.ErrInvalid, exportNames[f.role], got.Digest, got.Size, f.file.Digest, f.file.Size)
			}
			staged[f.role] = p
		}
		m.BuildID = ""
	} else {
		if m, staged, err = in.bare(ctx); err != nil {
			return nil, err
		}
	}
	for _, f := range m.files() {
		if !f.file.IsZero() {
			if err := checkFormat(ctx, staged[f.role], f.role, f.file.Format); err != nil {
				return nil, fmt.Errorf("%w: %s: %v", errdefs.ErrInvalid, f.role, err)
			}
		}
	}

	// Every file passed: now the store changes.
	release, err := s.Hold()
	if err != nil {
		return nil, err
	}
	defer release()
	for _, role := range []string{"kernel", "initramfs", "rootfs", "agent"} {
		p, ok := staged[role]
		if !ok {
			continue
		}
		f, err := s.PutFile(p)
		if err != nil {
			return nil, err
		}
		dst := m.file(role)
		if f.Digest != dst.Digest || f.Size != dst.Size {
			return nil, fmt.Errorf("%s changed while being stored", role)
		}
	}
	id, err := s.PutManifest(m)
	if err != nil {
		return nil, err
	}
	return s.Resolve(id)
}

var maxSizes = map[string]int64{
	"kernel": maxKernelSize, "initramfs": maxInitramfsSize, "rootfs": maxImportDisk, "agent": maxAgentSize,
}

// file returns a pointer to the manifest's File for role.
func (m *Manifest) file(role string) *File {
	switch role {
	case "kernel":
		return &m.Kernel
	case "initramfs":
		return &m.Initramfs
	case "rootfs":
		return &m.Rootfs
	case "agent":
		return &m.Agent
	}
	panic("unknown role " + role)
}

// importer reads files of an import directory through its root.
type importer struct {
	root *os.Root
	work string
}

// open opens a regular file of the directory. O_NONBLOCK keeps a fifo
// from blocking the open; it changes nothing for a regular file.
func (in *importer) open(name string) (*os.File, int64, error) {
	f, err := in.root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, 0, fmt.Errorf("%w: %s is missing", errdefs.ErrInvalid, name)
		case strings.Contains(err.Error(), "escapes"):
			// os.Root's error for a path that resolves outside it has
			// no exported value to match.
			return nil, 0, fmt.Errorf("%w: %s is a symlink that leaves the directory", errdefs.ErrInvalid, name)
		}
		return nil, 0, err
	}
	st, err := f.Stat()
	if err == nil && !st.Mode().IsRegular() {
		err = fmt.Errorf("%w: %s is not a regular file", errdefs.ErrInvalid, name)
	}
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, st.Size(), nil
}

func (in *importer) exists(name string) bool {
	_, err := in.root.Lstat(name)
	return err == nil
}

// copy copies a file of the directory into the work directory, bounded
// by max bytes, and returns the copy and its digest and size.
func (in *importer) copy(name string, max int64) (string, File, error) {
	src, size, err := in.open(name)
	if err != nil {
		return "", File{}, err
	}
	defer src.Close()
	if size > max {
		return "", File{}, fmt.Errorf("%w: %s is %d bytes, more than the %d allowed", errdefs.ErrInvalid, name, size, max)
	}
	dst := filepath.Join(in.work, name)
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", File{}, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), io.LimitReader(src, max+1))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", File{}, fmt.Errorf("copy %s: %w", name, err)
	}
	if n > max {
		return "", File{}, fmt.Errorf("%w: %s grew past the %d bytes allowed", errdefs.ErrInvalid, name, max)
	}
	return dst, File{Digest: digestOf(h), Size: n}, nil
}

func digestOf(h hash.Hash) string { return idPrefix + hex.EncodeToString(h.Sum(nil)) }

// manifest reads and validates manifest.json.
func (in *importer) manifest() (Manifest, error) {
	f, size, err := in.open(ExportManifest)
	if err != nil {
		return Manifest{}, err
	}
	defer f.Close()
	if size > maxManifestSize {
		return Manifest{}, fmt.Errorf("%w: %s is larger than %d bytes", errdefs.ErrInvalid, ExportManifest, maxManifestSize)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxManifestSize))
	if err != nil {
		return Manifest{}, err
	}
	m, err := decodeManifest(data)
	if err != nil {
		return Manifest{}, fmt.Errorf("%s: %w", ExportManifest, err)
	}
	return m, nil
}

// bare stages the files of a directory without a manifest and describes
// them in a new one.
func (in *importer) bare(ctx context.Context) (Manifest, map[string]string, error) {
	m := Manifest{SchemaVersion: SchemaVersion, Created: time.Now().UTC().Truncate(time.Second)}
	staged := map[string]string{}
	var err error
	switch hasVM, hasBz := in.exists(bareVmlinux), in.exists(bareBzImage); {
	case hasVM && hasBz:
		return m, nil, fmt.Errorf("%w: both %s and %s are there; keep one", errdefs.ErrInvalid, bareVmlinux, bareBzImage)
	case hasVM:
		staged["kernel"], m.Kernel, err = in.copy(bareVmlinux, maxKernelSize)
		m.Kernel.Format = FormatPVH
	case hasBz:
		staged["kernel"], m.Kernel, err = in.copy(bareBzImage, maxKernelSize)
		m.Kernel.Format = FormatBzImage
	default:
		return m, nil, fmt.Errorf("%w: no %s, no %s and no %s: not an image directory", errdefs.ErrInvalid, ExportManifest, bareVmlinux, bareBzImage)
	}
	if err != nil {
		return m, nil, err
	}
	if !in.exists(bareInitramfs) {
		return m, nil, fmt.Errorf("%w: no %s (the initramfs whose /init is the gondolin agent)", errdefs.ErrInvalid, bareInitramfs)
	}
	if staged["initramfs"], m.Initramfs, err = in.copy(bareInitramfs, maxInitramfsSize); err != nil {
		return m, nil, err
	}
	m.Initramfs.Format = FormatCpio
	switch hasQ, hasRaw := in.exists(bareQcow2), in.exists(bareRaw); {
	case hasQ && hasRaw:
		return m, nil, fmt.Errorf("%w: both %s and %s are there; keep one", errdefs.ErrInvalid, bareQcow2, bareRaw)
	case hasQ:
		staged["rootfs"], m.Rootfs, err = in.copy(bareQcow2, maxImportDisk)
	case hasRaw:
		staged["rootfs"], m.Rootfs, err = in.convertRaw(ctx)
	}
	if err != nil {
		return m, nil, err
	}
	if !m.Rootfs.IsZero() {
		m.Rootfs.Format = FormatQcow2
	}
	return m, staged, nil
}

// convertRaw turns rootfs.img, a raw ext4 image, into a qcow2 in the work
// directory. qemu-img reads the file already opened through the root (as
// /dev/fd/3), never a path it could resolve differently, and is told the
// format rather than left to guess it.
func (in *importer) convertRaw(ctx context.Context) (string, File, error) {
	src, size, err := in.open(bareRaw)
	if err != nil {
		return "", File{}, err
	}
	defer src.Close()
	if size > maxImportDisk {
		return "", File{}, fmt.Errorf("%w: %s is %d bytes, more than the %d allowed", errdefs.ErrInvalid, bareRaw, size, int64(maxImportDisk))
	}
	if err := format.Ext(src, size); err != nil {
		return "", File{}, fmt.Errorf("%w: %s: %v", errdefs.ErrInvalid, bareRaw, err)
	}
	dst := filepath.Join(in.work, bareQcow2)
	cmd, err := rootfs.Command(ctx, "", "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "/dev/fd/3", dst)
	if err != nil {
		return "", File{}, err
	}
	cmd.ExtraFiles = []*os.File{src}
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", File{}, fmt.Errorf("convert %s to qcow2: %w%s", bareRaw, err, rootfs.StderrTail(out))
	}
	f, err := os.Open(dst)
	if err != nil {
		return "", File{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", File{}, err
	}
	return dst, File{Digest: digestOf(h), Size: n}, nil
}

// checkFormat recognises a staged file by its content.
func checkFormat(ctx context.Context, path, role, fileFormat string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	switch fileFormat {
	case FormatPVH:
		return format.PVH(f, size)
	case FormatBzImage:
		return format.BzImage(f, size)
	case FormatCpio:
		return format.Cpio(f, size)
	case FormatELF:
		return format.StaticELF(f, size)
	case FormatQcow2:
		if err := qcow2.SelfContained(f, size); err != nil {
			return err
		}
		return qemuImgCheck(ctx, path)
	}
	return fmt.Errorf("unknown format %q for %s", fileFormat, role)
}

// qemuImgCheck asks qemu-img, which parses qcow2 as QEMU will, whether
// the file is a self-contained qcow2 image of a sane size. The format is
// given, never probed, and the header was checked for a backing file
// first (qemu-img info would open one).
func qemuImgCheck(ctx context.Context, path string) error {
	out, err := rootfs.Run(ctx, "", "qemu-img", "info", "--output=json", "-f", "qcow2", path)
	if err != nil {
		return err
	}
	info, err := qcow2.ParseInfo(out)
	if err != nil {
		return fmt.Errorf("qemu-img info: %w", err)
	}
	return info.Check("", maxImportDisk)
}
