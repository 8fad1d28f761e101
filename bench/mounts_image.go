package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testenv"
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
	check("link "+gitImage, testenv.LinkImages(src, e.home))
	return gitImage
}
