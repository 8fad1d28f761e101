// Package testenv gives integration tests a private GONDOLIN_HOME that
// holds the default guest image, so tests boot real VMs without touching
// the user's sessions, templates or runs.
package testenv

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gondolin/gondolin/imagestore"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/qemuproc"
)

// EnvRequireVM makes a missing image fail integration tests instead of
// skipping them; `make test` sets it.
const EnvRequireVM = "GONDOLIN_TEST_REQUIRE_VM"

// Homes made by NewHome in one test binary share their images, their
// templates and their CA (the template keys depend on the images' paths
// and on the CA), so that each template is built once per binary instead
// of once per test: on two cores a template build is seconds. A test
// that adds or removes images, or breaks templates, asks for a
// PrivateHome.
var shared struct {
	once sync.Once
	dir  string
	err  error
}

// sharedDir returns the binary's shared directory: images linked from
// src, templates, CA.
func sharedDir(src layout.Home) (string, error) {
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "gdshared")
		for _, sub := range []string{"templates", "ca"} {
			if shared.err == nil {
				shared.err = os.MkdirAll(filepath.Join(shared.dir, sub), 0o700)
			}
		}
		if shared.err == nil {
			shared.err = linkTree(src.Images(), filepath.Join(shared.dir, "images"))
		}
	})
	return shared.dir, shared.err
}

// Cleanup removes what the binary's homes shared; TestMain calls it after
// the tests.
func Cleanup() {
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
}

// NewHome creates a fresh home under a short temporary path (unix socket
// paths are limited to 108 bytes) with the default image linked in from
// the user's store, and the binary's shared templates and CA. skip is
// non-empty when integration tests cannot run here (-short, or no image
// built), with the reason.
func NewHome() (home layout.Home, cleanup func(), skip string, err error) {
	return newHome(true)
}

// NewPrivateHome is NewHome with templates and a CA of its own.
func NewPrivateHome() (home layout.Home, cleanup func(), skip string, err error) {
	return newHome(false)
}

func newHome(share bool) (home layout.Home, cleanup func(), skip string, err error) {
	if testing.Testing() && testing.Short() {
		return "", nil, "integration test: skipped with -short", nil
	}
	src, err := layout.DefaultHome()
	if err != nil {
		return "", nil, "", err
	}
	if s := os.Getenv("GONDOLIN_TEST_SOURCE_HOME"); s != "" {
		src = layout.Home(s)
	}
	store, err := imagestore.Open(src.Images())
	if err == nil {
		_, err = store.Resolve(layout.DefaultImage)
	}
	if err != nil {
		msg := fmt.Sprintf("integration test needs the default image in %s (build it with: make image): %v", src.Images(), err)
		if os.Getenv(EnvRequireVM) != "" {
			return "", nil, "", fmt.Errorf("%s", msg)
		}
		return "", nil, msg, nil
	}
	dir, err := os.MkdirTemp("", "gd")
	if err != nil {
		return "", nil, "", err
	}
	home = layout.Home(dir)
	if !share {
		if err := LinkImages(src, home); err != nil {
			os.RemoveAll(dir)
			return "", nil, "", fmt.Errorf("link images: %w", err)
		}
		return home, func() { StopSupervisor(home); killVMs(home); os.RemoveAll(dir) }, "", nil
	}
	sd, err := sharedDir(src)
	for _, link := range []struct{ sub, path string }{{"images", home.Images()}, {"templates", home.Templates()}, {"ca", home.CA()}} {
		if err == nil {
			err = os.Symlink(filepath.Join(sd, link.sub), link.path)
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, "", fmt.Errorf("share images and templates: %w", err)
	}
	return home, func() { StopSupervisor(home); killVMs(home); os.RemoveAll(dir) }, "", nil
}

// StopSupervisor ends the supervisor a test's commands started in home,
// if one runs: gondolin exec starts one on demand, and its warm pool
// holds VMs that must not outlive the test. SIGTERM lets it kill its
// pool; one that does not exit within 10 s is killed.
func StopSupervisor(home layout.Home) {
	b, err := os.ReadFile(home.SupervisorLock())
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte("supervisor")) {
		return // gone, or the pid is another process's now
	}
	syscall.Kill(pid, syscall.SIGTERM)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && bytes.Contains(st, []byte(") Z")) {
			return // exited, not reaped by the test binary yet
		}
	}
	syscall.Kill(pid, syscall.SIGKILL)
}

// killVMs kills every QEMU that still runs in home: a test that failed
// half-way may leave a session's VM (detached: it outlives the
// supervisor), or a supervisor killed above its pool's, to a next
// supervisor that will not come.
func killVMs(home layout.Home) {
	for _, qemu := range qemuproc.In(string(home)) {
		syscall.Kill(qemu, syscall.SIGKILL)
	}
}

// Home is NewHome for one test: it skips or fails the test as needed and
// removes the home afterwards.
func Home(t testing.TB) layout.Home {
	t.Helper()
	return testHome(t, NewHome)
}

// PrivateHome is Home with templates and a CA of its own, for a test that
// breaks templates or counts them.
func PrivateHome(t testing.TB) layout.Home {
	t.Helper()
	return testHome(t, NewPrivateHome)
}

func testHome(t testing.TB, newHome func() (layout.Home, func(), string, error)) layout.Home {
	t.Helper()
	home, cleanup, skip, err := newHome()
	if err != nil {
		t.Fatal(err)
	}
	if skip != "" {
		t.Skip(skip)
	}
	t.Cleanup(cleanup)
	return home
}

// LinkImages makes src's images available in dst without copying them.
func LinkImages(src, dst layout.Home) error {
	return linkTree(src.Images(), dst.Images())
}

// linkTree recreates src's directories under dst and hard-links its files
// (blobs are read-only and content-addressed, so sharing them is safe).
// A file dst already has as the same file is left; one that differs (a
// ref moved to a newer image) is replaced with a rename, so that a
// reader never sees it half-written.
func linkTree(src, dst string) error {
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
		if sst, err := os.Stat(path); err != nil {
			return err
		} else if dst, err := os.Stat(target); err == nil && os.SameFile(sst, dst) {
			return nil
		}
		// A name starting with '.' is no ref or blob while it is made.
		tmp := filepath.Join(filepath.Dir(target), ".link-"+d.Name())
		os.Remove(tmp)
		if err := os.Link(path, tmp); err != nil {
			if err := copyFile(path, tmp); err != nil {
				return err
			}
		}
		return os.Rename(tmp, target)
	})
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, st.Mode().Perm())
}
