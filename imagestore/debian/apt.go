package debian

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/gondolin/gondolin/imagestore"
	"github.com/gondolin/gondolin/internal/progress"
)

// deb is one package as apt's candidate version describes it.
type deb struct {
	Name    string
	Version string
	Arch    string
	SHA256  string
	Size    int64
}

// fileName is the name apt-get download gives the .deb: the epoch's ':'
// is URL-encoded.
func (d deb) fileName() string {
	return d.Name + "_" + strings.ReplaceAll(d.Version, ":", "%3a") + "_" + d.Arch + ".deb"
}

func (d deb) pkg() imagestore.Package {
	return imagestore.Package{Name: d.Name, Version: d.Version, SHA256: d.SHA256}
}

// kernelPackage finds the concrete kernel image package a (meta) package
// depends on, without hard-coding the ABI: old ABIs leave the mirror.
func kernelPackage(ctx context.Context, meta string) (string, error) {
	out, err := run(ctx, "", "apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", meta)
	if err != nil {
		return "", fmt.Errorf("kernel package %s is unknown to apt: check kernel_package, or run apt-get update (%w)", meta, err)
	}
	return parseKernelDepends(meta, out), nil
}

// parseKernelDepends picks the "Depends: linux-image-..." line of apt-cache
// depends output; a package without one is itself the kernel.
func parseKernelDepends(meta string, out []byte) string {
	for line := range strings.Lines(string(out)) {
		dep, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends: ")
		if ok && strings.HasPrefix(dep, "linux-image-") && imagestore.ValidPackageName(dep) {
			return dep
		}
	}
	return meta
}

// closure returns the names of pkgs and everything they depend on,
// recommends and the like left out. apt-cache silently drops names it does
// not know, and does not expand a virtual package named on the command
// line, so both are errors here rather than a package quietly missing.
func closure(ctx context.Context, pkgs []string) ([]string, error) {
	args := append([]string{"depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
		"--no-breaks", "--no-replaces", "--no-enhances", "--"}, pkgs...)
	out, err := run(ctx, "", "apt-cache", args...)
	if err != nil && len(out) == 0 {
		return nil, fmt.Errorf("resolve package dependencies: %w", err)
	}
	names, virtuals := parseClosure(out)
	for _, p := range pkgs {
		switch {
		case slices.Contains(names, p):
		case slices.Contains(virtuals, p):
			return nil, fmt.Errorf("package %s is virtual: name a package that provides it (apt-cache showpkg %s lists them)", p, p)
		default:
			return nil, fmt.Errorf("package %s is unknown to apt: check the name, or run apt-get update", p)
		}
	}
	return names, nil
}

// parseClosure reads apt-cache depends --recurse output: package lines
// start at column 0. Virtual packages ("<awk>") are returned apart; their
// real providers appear on lines of their own. Foreign-architecture lines
// ("libc6:i386") are dropped.
func parseClosure(out []byte) (names, virtuals []string) {
	for line := range strings.Lines(string(out)) {
		line = strings.TrimRight(line, "\r\n")
		if line == "" || line[0] == ' ' || line[0] == '|' || strings.Contains(line, ":") {
			continue
		}
		if v, ok := strings.CutPrefix(line, "<"); ok {
			virtuals = append(virtuals, strings.TrimSuffix(v, ">"))
			continue
		}
		if imagestore.ValidPackageName(line) {
			names = append(names, line)
		}
	}
	slices.Sort(names)
	return slices.Compact(names), virtuals
}

// showPackages asks apt, in one call, for the candidate version of each
// named package. Names apt does not know are missing from the result.
func showPackages(ctx context.Context, names []string) (map[string]deb, error) {
	args := append([]string{"show", "--no-all-versions", "--"}, names...)
	out, err := run(ctx, "", "apt-cache", args...)
	if err != nil && len(out) == 0 {
		return nil, fmt.Errorf("look up packages: %w", err)
	}
	return parseShow(out)
}

