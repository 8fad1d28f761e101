package debian

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/gondolin/gondolin/internal/kmod"
)

// wantedModules are the modules a gondolin VM's devices need (see
// PLATFORM.md); their dependencies come along. vsock and virtiofs are left
// out: the agent channel is virtio-serial and mounts go over it.
var wantedModules = []string{
	"virtio_mmio", "virtio_pci", "virtio_console", "virtio_blk", "virtio_net",
	"virtio_rng", "fuse", "overlay",
}

// moduleFile is a module picked for the initramfs.
type moduleFile struct {
	kmod.Module
	src string // path on the host
}

// selectModules picks wanted and their dependency closure from an
// unpacked lib/modules/<release> directory.
func selectModules(releaseDir string, wanted []string) (kmod.Index, []moduleFile, error) {
	release := filepath.Base(releaseDir)
	// The package ships no modules.dep: map module names to files and
	// read each chosen module's own .modinfo for its dependencies.
	byName := map[string]string{}
	err := filepath.WalkDir(filepath.Join(releaseDir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && strings.HasSuffix(p, ".ko") {
			rel, _ := filepath.Rel(releaseDir, p)
			byName[kmod.Normalize(p)] = filepath.ToSlash(rel)
		}
		return nil
	})
	if err != nil {
		return kmod.Index{}, nil, fmt.Errorf("kernel modules: %w", err)
	}
	picked := map[string]moduleFile{}
	var visit func(name, from string) error
	visit = func(name, from string) error {
		name = kmod.Normalize(name)
		if _, ok := picked[name]; ok {
			return nil
		}
		rel, ok := byName[name]
		if !ok {
			if from != "" {
				return fmt.Errorf("kernel module %s needs %s, which kernel %s does not ship", from, name, release)
			}
			return fmt.Errorf("kernel %s has no module %s", release, name)
		}
		src := filepath.Join(releaseDir, filepath.FromSlash(rel))
		ko, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		info, err := kmod.ParseModinfo(ko)
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		picked[name] = moduleFile{Module: kmod.Module{Name: name, Path: rel, Depends: info.Depends, Aliases: info.Aliases}, src: src}
		for _, dep := range info.Depends {
			if err := visit(dep, name); err != nil {
				return err
			}
		}
		return nil
	}
	for _, name := range wanted {
		if err := visit(name, ""); err != nil {
			return kmod.Index{}, nil, err
		}
	}
	ix := kmod.Index{Release: release}
	var files []moduleFile
	for _, m := range picked {
		files = append(files, m)
	}
	slices.SortFunc(files, func(a, b moduleFile) int { return strings.Compare(a.Name, b.Name) })
	for _, m := range files {
		ix.Modules = append(ix.Modules, m.Module)
	}
	// Fail the build, not the boot, if the set cannot be ordered.
	if _, err := ix.LoadOrder(wanted...); err != nil {
		return kmod.Index{}, nil, err
	}
	return ix, files, nil
}
