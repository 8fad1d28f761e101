// Package debian builds gondolin guest images from Debian packages on the
// user's machine, without root and without network access beyond apt: a
// kernel package's PVH vmlinux and virtio modules, an initramfs whose
// /init is the gondolin agent, and an ext4 root disk unpacked from
// busybox-static, bash, curl, ca-certificates and any extra packages.
package debian

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gondolin/gondolin/imagestore"
	"github.com/gondolin/gondolin/imagestore/internal/rootfs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/progress"
)

// basePackages go into every root filesystem: a shell and coreutils
// (busybox), bash for interactive sessions, and a TLS client that checks
// certificates (busybox's wget does not).
var basePackages = []string{"bash", "busybox-static", "ca-certificates", "curl"}

// formatVersion changes whenever the builder would produce a different
// image from the same inputs, so that FindBuild does not reuse old ones.
const formatVersion = 2

// Options configure a build.
type Options struct {
	// AgentPath is the static guest agent binary (required).
	AgentPath string
	// Config is the build config; Build resolves it (defaults, sorting).
	Config imagestore.BuildConfig
	// Tag is the ref pointed at the result; default "default:latest".
	Tag string
	// CacheDir keeps downloaded .debs; default <user cache>/gondolin/debs.
	CacheDir string
	// WorkDir is the parent of the build's scratch directory; default the
	// store's TempDir, so finished files move into the store by link.
	WorkDir string
	// Progress shows phases; default progress.Discard.
	Progress progress.Reporter

	download downloadFunc // tests count downloads
}

// plan is everything a build depends on, resolved through apt.
type plan struct {
	config   imagestore.BuildConfig
	agentSHA string
	kernel   deb
	debs     []deb // root filesystem packages, sorted by name
	buildID  string
}

// Build builds an image, stores it and points opts.Tag at it. When the
// store already holds an image built from the same inputs (packages and
// their versions, the agent, the config) it only retags that image and
// reports reused = true, without downloading or unpacking anything.
func Build(ctx context.Context, store *imagestore.Store, opts Options) (im *imagestore.Image, reused bool, err error) {
	if opts.Tag == "" {
		opts.Tag = layout.DefaultImage
	}
	ref, err := imagestore.ParseRef(opts.Tag)
	if err != nil {
		return nil, false, err
	}
	if opts.Progress == nil {
		opts.Progress = progress.Discard
	}
	defer opts.Progress.Done()
	if opts.download == nil {
		opts.download = aptDownload
	}
	if opts.CacheDir == "" {
		cache, err := layout.Cache()
		if err != nil {
			return nil, false, err
		}
		opts.CacheDir = filepath.Join(cache, "debs")
	}
	if opts.WorkDir == "" {
		opts.WorkDir = store.TempDir()
	}
	if err := checkAgent(opts.AgentPath); err != nil {
		return nil, false, err
	}
	if err := needTools("apt-cache", "apt-get"); err != nil {
		return nil, false, err
	}

	opts.Progress.Phase("resolving packages")
	pl, err := makePlan(ctx, opts)
	if err != nil {
		return nil, false, err
	}
	if old, ok := store.FindBuild(pl.buildID); ok {
		if err := store.Tag(old.ID, ref); err != nil {
			return nil, false, err
		}
		im, err := store.Resolve(old.ID)
		return im, true, err
	}

	tools := []string{"dpkg-deb", "mke2fs", "qemu-img"}
	if os.Getuid() != 0 {
		tools = append(tools, "debugfs")
	}
	if err := needTools(tools...); err != nil {
		return nil, false, err
	}
	debPaths, err := fetch(ctx, opts.CacheDir, append(slices.Clone(pl.debs), pl.kernel), opts.download, opts.Progress)
	if err != nil {
		return nil, false, err
	}
	if err := os.MkdirAll(opts.WorkDir, 0o700); err != nil {
		return nil, false, err
	}
	work, err := os.MkdirTemp(opts.WorkDir, "build-*")
	if err != nil {
		return nil, false, err
	}
	defer removeAll(work)
	// From the first blob stored to the tag, a concurrent image rm must
	// not collect this build's blobs.
	release, err := store.Hold()
	if err != nil {
		return nil, false, err
	}
	defer release()
	m, err := buildFiles(ctx, store, pl, debPaths, work, opts)
	if err != nil {
		return nil, false, err
	}
	opts.Progress.Phase("storing image")
	im, err = store.PutTagged(m, ref)
	return im, false, err
}

// checkAgent rejects an agent that cannot be /init: the initramfs has no
// dynamic loader or libraries.
func checkAgent(path string) error {
	if path == "" {
		return errors.New("no guest agent binary given")
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("guest agent %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("guest agent %s is dynamically linked; build it static (CGO_ENABLED=0)", path)
		}
	}
	return nil
}