// parseShow reads apt-cache show stanzas.
func parseShow(out []byte) (map[string]deb, error) {
	debs := map[string]deb{}
	for stanza := range strings.SplitSeq(string(out), "\n\n") {
		var d deb
		for line := range strings.Lines(stanza) {
			key, value, ok := strings.Cut(strings.TrimRight(line, "\n"), ": ")
			if !ok {
				continue
			}
			switch key {
			case "Package":
				d.Name = value
			case "Version":
				d.Version = value
			case "Architecture":
				d.Arch = value
			case "SHA256":
				d.SHA256 = value
			case "Size":
				d.Size, _ = strconv.ParseInt(value, 10, 64)
			}
		}
		if d.Name == "" {
			continue
		}
		if !imagestore.ValidPackageName(d.Name) || !validVersion(d.Version) || !validArch(d.Arch) || len(d.SHA256) != 64 {
			return nil, fmt.Errorf("apt-cache show: malformed entry for %q (version %q, arch %q, sha256 %q)", d.Name, d.Version, d.Arch, d.SHA256)
		}
		if _, dup := debs[d.Name]; !dup {
			debs[d.Name] = d
		}
	}
	return debs, nil
}

// validVersion accepts Debian version strings (policy §5.6.12); they end
// up in file names and apt-get arguments.
func validVersion(v string) bool {
	if v == "" || len(v) > 128 || !('0' <= v[0] && v[0] <= '9') {
		return false
	}
	return strings.Trim(v, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.+-~:") == ""
}

func validArch(a string) bool {
	return a != "" && len(a) <= 32 && strings.Trim(a, "abcdefghijklmnopqrstuvwxyz0123456789-") == ""
}

// downloadFunc fetches debs into dir. Tests replace it to count calls.
type downloadFunc func(ctx context.Context, dir string, debs []deb, p progress.Reporter) error

// aptDownload fetches exact versions with apt-get download, the only
// network access a build makes.
func aptDownload(ctx context.Context, dir string, debs []deb, p progress.Reporter) error {
	args := []string{"download"}
	if os.Getuid() == 0 {
		// As root apt drops to the _apt user to download, which cannot
		// write into a private cache directory; it then downloads as root
		// anyway with a warning. Say so up front and skip the warning.
		args = append(args, "-o", "APT::Sandbox::User=root")
	}
	args = append(args, "--")
	for _, d := range debs {
		args = append(args, d.Name+"="+d.Version)
	}
	cmd, stdout, stderr, err := pipedCommand(ctx, dir, "apt-get", args...)
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("apt-get download: %w", err)
	}
	got := 0
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "Get:") {
			got++
			p.Step(got, len(debs))
		}
	}
	io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("apt-get download: %w%s", err, stderrTail(stderr.Bytes()))
	}
	return nil
}

// fetch makes sure every deb is in cacheDir with apt's sha256 and returns
// their paths. Files already there and intact are not downloaded again.
func fetch(ctx context.Context, cacheDir string, debs []deb, download downloadFunc, p progress.Reporter) (map[string]string, error) {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("package cache: %w", err)
	}
	// Builds running at once share the cache; one downloads at a time so
	// that nobody reads a .deb apt is still writing.
	unlock, err := lockFile(filepath.Join(cacheDir, ".lock"))
	if err != nil {
		return nil, fmt.Errorf("package cache: %w", err)
	}
	defer unlock()
	paths := map[string]string{}
	var missing []deb
	for _, d := range debs {
		path := filepath.Join(cacheDir, d.fileName())
		paths[d.Name] = path
		if checkSHA256(path, d.SHA256) != nil {
			os.Remove(path)
			missing = append(missing, d)
		}
	}
	if len(missing) > 0 {
		p.Phase(fmt.Sprintf("downloading %d packages", len(missing)))
		if err := download(ctx, cacheDir, missing, p); err != nil {
			return nil, err
		}
	}
	for _, d := range missing {
		if err := checkSHA256(paths[d.Name], d.SHA256); err != nil {
			return nil, fmt.Errorf("downloaded %s %s: %w", d.Name, d.Version, err)
		}
	}
	return paths, nil
}

func checkSHA256(path, want string) error {
	got, err := fileSHA256(path)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%s: sha256 %s, want %s", filepath.Base(path), got, want)
	}
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// lockFile takes an exclusive flock on path and returns its release.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}
