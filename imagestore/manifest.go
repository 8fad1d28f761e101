package imagestore

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
)

// SchemaVersion is the manifest format this package writes and reads.
const SchemaVersion = 1

// File formats recorded in a manifest.
const (
	FormatPVH     = "pvh"     // ELF vmlinux with a PVH entry note; QEMU boots it directly
	FormatBzImage = "bzimage" // x86 boot protocol kernel image
	FormatCpio    = "cpio"    // uncompressed newc cpio archive
	FormatQcow2   = "qcow2"
	FormatELF     = "elf" // a static executable (the guest agent)
)

// maxManifestSize bounds how much of an on-disk manifest is read: they are
// a few kilobytes, and a huge file is a corrupt or hostile one.
const maxManifestSize = 4 << 20

// File is one blob of an image.
type File struct {
	Digest string `json:"digest"` // "sha256:<hex>"
	Size   int64  `json:"size"`
	Format string `json:"format,omitempty"`
}

// IsZero reports whether f names no blob (an image without that part).
func (f File) IsZero() bool { return f == File{} }

// Package is one Debian package an image was built from.
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	SHA256  string `json:"sha256"` // of the .deb, as the archive lists it
}

// Manifest describes an image. Its digest is the image's ID.
type Manifest struct {
	SchemaVersion int       `json:"schema_version"`
	BuildID       string    `json:"build_id,omitempty"` // sha256 hex of the build inputs
	Created       time.Time `json:"created"`
	KernelRelease string    `json:"kernel_release,omitempty"`

	Kernel    File `json:"kernel"`
	Initramfs File `json:"initramfs,omitzero"`
	Rootfs    File `json:"rootfs,omitzero"` // zero for initramfs-only images
	Agent     File `json:"agent,omitzero"`

	Packages []Package   `json:"packages,omitempty"`
	Config   BuildConfig `json:"config,omitzero"`
	Modules  []string    `json:"modules,omitempty"` // module names in the initramfs

	// OCI is set on images pulled from a registry.
	OCI *OCIConfig `json:"oci,omitempty"`
}

// OCIConfig is what a pulled image's own config says about running it.
// gondolin boots its own kernel and agent, so the entrypoint and command
// are kept for reference only; Env and WorkingDir are what a command in
// the guest may be given.
type OCIConfig struct {
	Source     string   `json:"source"` // the reference pulled, fully qualified
	Digest     string   `json:"digest"` // of the image manifest in the registry
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
}

// validate rejects what could not be passed to a process: NUL bytes,
// environment entries without "=".
func (c *OCIConfig) validate() error {
	strs := append(append(append([]string{c.Source, c.Digest, c.WorkingDir, c.User}, c.Env...), c.Entrypoint...), c.Cmd...)
	for _, s := range strs {
		if strings.ContainsRune(s, 0) {
			return fmt.Errorf("%w: manifest oci config has a NUL byte", errdefs.ErrInvalid)
		}
	}
	for _, e := range c.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return fmt.Errorf("%w: manifest oci env entry %q is not KEY=VALUE", errdefs.ErrInvalid, e)
		}
	}
	return nil
}

// files returns the manifest's blobs with the role each plays, for checks
// and error messages.
func (m *Manifest) files() []struct {
	role string
	file File
} {
	return []struct {
		role string
		file File
	}{{"kernel", m.Kernel}, {"initramfs", m.Initramfs}, {"rootfs", m.Rootfs}, {"agent", m.Agent}}
}

// validate checks what the rest of gondolin relies on. Manifests on disk
// are untrusted: a digest that is not exactly sha256 hex could otherwise
// turn into a path outside the store.
func (m *Manifest) validate() error {
	if m.SchemaVersion != SchemaVersion {
		return fmt.Errorf("%w: manifest schema version %d (this gondolin reads %d)", errdefs.ErrInvalid, m.SchemaVersion, SchemaVersion)
	}
	if m.BuildID != "" && !isHex(m.BuildID, 64) {
		return fmt.Errorf("%w: manifest build_id %q is not sha256 hex", errdefs.ErrInvalid, m.BuildID)
	}
	if m.Kernel.IsZero() {
		return fmt.Errorf("%w: manifest has no kernel", errdefs.ErrInvalid)
	}
	allowed := map[string][]string{
		"kernel":    {FormatPVH, FormatBzImage},
		"initramfs": {FormatCpio},
		"rootfs":    {FormatQcow2},
		"agent":     {FormatELF},
	}
	for _, f := range m.files() {
		if f.file.IsZero() {
			continue
		}
		if _, ok := digestHex(f.file.Digest); !ok {
			return fmt.Errorf("%w: manifest %s digest %q is not sha256:<hex>", errdefs.ErrInvalid, f.role, f.file.Digest)
		}
		if f.file.Size < 0 {
			return fmt.Errorf("%w: manifest %s size %d", errdefs.ErrInvalid, f.role, f.file.Size)
		}
		ok := false
		for _, format := range allowed[f.role] {
			ok = ok || f.file.Format == format
		}
		if !ok {
			return fmt.Errorf("%w: manifest %s format %q (want one of %v)", errdefs.ErrInvalid, f.role, f.file.Format, allowed[f.role])
		}
	}
	if m.OCI != nil {
		return m.OCI.validate()
	}
	return nil
}

// decodeManifest parses and validates a manifest read from disk.
func decodeManifest(data []byte) (Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("%w: manifest: %v", errdefs.ErrInvalid, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Manifest{}, fmt.Errorf("%w: manifest: data after the JSON object", errdefs.ErrInvalid)
	}
	if err := m.validate(); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

func encodeManifest(m Manifest) ([]byte, error) {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}

// digestHex returns the hex part of "sha256:<64 hex>".
func digestHex(digest string) (string, bool) {
	h, ok := strings.CutPrefix(digest, idPrefix)
	if !ok || !isHex(h, 64) {
		return "", false
	}
	return h, true
}

// isHex reports whether s is lower-case hex; n > 0 also demands that length.
func isHex(s string, n int) bool {
	if n > 0 && len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return s != ""
}