// makePlan resolves the config through apt and computes the build ID.
func makePlan(ctx context.Context, opts Options) (plan, error) {
	cfg, err := opts.Config.Resolve()
	if err != nil {
		return plan{}, err
	}
	// The manifest records the full top-level set, base packages included.
	cfg.Packages = append(cfg.Packages, basePackages...)
	slices.Sort(cfg.Packages)
	cfg.Packages = slices.Compact(cfg.Packages)
	pl := plan{config: cfg}
	// Each apt-cache run spends most of its half second loading apt's
	// cache, so the independent queries run side by side: this is most
	// of the time a reused build takes.
	var (
		wg                   sync.WaitGroup
		kernelName           string
		names                []string
		agentErr, kErr, cErr error
	)
	wg.Go(func() { pl.agentSHA, agentErr = fileSHA256(opts.AgentPath) })
	wg.Go(func() { kernelName, kErr = kernelPackage(ctx, cfg.KernelPackage) })
	wg.Go(func() { names, cErr = closure(ctx, cfg.Packages) })
	wg.Wait()
	if agentErr != nil {
		return plan{}, fmt.Errorf("guest agent: %w", agentErr)
	}
	if err := errors.Join(kErr, cErr); err != nil {
		return plan{}, err
	}
	// One apt-cache call for everything; the -unsigned variant has the
	// same kernel without the signature wrapper only Secure Boot needs.
	unsigned := kernelName + "-unsigned"
	debs, err := showPackages(ctx, append(slices.Clone(names), kernelName, unsigned))
	if err != nil {
		return plan{}, err
	}
	var ok bool
	if pl.kernel, ok = debs[unsigned]; !ok {
		if pl.kernel, ok = debs[kernelName]; !ok {
			return plan{}, fmt.Errorf("kernel package %s (from %s) has no installable version; run apt-get update", kernelName, cfg.KernelPackage)
		}
	}
	for _, n := range names {
		d, ok := debs[n]
		if !ok {
			return plan{}, fmt.Errorf("package %s has no installable version; check the name or run apt-get update", n)
		}
		pl.debs = append(pl.debs, d)
	}
	pl.buildID, err = buildID(pl)
	return pl, err
}

// buildID hashes a canonical JSON encoding of every build input.
func buildID(pl plan) (string, error) {
	var pkgs []imagestore.Package
	for _, d := range pl.debs {
		pkgs = append(pkgs, d.pkg())
	}
	slices.SortFunc(pkgs, func(a, b imagestore.Package) int { return strings.Compare(a.Name, b.Name) })
	data, err := json.Marshal(struct {
		Format   int                    `json:"format"`
		Config   imagestore.BuildConfig `json:"config"`
		Agent    string                 `json:"agent"`
		Kernel   imagestore.Package     `json:"kernel"`
		Packages []imagestore.Package   `json:"packages"`
	}{formatVersion, pl.config, pl.agentSHA, pl.kernel.pkg(), pkgs})
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), nil
}

// buildFiles makes the kernel, initramfs and root disk in work and stores
// them as blobs; it returns the manifest that ties them together.
func buildFiles(ctx context.Context, store *imagestore.Store, pl plan, debPaths map[string]string, work string, opts Options) (imagestore.Manifest, error) {
	p := opts.Progress
	p.Phase("unpacking kernel")
	kernelDir := filepath.Join(work, "kernel")
	kt, err := rootfs.New(kernelDir, rootfs.Options{MaxUsage: maxKernelUsage})
	if err != nil {
		return imagestore.Manifest{}, err
	}
	// Only the kernel and its modules; parent directories come along.
	err = unpackDeb(ctx, kt, debPaths[pl.kernel.Name], func(p string) bool {
		return strings.HasPrefix(p, "boot/vmlinuz-") || strings.HasPrefix(p, "lib/modules/") && strings.HasSuffix(p, ".ko")
	})
	kt.Close()
	if err != nil {
		return imagestore.Manifest{}, fmt.Errorf("unpack %s: %w", pl.kernel.Name, err)
	}
	vmlinuzs, _ := filepath.Glob(filepath.Join(kernelDir, "boot", "vmlinuz-*"))
	if len(vmlinuzs) != 1 {
		return imagestore.Manifest{}, fmt.Errorf("%s: want one boot/vmlinuz-*, found %d", pl.kernel.Name, len(vmlinuzs))
	}
	release := strings.TrimPrefix(filepath.Base(vmlinuzs[0]), "vmlinuz-")
	kernel, err := storeKernel(store, vmlinuzs[0], work, p)
	if err != nil {
		return imagestore.Manifest{}, err
	}

	p.Phase("initramfs")
	ix, mods, err := selectModules(filepath.Join(kernelDir, "lib", "modules", release), wantedModules)
	if err != nil {
		return imagestore.Manifest{}, err
	}
	initrdPath := filepath.Join(work, "initramfs.cpio")
	if err := writeInitramfs(initrdPath, opts.AgentPath, ix, mods); err != nil {
		return imagestore.Manifest{}, err
	}
	initrd, err := store.PutFile(initrdPath)
	if err != nil {
		return imagestore.Manifest{}, err
	}
	initrd.Format = imagestore.FormatCpio
	agent, err := store.PutFile(opts.AgentPath)
	if err != nil {
		return imagestore.Manifest{}, err
	}
	agent.Format = imagestore.FormatELF

	rootfs, err := buildRootfs(ctx, store, pl, debPaths, work, opts)
	if err != nil {
		return imagestore.Manifest{}, err
	}

	m := imagestore.Manifest{
		SchemaVersion: imagestore.SchemaVersion,
		BuildID:       pl.buildID,
		Created:       time.Now().UTC().Truncate(time.Second),
		KernelRelease: release,
		Kernel:        kernel,
		Initramfs:     initrd,
		Rootfs:        rootfs,
		Agent:         agent,
		Config:        pl.config,
	}
	m.Packages = append(m.Packages, pl.kernel.pkg())
	for _, d := range pl.debs {
		m.Packages = append(m.Packages, d.pkg())
	}
	slices.SortFunc(m.Packages, func(a, b imagestore.Package) int { return strings.Compare(a.Name, b.Name) })
	for _, mod := range ix.Modules {
		m.Modules = append(m.Modules, mod.Name)
	}
	return m, nil
}

