// Package cptar is the tar stream `gondolin cp` moves between the host
// and a guest: Write packs a file or a directory tree, Extract unpacks one
// under an os.Root. Both ends use it, the guest agent to answer and the
// host to copy; on the host, Extract reads what a hostile guest wrote and
// is the boundary that keeps the copy inside its destination.
package cptar

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Exit codes of the agent's cp-out and cp-in: a missing path is worth
// its own, so that the host can say "not found" rather than "failed".
const (
	ExitFailed   = 1
	ExitNotFound = 3
)

// Agent argv words: the host runs the guest's agent (PID 1's executable,
// which every image has) as `AgentPath CopyOutArg PATH` or `AgentPath
// CopyInArg DIR NAME`.
const (
	AgentPath  = "/proc/1/exe"
	CopyOutArg = "cp-out"
	CopyInArg  = "cp-in"
)

// ReadyLine is what cp-in prints on stdout once it can take the stream:
// the host sends nothing before it, so that an agent which does not know
// cp-in (built before it) holds no stdin in the pipes while the host
// stops it.
const ReadyLine = "gondolin-cp-in: ready\n"

// maxName bounds an entry's name and a symlink's target: Linux's
// PATH_MAX. archive/tar bounds the headers that carry them (1 MiB).
const maxName = 4096

// Write writes src to w as a tar stream: a regular file, a symlink (not
// followed) or a directory with everything under it, each entry named
// name or name/.... Modes (setuid, setgid and sticky included) and
// modification times go in the stream; owners do not (the other side
// owns what it writes). A src ending in "/" or "/." names what a
// symlink there points at. Fifos, devices and sockets are left out and
// reported to skipped.
func Write(w io.Writer, src, name string, skipped func(name, why string)) error {
	stat := os.Lstat
	if strings.HasSuffix(src, "/") || strings.HasSuffix(src, "/.") {
		stat = os.Stat
	}
	fi, err := stat(src)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	tw := tar.NewWriter(bw)
	if err := writeTree(tw, src, name, fi, skipped); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

func writeTree(tw *tar.Writer, src, name string, fi fs.FileInfo, skipped func(name, why string)) error {
	hdr := &tar.Header{
		Name:    name,
		Mode:    fileInfoMode(fi),
		ModTime: fi.ModTime(),
		// PAX keeps sub-second times and names of any length.
		Format: tar.FormatPAX,
	}
	switch fi.Mode().Type() {
	case 0:
		hdr.Typeflag = tar.TypeReg
		hdr.Size = fi.Size()
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("%s: file shrank while being copied", src)
			}
			return fmt.Errorf("%s: %w", src, err)
		}
		return nil
	case fs.ModeSymlink:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = target
		return tw.WriteHeader(hdr)
	case fs.ModeDir:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		entries, err := os.ReadDir(src)
		if err != nil {
			return err
		}
		for _, e := range entries {
			child := filepath.Join(src, e.Name())
			cfi, err := os.Lstat(child)
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					continue // removed meanwhile
				}
				return err
			}
			if err := writeTree(tw, child, name+"/"+e.Name(), cfi, skipped); err != nil {
				return err
			}
		}
		return nil
	}
	if skipped != nil {
		skipped(name, "not a regular file, directory or symlink ("+typeName(fi.Mode())+")")
	}
	return nil
}

func typeName(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "fifo"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	}
	return "irregular file"
}

// fileInfoMode is fi's mode as a tar header carries it (permissions, and
// the setuid, setgid and sticky bits), as archive/tar converts it.
func fileInfoMode(fi fs.FileInfo) int64 {
	h, err := tar.FileInfoHeader(fi, "")
	if err != nil {
		return int64(fi.Mode().Perm())
	}
	return h.Mode
}
