// Package kmod describes the kernel modules packed into a guest image: it
// reads a module's .modinfo at image build time and, inside the guest,
// matches device modaliases to modules and orders them by dependency. The
// guest has no kmod, depmod or udev, so this is the whole of its module
// loading logic.
package kmod

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
)

// IndexFile is where an image's initramfs keeps its Index, relative to
// /lib/modules.
const IndexFile = "index.json"

// Module is one loadable module as recorded in an image.
type Module struct {
	Name    string   `json:"name"`
	Path    string   `json:"path"` // relative to /lib/modules/<release>
	Depends []string `json:"depends,omitempty"`
	Aliases []string `json:"aliases,omitempty"`
}

// Index lists the modules an image carries.
type Index struct {
	Release string   `json:"release"`
	Modules []Module `json:"modules"`
}

// Normalize maps a module name or file name to the kernel's spelling:
// the kernel treats '-' and '_' alike and reports names with '_'.
func Normalize(name string) string {
	name = strings.TrimSuffix(path.Base(name), ".ko")
	return strings.ReplaceAll(name, "-", "_")
}

// Info is what .modinfo says about a module.
type Info struct {
	Name    string
	Depends []string
	Aliases []string
}

// ParseModinfo reads the .modinfo section of a module's ELF image.
func ParseModinfo(ko []byte) (Info, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return Info{}, fmt.Errorf("read module: %w", err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return Info{}, errors.New("read module: no .modinfo section")
	}
	data, err := sec.Data()
	if err != nil {
		return Info{}, fmt.Errorf("read module .modinfo: %w", err)
	}
	var info Info
	for _, field := range bytes.Split(data, []byte{0}) {
		key, value, ok := strings.Cut(string(field), "=")
		if !ok {
			continue
		}
		switch key {
		case "name":
			info.Name = Normalize(value)
		case "depends":
			for _, dep := range strings.Split(value, ",") {
				if dep != "" {
					info.Depends = append(info.Depends, Normalize(dep))
				}
			}
		case "alias":
			info.Aliases = append(info.Aliases, value)
		}
	}
	if info.Name == "" {
		return Info{}, errors.New("read module .modinfo: no name")
	}
	return info, nil
}

func (ix *Index) lookup() map[string]*Module {
	m := make(map[string]*Module, len(ix.Modules))
	for i := range ix.Modules {
		m[ix.Modules[i].Name] = &ix.Modules[i]
	}
	return m
}

// Find returns the module with the given name.
func (ix *Index) Find(name string) (Module, bool) {
	mod, ok := ix.lookup()[Normalize(name)]
	if !ok {
		return Module{}, false
	}
	return *mod, true
}

// Match returns the names of the modules whose aliases match a device's
// modalias (as in /sys/bus/*/devices/*/modalias), sorted.
func (ix *Index) Match(modalias string) []string {
	var names []string
	for _, mod := range ix.Modules {
		for _, alias := range mod.Aliases {
			if ok, _ := path.Match(alias, modalias); ok {
				names = append(names, mod.Name)
				break
			}
		}
	}
	sort.Strings(names)
	return names
}

// LoadOrder returns names and everything they depend on, each once, with
// every module after its dependencies. Unknown modules and dependency
// cycles are errors.
func (ix *Index) LoadOrder(names ...string) ([]string, error) {
	mods := ix.lookup()
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var order []string
	var visit func(name, from string) error
	visit = func(name, from string) error {
		name = Normalize(name)
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module dependency cycle through %s", name)
		}
		mod, ok := mods[name]
		if !ok {
			if from != "" {
				return fmt.Errorf("module %s needs %s, which the image does not have", from, name)
			}
			return fmt.Errorf("module %s is not in the image", name)
		}
		state[name] = visiting
		for _, dep := range mod.Depends {
			if err := visit(dep, name); err != nil {
				return err
			}
		}
		state[name] = done
		order = append(order, name)
		return nil
	}
	for _, name := range names {
		if err := visit(name, ""); err != nil {
			return nil, err
		}
	}
	return order, nil
}
