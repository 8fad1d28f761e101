package debian

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/gondolin/gondolin/imagestore/internal/rootfs"
	"github.com/gondolin/gondolin/internal/progress"
)

// AgentGuestPath is where the root filesystem carries a copy of the agent
// (the initramfs runs it as /init; this copy is for debugging).
const AgentGuestPath = "/usr/sbin/gondolin-agent"

// hostname is the guest's default host name.
const hostname = "gondolin"

// etcFiles are the files no maintainer script writes for us, since none
// runs: accounts, names and an empty resolver config for the agent to fill.
var etcFiles = []struct {
	path string
	mode fs.FileMode
	data string
}{
	{"etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"},
	{"etc/group", 0o644, "root:x:0:\nnogroup:x:65534:\n"},
	{"etc/shadow", 0o640, "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n"},
	{"etc/hostname", 0o644, hostname + "\n"},
	{"etc/hosts", 0o644, "127.0.0.1\tlocalhost\n127.0.1.1\t" + hostname + "\n::1\tlocalhost ip6-localhost ip6-loopback\n"},
	{"etc/resolv.conf", 0o644, ""},
}

// skipDirs hold documentation and translations: a VM image does not need
// them and they are a large part of the packages.
var skipDirs = []string{"usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale"}

// noTime leaves a file's mtime at the time of writing: the files the
// builder makes itself have no archive time to keep.
var noTime time.Time

// skeletonDirs are the mount points and scratch directories the guest
// expects, with their conventional modes.
var skeletonDirs = []struct {
	path string
	mode fs.FileMode
}{
	{"root", 0o700},
	{"tmp", 0o777 | fs.ModeSticky},
	{"var/tmp", 0o777 | fs.ModeSticky},
	{"run", 0o755},
	{"proc", 0o555},
	{"sys", 0o555},
	{"dev", 0o755},
	{"mnt", 0o755},
	{"home", 0o755},
}

// finishRootfs does what dpkg's maintainer scripts and a base system
// would have done, on a tree of unpacked packages.
func finishRootfs(ctx context.Context, t *rootfs.Tree, staging, agent string, p progress.Reporter) error {
	for _, d := range skeletonDirs {
		if err := t.MkDir(d.path, d.mode, 0, 0, noTime); err != nil {
			return err
		}
	}
	for _, f := range etcFiles {
		if err := t.WriteFile(f.path, strings.NewReader(f.data), f.mode, 0, 0, noTime); err != nil {
			return err
		}
	}
	a, err := os.Open(agent)
	if err != nil {
		return err
	}
	err = t.WriteFile(strings.TrimPrefix(AgentGuestPath, "/"), a, 0o755, 0, 0, noTime)
	a.Close()
	if err != nil {
		return err
	}
	if !t.Exists("etc/ld.so.conf") {
		// libc-bin's file, which the base set does not pull in; without
		// it ldconfig would ignore etc/ld.so.conf.d.
		if err := t.WriteFile("etc/ld.so.conf", strings.NewReader("include /etc/ld.so.conf.d/*.conf\n"), 0o644, 0, 0, noTime); err != nil {
			return err
		}
	}
	if err := baseFiles(t); err != nil {
		return err
	}
	if err := busyboxLinks(ctx, t, staging); err != nil {
		return err
	}
	if err := caBundle(t, staging); err != nil {
		return err
	}
	return ldconfig(ctx, staging, p)
}

// baseFileCopies are what base-files' postinst copies into place: the
// shell profiles that give login shells a PATH and a prompt.
var baseFileCopies = []struct{ src, dst string }{
	{"usr/share/base-files/profile", "etc/profile"},
	{"usr/share/base-files/dot.bashrc", "root/.bashrc"},
	{"usr/share/base-files/dot.profile", "root/.profile"},
}

func baseFiles(t *rootfs.Tree) error {
	for _, c := range baseFileCopies {
		if t.Exists(c.dst) {
			continue
		}
		// Through the tree's root: a package's symlink cannot make this
		// read a host file.
		f, err := t.Open(c.src)
		if err != nil {
			continue // an image without base-files
		}
		err = t.WriteFile(c.dst, f, 0o644, 0, 0, noTime)
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// busyboxLinks points every applet the packages do not provide at
// busybox, /bin/sh included.
func busyboxLinks(ctx context.Context, t *rootfs.Tree, staging string) error {
	if !t.Exists("usr/bin/busybox") {
		return errors.New("the packages did not provide /usr/bin/busybox")
	}
	// The static busybox from the package is the authority on its
	// applets; running it on the host is safe (static, just verified).
	out, err := run(ctx, "", filepath.Join(staging, "usr/bin/busybox"), "--list")
	if err != nil {
		return fmt.Errorf("list busybox applets: %w", err)
	}
	applets := strings.Fields(string(out))
	if !slices.Contains(applets, "sh") {
		applets = append(applets, "sh")
	}
	for _, name := range applets {
		if name == "busybox" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
			continue
		}
		if t.Exists("usr/bin/"+name) || t.Exists("usr/sbin/"+name) {
			continue
		}
		if err := t.Symlink("busybox", "usr/bin/"+name); err != nil {
			return err
		}
	}
	return nil
}

// caBundle writes the bundle update-ca-certificates (ca-certificates'
// postinst) would make: every certificate the packages ship, in order.
func caBundle(t *rootfs.Tree, staging string) error {
	const src = "usr/share/ca-certificates"
	if !t.Exists(src) {
		return nil
	}
	var certs []string
	err := filepath.WalkDir(filepath.Join(staging, src), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && strings.HasSuffix(p, ".crt") {
			certs = append(certs, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ca certificates: %w", err)
	}
	slices.Sort(certs)
	var bundle bytes.Buffer
	for _, c := range certs {
		pem, err := os.ReadFile(c)
		if err != nil {
			return fmt.Errorf("ca certificates: %w", err)
		}
		bundle.Write(pem)
		if len(pem) > 0 && pem[len(pem)-1] != '\n' {
			bundle.WriteByte('\n')
		}
	}
	if err := t.MkDir("etc/ssl/certs", 0o755, 0, 0, noTime); err != nil {
		return err
	}
	return t.WriteFile("etc/ssl/certs/ca-certificates.crt", &bundle, 0o644, 0, 0, noTime)
}

// ldconfig writes etc/ld.so.cache with the host's ldconfig (-X: the
// packages ship their library links; only the cache is missing). Without a
// cache the guest's ld.so still finds libraries in its default
// directories, only more slowly, so a missing ldconfig is a warning.
func ldconfig(ctx context.Context, staging string, p progress.Reporter) error {
	if _, err := lookTool("ldconfig"); err != nil {
		p.Warnf("%v; the image gets no /etc/ld.so.cache", err)
		return nil
	}
	if _, err := run(ctx, "", "ldconfig", "-X", "-r", staging); err != nil {
		p.Warnf("%v; the image gets no /etc/ld.so.cache", err)
	}
	return nil
}
