package rootfs

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Label is the root filesystem's label, for the agent to find it.
const Label = "gondolin-root"

// makeExt4 makes a sparse raw ext4 image of size bytes holding staging.
// Inode tables and the journal are initialized now (lazy_*=0) so that the
// guest does not spend its first seconds zeroing them in the background.
func makeExt4(ctx context.Context, staging, raw string, size int64) error {
	_, err := Run(ctx, "", "mke2fs", "-t", "ext4", "-F", "-q", "-d", staging, "-L", Label, "-m", "0", "-J", "size=16",
		"-E", "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0", raw, strconv.FormatInt(size/1024, 10)+"k")
	if err != nil {
		return fmt.Errorf("make root filesystem: %w", err)
	}
	return nil
}

// MakeDisk turns the finished tree into a qcow2 root disk of size bytes
// at qcow2 (a raw image is made next to it first and removed).
func (t *Tree) MakeDisk(ctx context.Context, qcow2 string, size int64) error {
	raw := qcow2 + ".raw"
	defer os.Remove(raw)
	if err := makeExt4(ctx, t.dir, raw, size); err != nil {
		return err
	}
	if !t.chown {
		if err := setOwners(ctx, t.dir, raw, t.owner); err != nil {
			return err
		}
	}
	return toQcow2(ctx, raw, qcow2)
}

// setOwners gives every inode of the ext4 image raw, whose files came
// from staging, the owner owner(path) says (by path relative to staging).
// mke2fs -d copies the staging files' owners, which are the builder's
// when the build runs without root.
func setOwners(ctx context.Context, staging, raw string, owner func(rel string) (uid, gid int)) error {
	var script bytes.Buffer
	err := filepath.WalkDir(staging, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(staging, p)
		guest := "/" + filepath.ToSlash(rel)
		if rel == "." {
			return nil // mke2fs's root_owner=0:0 covers the root
		}
		if strings.ContainsAny(guest, "\n\r\x00") {
			return fmt.Errorf("%q: file name cannot be written to a debugfs script", guest)
		}
		uid, gid := owner(filepath.ToSlash(rel))
		// debugfs splits arguments like a shell: quote the path and
		// double any quote inside it.
		q := `"` + strings.ReplaceAll(guest, `"`, `""`) + `"`
		fmt.Fprintf(&script, "set_inode_field %s uid %d\nset_inode_field %s gid %d\n", q, uid, q, gid)
		return nil
	})
	if err != nil {
		return fmt.Errorf("fix root filesystem owners: %w", err)
	}
	cmdFile := raw + ".debugfs"
	if err := os.WriteFile(cmdFile, script.Bytes(), 0o600); err != nil {
		return err
	}
	defer os.Remove(cmdFile)
	cmd, err := Command(ctx, "", "debugfs", "-w", "-f", cmdFile, raw)
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("fix root filesystem owners: debugfs: %w%s", err, StderrTail(stderr.Bytes()))
	}
	// debugfs exits 0 even when a command fails; its errors are the
	// stderr lines other than its version banner.
	for line := range strings.Lines(stderr.String()) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "debugfs ") {
			return fmt.Errorf("fix root filesystem owners: debugfs: %s", line)
		}
	}
	return nil
}

// toQcow2 converts the raw image; qemu-img skips zero blocks, so the
// qcow2 holds only what the files use.
func toQcow2(ctx context.Context, raw, qcow2 string) error {
	if _, err := Run(ctx, "", "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2); err != nil {
		return fmt.Errorf("convert root disk to qcow2: %w", err)
	}
	return nil
}
