// Package oci turns a container image from an OCI or Docker registry into
// a gondolin guest image: its layers, applied in order with their
// whiteouts into a staging tree that nothing in a layer can escape,
// become an ext4 root disk, which boots with the kernel and initramfs (the
// agent as /init) of the default image. The image's own init, entrypoint
// and command are not run; its config is recorded in the manifest.
package oci

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/klauspost/compress/zstd"

	"github.com/gondolin/gondolin/imagestore"
	"github.com/gondolin/gondolin/imagestore/internal/rootfs"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/progress"
)

// formatVersion changes whenever Pull would make a different root disk
// from the same image, so that FindBuild does not reuse old ones.
const formatVersion = 1

// Limits on what a registry may make us write; a layer count beyond
// maxLayers is no real image.
//
// maxUnpackedBytes bounds both the layers' tar streams and the staging
// tree's Usage, in which every file counts with its apparent size (a
// sparse entry of a few bytes may claim exabytes) and every path with a
// block. The root disk is sized from that Usage (diskSize), so it stays
// under 1.5 times the limit plus 256 MiB, and a pull's peak on the host,
// staging tree, raw image and qcow2 together, under about three times
// the limit. The largest public images unpack to a few tens of GiB.
const (
	maxLayers        = 1000
	maxUnpackedBytes = 64 << 30
	// maxZstdWindow bounds the memory a zstd layer may ask for; zstd
	// --long uses 128 MiB.
	maxZstdWindow = 128 << 20
)

// The guest platform: gondolin boots x86-64 kernels.
var platform = v1.Platform{OS: "linux", Architecture: "amd64"}

// Options configure a pull.
type Options struct {
	// Tag is the local ref pointed at the result; default LocalRef(ref).
	Tag string
	// Insecure allows a registry that speaks plain HTTP.
	Insecure bool
	// Progress shows phases and download progress; default progress.Discard.
	Progress progress.Reporter
}

