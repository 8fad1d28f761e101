package rootfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// toolPackages names the Debian package that ships each host tool the
// builder runs, for the "install it with" hint.
var toolPackages = map[string]string{
	"apt-cache": "apt",
	"apt-get":   "apt",
	"dpkg-deb":  "dpkg",
	"mke2fs":    "e2fsprogs",
	"debugfs":   "e2fsprogs",
	"qemu-img":  "qemu-utils",
	"ldconfig":  "libc-bin",
}

// ErrMissingTool is matched (errors.Is) by the error for a tool that is
// not installed.
var ErrMissingTool = errors.New("missing tool")

// missingToolError says which tools are missing and how to install them,
// in one line.
type missingToolError struct{ tools []string }

func (e *missingToolError) Unwrap() error { return ErrMissingTool }

func (e *missingToolError) Error() string {
	var pkgs []string
	for _, t := range e.tools {
		if !slices.Contains(pkgs, toolPackages[t]) {
			pkgs = append(pkgs, toolPackages[t])
		}
	}
	them := "it"
	if len(e.tools) > 1 {
		them = "them"
	}
	return fmt.Sprintf("%s not found: install %s with: sudo apt-get install %s", strings.Join(e.tools, ", "), them, strings.Join(pkgs, " "))
}

// LookTool finds a host tool. A normal user's PATH on Debian lacks the
// sbin directories, where mke2fs, debugfs and ldconfig live, so those are
// searched too.
func LookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", &missingToolError{[]string{name}}
}

// NeedTools checks that every named tool is installed, so that a build
// fails before it downloads anything rather than halfway through.
func NeedTools(names ...string) error {
	var missing []string
	for _, name := range names {
		if _, err := LookTool(name); err != nil {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return &missingToolError{missing}
	}
	return nil
}

// Command prepares a host tool run. The environment pins the C locale so
// that apt's output is parsed in English.
func Command(ctx context.Context, dir, name string, args ...string) (*exec.Cmd, error) {
	path, err := LookTool(name)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANGUAGE=")
	return cmd, nil
}

// Run runs a host tool and returns its stdout; on failure the error
// carries the end of its stderr.
func Run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd, err := Command(ctx, dir, name, args...)
	if err != nil {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w%s", name, strings.Join(args, " "), err, StderrTail(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// StderrTail formats the last lines of a tool's stderr for an error.
func StderrTail(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return ""
	}
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return ": " + strings.Join(lines, "; ")
}
