package debian

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

// RootfsLabel is the root filesystem's label, for the agent to find it.
const RootfsLabel = "gondolin-root"

// makeExt4 makes a sparse raw ext4 image of size bytes holding staging.
// Inode tables and the journal are initialized now (lazy_*=0) so that the
// guest does not spend its first seconds zeroing them in the background.
func makeExt4(ctx context.Context, staging, raw string, size int64) error {
	_, err := run(ctx, "", "mke2fs", "-t", "ext4", "-F", "-q", "-d", staging, "-L", RootfsLabel, "-m", "0", "-J", "size=16",
		"-E", "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0", raw, strconv.FormatInt(size/1024, 10)+"k")
	if err != nil {
		return fmt.Errorf("make root filesystem: %w", err)
	}
	return nil
}

// chownRoot makes every inode of the ext4 image raw, whose files came
// from staging, owned by root. mke2fs -d copies the staging files' owners,
// which are the builder's when the build runs without root.
func chownRoot(ctx context.Context, staging, raw string) error {
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
		// debugfs splits arguments like a shell: quote the path and
		// double any quote inside it.
		q := `"` + strings.ReplaceAll(guest, `"`, `""`) + `"`
		fmt.Fprintf(&script, "set_inode_field %s uid 0\nset_inode_field %s gid 0\n", q, q)
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
	cmd, err := command(ctx, "", "debugfs", "-w", "-f", cmdFile, raw)
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("fix root filesystem owners: debugfs: %w%s", err, stderrTail(stderr.Bytes()))
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
	if _, err := run(ctx, "", "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2); err != nil {
		return fmt.Errorf("convert root disk to qcow2: %w", err)
	}
	return nil
}
