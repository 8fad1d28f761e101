package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
)

// gitImage is the image the mounts section runs git status in: the
// default packages and git. It is built (or found up to date: the build
// is then a no-op of a few seconds) in the user's default home, where
// later runs reuse it, and linked into the bench's home.
const gitImage = "bench-git:latest"

// ensureGitImage builds gitImage in the default home when it is missing
// or stale (another agent, other package versions) and links it into
// e's home.
func ensureGitImage(ctx context.Context, e *env) string {
	src, err := layout.DefaultHome()
	check("default home", err)
	cfg, err := os.CreateTemp("", "gdbench-image-*.json")
	check("image config", err)
	defer os.Remove(cfg.Name())
	_, err = cfg.WriteString(`{"packages": ["git"]}` + "\n")
	check("image config", err)
	check("image config", cfg.Close())
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, e.bin, "image", "build", "--config", cfg.Name(), "--tag", gitImage)
	// The later value of a variable wins: the build goes to the default
	// home, not the bench's.
	cmd.Env = append(os.Environ(), layout.EnvHome+"="+string(src))
	out, err := cmd.CombinedOutput()
	check(fmt.Sprintf("build %s in %s: %s", gitImage, src, out), err)
	fmt.Fprintf(os.Stderr, "bench: %s in %s: %s", gitImage, time.Since(start).Round(time.Second), out)
	check("link "+gitImage, linkNewImages(src.Images(), e.home.Images()))
	return gitImage
}

// linkNewImages hard-links into dst the files of src it lacks (blobs and
// manifests are content-addressed and read-only) and replaces the refs
// that differ, each with a rename (a name starting with '.' is not a ref
// while it is written).
func linkNewImages(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			if rel == "tmp" {
				return filepath.SkipDir
			}
			return os.MkdirAll(target, 0o700)
		case !d.Type().IsRegular():
			return nil
		}
		sst, err := os.Stat(path)
		if err != nil {
			return err
		}
		if dst, err := os.Stat(target); err == nil && os.SameFile(sst, dst) {
			return nil
		}
		tmp := filepath.Join(filepath.Dir(target), ".bench-"+d.Name())
		os.Remove(tmp)
		if err := os.Link(path, tmp); err != nil {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if err := os.WriteFile(tmp, b, sst.Mode().Perm()); err != nil {
				return err
			}
		}
		return os.Rename(tmp, target)
	})
}