// Pull fetches the image ref names (a registry reference, such as
// alpine:3 or 127.0.0.1:5000/test/img:1) for linux/amd64, makes it a
// guest image and tags it. Pulling an image the store already has from
// the same registry digest with the same default kernel and initramfs
// only retags it and reports reused = true.
func Pull(ctx context.Context, store *imagestore.Store, ref string, opts Options) (im *imagestore.Image, reused bool, err error) {
	if opts.Progress == nil {
		opts.Progress = progress.Discard
	}
	defer opts.Progress.Done()
	r, err := parseReference(ref, opts.Insecure)
	if err != nil {
		return nil, false, err
	}
	local, err := localRef(r, opts.Tag)
	if err != nil {
		return nil, false, err
	}
	base, err := store.Resolve(layout.DefaultImage)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, false, errdefs.Errorf(errdefs.ErrNotFound, "pull needs the default image for its kernel and agent: run gondolin image build first")
	}
	if err != nil {
		return nil, false, err
	}
	if base.Manifest.Initramfs.IsZero() {
		return nil, false, fmt.Errorf("the default image %s has no initramfs (with the agent as /init) for a pulled root disk to boot with; rebuild it with: gondolin image build", base.ID)
	}

	opts.Progress.Phase("resolving " + r.String())
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithPlatform(platform),
		remote.WithAuthFromKeychain(authn.DefaultKeychain), remote.WithUserAgent("gondolin"))
	if err != nil {
		return nil, false, fmt.Errorf("pull %s: %w", r, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, false, fmt.Errorf("pull %s: %w", r, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, false, fmt.Errorf("pull %s: config: %w", r, err)
	}
	if err := checkPlatform(cfg); err != nil {
		return nil, false, fmt.Errorf("%w: pull %s: %v", errdefs.ErrInvalid, r, err)
	}
	id := buildID(digest.String(), base.Manifest)
	if old, ok := store.FindBuild(id); ok {
		if err := store.Tag(old.ID, local); err != nil {
			return nil, false, err
		}
		im, err := store.Resolve(old.ID)
		return im, true, err
	}

	tools := []string{"mke2fs", "qemu-img"}
	if os.Getuid() != 0 {
		tools = append(tools, "debugfs")
	}
	if err := rootfs.NeedTools(tools...); err != nil {
		return nil, false, err
	}
	work, err := os.MkdirTemp(store.TempDir(), "pull-*")
	if err != nil {
		return nil, false, err
	}
	defer rootfs.RemoveAll(work)
	qcow2, err := makeDisk(ctx, img, work, opts.Progress)
	if err != nil {
		return nil, false, fmt.Errorf("pull %s: %w", r, err)
	}

	opts.Progress.Phase("storing image")
	release, err := store.Hold()
	if err != nil {
		return nil, false, err
	}
	defer release()
	disk, err := store.PutFile(qcow2)
	if err != nil {
		return nil, false, err
	}
	disk.Format = imagestore.FormatQcow2
	c := cfg.Config
	m := imagestore.Manifest{
		SchemaVersion: imagestore.SchemaVersion,
		BuildID:       id,
		Created:       time.Now().UTC().Truncate(time.Second),
		KernelRelease: base.Manifest.KernelRelease,
		Kernel:        base.Manifest.Kernel,
		Initramfs:     base.Manifest.Initramfs,
		Agent:         base.Manifest.Agent,
		Modules:       base.Manifest.Modules,
		Rootfs:        disk,
		OCI: &imagestore.OCIConfig{
			Source: r.Name(), Digest: digest.String(),
			Env: c.Env, WorkingDir: c.WorkingDir, User: c.User, Entrypoint: c.Entrypoint, Cmd: c.Cmd,
		},
	}
	im, err = store.PutTagged(m, local)
	return im, false, err
}

func parseReference(ref string, insecure bool) (name.Reference, error) {
	var nopts []name.Option
	if insecure {
		nopts = append(nopts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nopts...)
	if err != nil {
		return nil, fmt.Errorf("%w: image reference %q: %v", errdefs.ErrInvalid, ref, err)
	}
	return r, nil
}

// LocalRef is the local ref a pull of ref gets by default: the last
// element of the repository and the tag, so 127.0.0.1:5000/test/img:1
// becomes img:1 and alpine becomes alpine:latest; a digest reference gets
// the tag sha256-<first 12 hex digits>.
func LocalRef(ref string) (imagestore.Ref, error) {
	r, err := parseReference(ref, false)
	if err != nil {
		return imagestore.Ref{}, err
	}
	return localRef(r, "")
}

func localRef(r name.Reference, tag string) (imagestore.Ref, error) {
	if tag != "" {
		return imagestore.ParseRef(tag)
	}
	repo := r.Context().RepositoryStr()
	n := repo[strings.LastIndex(repo, "/")+1:]
	t := imagestore.DefaultTag
	switch r := r.(type) {
	case name.Tag:
		t = r.TagStr()
	case name.Digest:
		t = strings.ReplaceAll(r.DigestStr(), ":", "-")
		if len(t) > len("sha256-")+12 {
			t = t[:len("sha256-")+12]
		}
	}
	local, err := imagestore.ParseRef(n + ":" + t)
	if err != nil {
		return imagestore.Ref{}, fmt.Errorf("%w (choose a local name with --tag NAME:TAG)", err)
	}
	return local, nil
}

func checkPlatform(cfg *v1.ConfigFile) error {
	if cfg.OS != "" && cfg.OS != platform.OS || cfg.Architecture != "" && cfg.Architecture != platform.Architecture {
		return fmt.Errorf("the image is for %s/%s; gondolin guests are %s/%s", cfg.OS, cfg.Architecture, platform.OS, platform.Architecture)
	}
	return nil
}

// buildID identifies a pull's inputs: the image's manifest digest in the
// registry and the default image's boot files.
func buildID(imageDigest string, base imagestore.Manifest) string {
	data, _ := json.Marshal(struct {
		Format    int    `json:"format"`
		Image     string `json:"image"`
		Kernel    string `json:"kernel"`
		Initramfs string `json:"initramfs"`
		Agent     string `json:"agent"`
	}{formatVersion, imageDigest, base.Kernel.Digest, base.Initramfs.Digest, base.Agent.Digest})
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// makeDisk applies the image's layers into a staging tree in work, makes
// sure the guest's mount points are there, and returns a qcow2 root disk.
func makeDisk(ctx context.Context, img v1.Image, work string, p progress.Reporter) (string, error) {
	layers, err := img.Layers()
	if err != nil {
		return "", err
	}
	if len(layers) > maxLayers {
		return "", fmt.Errorf("%w: %d layers (at most %d)", errdefs.ErrInvalid, len(layers), maxLayers)
	}
	t, err := rootfs.New(filepath.Join(work, "rootfs"), rootfs.Options{MaxUsage: maxUnpackedBytes})
	if err != nil {
		return "", err
	}
	defer t.Close()
	budget := &limit{left: maxUnpackedBytes}
	for i, l := range layers {
		if err := applyLayer(ctx, t, l, i, len(layers), budget, p); err != nil {
			return "", err
		}
	}
	p.Phase("configuring root filesystem")
	if err := guestSkeleton(t); err != nil {
		return "", err
	}
	if err := t.Finish(); err != nil {
		return "", err
	}
	p.Phase("making root disk")
	size, err := diskSize(t.Usage())
	if err != nil {
		return "", err
	}
	qcow2 := filepath.Join(work, "rootfs.qcow2")
	if err := t.MakeDisk(ctx, qcow2, size); err != nil {
		return "", err
	}
	return qcow2, nil
}

// applyLayer downloads one layer, checks both its digests, and applies
// it. Errors name the layer.
func applyLayer(ctx context.Context, t *rootfs.Tree, l v1.Layer, i, n int, budget *limit, p progress.Reporter) error {
	digest, err := l.Digest()
	if err != nil {
		return fmt.Errorf("layer %d of %d: %w", i+1, n, err)
	}
	what := fmt.Sprintf("layer %d of %d (%s)", i+1, n, short(digest.String()))
	size, _ := l.Size()
	p.Phase(fmt.Sprintf("pulling layer %d/%d %s, KiB", i+1, n, short(digest.String())))
	rc, err := l.Compressed()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer rc.Close()
	// go-containerregistry checks the compressed digest when the stream
	// reaches its end, so the stream is always read to the end.
	counted := &counter{r: rc, total: size, p: p}
	plain, err := decompress(bufio.NewReaderSize(counted, 64<<10))
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer plain.Close()
	h := sha256.New()
	src := &limited{r: plain, l: budget}
	tarStream := io.TeeReader(src, h)
	if err := t.ApplyLayer(ctx, tarStream); err != nil {
		if errors.Is(src.err, errTooBig) {
			return errdefs.Errorf(errdefs.ErrInvalid, "%s is rejected: %v", what, errTooBig)
		}
		if src.err != nil || ctx.Err() != nil {
			// The download or the decompression failed, not the archive.
			return fmt.Errorf("%s: %w", what, err)
		}
		return errdefs.Errorf(errdefs.ErrInvalid, "%s is rejected: %v", what, err)
	}
	// Tar padding and anything after the archive's end count for the
	// digests too.
	if _, err := io.Copy(io.Discard, tarStream); err != nil {
		if errors.Is(err, errTooBig) {
			return errdefs.Errorf(errdefs.ErrInvalid, "%s is rejected: %v", what, err)
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	if _, err := io.Copy(io.Discard, counted); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if diffID, err := l.DiffID(); err == nil && diffID.Algorithm == "sha256" && diffID.Hex != hex.EncodeToString(h.Sum(nil)) {
		return errdefs.Errorf(errdefs.ErrInvalid, "%s is rejected: its content does not match the image config's diff_id %s", what, diffID)
	}
	return nil
}

func short(digest string) string {
	if i := strings.IndexByte(digest, ':'); i >= 0 && len(digest) > i+13 {
		return digest[i+1 : i+13]
	}
	return digest
}

// decompress recognises gzip and zstd by their magic; anything else is
// taken as a plain tar stream (uncompressed layers exist).
func decompress(r *bufio.Reader) (io.ReadCloser, error) {
	magic, _ := r.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, err
		}
		return zr, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxZstdWindow))
		if err != nil {
			return nil, err
		}
		return zr.IOReadCloser(), nil
	}
	return io.NopCloser(r), nil
}

// counter reports how many compressed bytes of a layer have been read.
type counter struct {
	r     io.Reader
	n     int64
	total int64
	p     progress.Reporter
}

func (c *counter) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	c.p.Step(int(c.n>>10), int(c.total>>10))
	return n, err
}