// storeKernel stores the PVH vmlinux when the bzImage has one, else the
// bzImage itself.
func storeKernel(store *imagestore.Store, vmlinuz, work string, p progress.Reporter) (imagestore.File, error) {
	bz, err := os.ReadFile(vmlinuz)
	if err != nil {
		return imagestore.File{}, err
	}
	vmlinux, err := extractPVH(bz)
	if err != nil {
		p.Warnf("%s: %v; the image boots the slower bzImage", filepath.Base(vmlinuz), err)
		f, err := store.PutBlob(bytes.NewReader(bz))
		f.Format = imagestore.FormatBzImage
		return f, err
	}
	f, err := store.PutBlob(bytes.NewReader(vmlinux))
	f.Format = imagestore.FormatPVH
	return f, err
}

// maxKernelUsage bounds the kernel package's staging tree, which holds
// only its vmlinuz and modules, a few hundred MiB: a package checked
// against apt's index cannot fill the host's disk, however it is made.
const maxKernelUsage = 4 << 30

// buildRootfs unpacks the packages into a staging tree, finishes it and
// turns it into a qcow2 disk.
func buildRootfs(ctx context.Context, store *imagestore.Store, pl plan, debPaths map[string]string, work string, opts Options) (imagestore.File, error) {
	p := opts.Progress
	size, err := pl.config.DiskBytes()
	if err != nil {
		return imagestore.File{}, err
	}
	p.Phase(fmt.Sprintf("unpacking %d packages", len(pl.debs)))
	staging := filepath.Join(work, "rootfs")
	// What does not fit the disk fails mke2fs anyway; bounding the tree
	// stops it first, before the staging directory outgrows the disk
	// the user chose. Twice the disk, because Usage counts a block for
	// every symlink and hard link, which ext4 does not need, so a build
	// that fits is not refused.
	t, err := rootfs.New(staging, rootfs.Options{UsrMerged: true, Skip: skipDirs, MaxUsage: 2 * size})
	if err != nil {
		return imagestore.File{}, err
	}
	defer t.Close()
	for i, d := range pl.debs {
		p.Step(i, len(pl.debs))
		if err := unpackDeb(ctx, t, debPaths[d.Name], nil); err != nil {
			return imagestore.File{}, fmt.Errorf("unpack %s: %w%s", d.Name, err, diskSizeHint(err, pl.config))
		}
	}
	p.Step(len(pl.debs), len(pl.debs))
	p.Phase("configuring root filesystem")
	if err := finishRootfs(ctx, t, staging, opts.AgentPath, p); err != nil {
		return imagestore.File{}, fmt.Errorf("%w%s", err, diskSizeHint(err, pl.config))
	}
	if err := t.Finish(); err != nil {
		return imagestore.File{}, err
	}

	p.Phase("making root disk")
	qcow2 := filepath.Join(work, "rootfs.qcow2")
	if err := t.MakeDisk(ctx, qcow2, size); err != nil {
		return imagestore.File{}, err
	}
	f, err := store.PutFile(qcow2)
	f.Format = imagestore.FormatQcow2
	return f, err
}

// diskSizeHint tells the user how to get past the unpack limit, which
// the disk size sets.
func diskSizeHint(err error, c imagestore.BuildConfig) string {
	var le *rootfs.LimitError
	if !errors.As(err, &le) {
		return ""
	}
	return fmt.Sprintf(" (twice disk_size %s; choose a larger disk_size)", c.DiskSize)
}

// unpackDeb streams a .deb's data archive into t without running any of
// its maintainer scripts.
func unpackDeb(ctx context.Context, t *rootfs.Tree, debPath string, keep func(string) bool) error {
	cmd, out, stderr, err := pipedCommand(ctx, "", "dpkg-deb", "--fsys-tarfile", debPath)
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	xerr := t.Extract(ctx, out, keep)
	if xerr != nil {
		// Stop dpkg-deb rather than wait for it to fill a pipe nobody reads.
		cmd.Process.Kill()
	}
	werr := cmd.Wait()
	if xerr != nil {
		return xerr
	}
	if werr != nil {
		return fmt.Errorf("dpkg-deb: %w%s", werr, stderrTail(stderr.Bytes()))
	}
	return nil
}
