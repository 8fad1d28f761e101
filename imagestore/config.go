package imagestore

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/gondolin/gondolin/internal/errdefs"
)

// Build config defaults.
const (
	DefaultKernelPackage = "linux-image-cloud-amd64"
	DefaultDiskSize      = "4G"
)

// Disk size bounds: below the minimum the base packages do not fit; the
// maximum only guards against typos (the disk is a sparse file anyway).
const (
	minDiskSize = 64 << 20
	maxDiskSize = 1 << 40
)

// BuildConfig is what a user may choose about an image build. A manifest
// records the resolved config (defaults filled in, packages sorted).
type BuildConfig struct {
	// Packages are Debian packages installed into the root filesystem
	// (with their dependencies) in addition to the builder's base set.
	Packages []string `json:"packages,omitempty"`
	// KernelPackage is the Debian package (usually a meta package) that
	// names the kernel to boot.
	KernelPackage string `json:"kernel_package,omitempty"`
	// DiskSize is the root filesystem's size: a number of bytes with an
	// optional K, M, G or T suffix (powers of 1024).
	DiskSize string `json:"disk_size,omitempty"`
}

// Debian policy §5.6.1: lower case letters, digits, '+', '-', '.', at
// least two characters, starting with an alphanumeric. The leading
// alphanumeric is what keeps a name from being read as an apt option.
var packageRE = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)

// ValidPackageName reports whether name is a well-formed Debian package name.
func ValidPackageName(name string) bool {
	return len(name) <= 128 && packageRE.MatchString(name)
}

// ParseConfig reads a JSON build config strictly (an unknown field is an
// error naming it) and returns it resolved: defaults filled in, packages
// sorted without duplicates, the disk size in canonical form.
func ParseConfig(r io.Reader) (BuildConfig, error) {
	data, err := io.ReadAll(io.LimitReader(r, 1<<20))
	if err != nil {
		return BuildConfig{}, fmt.Errorf("read build config: %w", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return BuildConfig{}, fmt.Errorf("%w: build config is empty (write {} for the defaults)", errdefs.ErrInvalid)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var c BuildConfig
	if err := dec.Decode(&c); err != nil {
		return BuildConfig{}, fmt.Errorf("%w: build config: %v", errdefs.ErrInvalid, strings.TrimPrefix(err.Error(), "json: "))
	}
	if _, err := dec.Token(); err != io.EOF {
		return BuildConfig{}, fmt.Errorf("%w: build config: data after the JSON object", errdefs.ErrInvalid)
	}
	return c.Resolve()
}

// Resolve validates c and returns it with defaults filled in, packages
// sorted without duplicates and the disk size in canonical form.
func (c BuildConfig) Resolve() (BuildConfig, error) {
	out := BuildConfig{KernelPackage: c.KernelPackage, DiskSize: c.DiskSize}
	for _, p := range c.Packages {
		if !ValidPackageName(p) {
			return BuildConfig{}, fmt.Errorf("%w: build config: package %q is not a Debian package name", errdefs.ErrInvalid, p)
		}
		out.Packages = append(out.Packages, p)
	}
	slices.Sort(out.Packages)
	out.Packages = slices.Compact(out.Packages)
	if out.KernelPackage == "" {
		out.KernelPackage = DefaultKernelPackage
	}
	if !ValidPackageName(out.KernelPackage) {
		return BuildConfig{}, fmt.Errorf("%w: build config: kernel_package %q is not a Debian package name", errdefs.ErrInvalid, out.KernelPackage)
	}
	if out.DiskSize == "" {
		out.DiskSize = DefaultDiskSize
	}
	n, err := parseSize(out.DiskSize)
	if err != nil {
		return BuildConfig{}, fmt.Errorf("%w: build config: disk_size: %v", errdefs.ErrInvalid, err)
	}
	out.DiskSize = formatSize(n)
	return out, nil
}

// DiskBytes returns the disk size in bytes (the default when unset).
func (c BuildConfig) DiskBytes() (int64, error) {
	if c.DiskSize == "" {
		return parseSize(DefaultDiskSize)
	}
	return parseSize(c.DiskSize)
}

var sizeUnits = []struct {
	suffix string
	shift  uint
}{{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}}

// parseSize reads "4G", "512M", "1073741824".
func parseSize(s string) (int64, error) {
	digits, shift := s, uint(0)
	for _, u := range sizeUnits {
		if d, ok := strings.CutSuffix(strings.ToUpper(s), u.suffix); ok {
			digits, shift = d, u.shift
			break
		}
	}
	if digits == "" || len(digits) > 14 || strings.TrimLeft(digits, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a size (use a whole number with an optional K, M, G or T suffix, e.g. 4G)", s)
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n > maxDiskSize>>shift {
		return 0, fmt.Errorf("%q is larger than the maximum of %s", s, formatSize(maxDiskSize))
	}
	n <<= shift
	if n < minDiskSize {
		return 0, fmt.Errorf("%q is smaller than the minimum of %s", s, formatSize(minDiskSize))
	}
	if n > maxDiskSize {
		return 0, fmt.Errorf("%q is larger than the maximum of %s", s, formatSize(maxDiskSize))
	}
	return n, nil
}

// formatSize spells n with the largest unit that divides it exactly.
func formatSize(n int64) string {
	for _, u := range sizeUnits {
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}