// errTooBig words the limit as the tree's rootfs.LimitError does, so
// that both name the same limit.
var errTooBig = fmt.Errorf("the layers' tar streams go past the image's unpack limit of %d GiB", maxUnpackedBytes>>30)

// limit is the unpacked size left for all of an image's layers.
type limit struct{ left int64 }

// limited reads a layer's tar stream within the limit and remembers a
// failure of the stream itself.
type limited struct {
	r   io.Reader
	l   *limit
	err error
}

func (l *limited) Read(b []byte) (int, error) {
	n, err := l.r.Read(b)
	if l.l.left -= int64(n); l.l.left < 0 {
		err = errTooBig
	}
	if err != nil && err != io.EOF {
		l.err = err
	}
	return n, err
}

// guestSkeleton makes what the agent needs after it switches to the root
// disk: real directories to mount /dev, /proc, /sys, /tmp and /run on
// (replacing anything else an image put there), /root, and an
// /etc/resolv.conf file for it to write the DHCP resolver into.
func guestSkeleton(t *rootfs.Tree) error {
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{
		{"dev", 0o755}, {"proc", 0o555}, {"sys", 0o555},
		{"tmp", 0o777 | os.ModeSticky}, {"run", 0o755}, {"root", 0o700}, {"etc", 0o755},
	} {
		if t.IsDir(d.path) {
			continue
		}
		if err := t.Remove(d.path); err != nil {
			return err
		}
		if err := t.MkDir(d.path, d.mode, 0, 0, time.Time{}); err != nil {
			return err
		}
	}
	const resolv = "etc/resolv.conf"
	if t.IsRegular(resolv) {
		return nil
	}
	if err := t.Remove(resolv); err != nil {
		return err
	}
	return t.WriteFile(resolv, strings.NewReader(""), 0o644, 0, 0, time.Time{})
}

// diskSize leaves room to work in: the default disk size, or half as much
// again as the files need when that is more, in whole MiB.
func diskSize(usage int64) (int64, error) {
	size, err := imagestore.BuildConfig{}.DiskBytes()
	if err != nil {
		return 0, err
	}
	if need := usage + usage/2 + 256<<20; need > size {
		size = (need + 1<<20 - 1) &^ (1<<20 - 1)
	}
	if _, err := (imagestore.BuildConfig{DiskSize: fmt.Sprint(size)}).Resolve(); err != nil {
		return 0, fmt.Errorf("%w: root disk: %v", errdefs.ErrInvalid, err)
	}
	return size, nil
}
