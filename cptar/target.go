package cptar

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Kind is what a copy's stream holds, which decides where it lands (as
// docker cp decides).
type Kind string

const (
	// KindEntry: one file, symlink or directory tree. It goes into DEST
	// when DEST is a directory, under its own name; otherwise it
	// becomes DEST, whose parent must exist.
	KindEntry Kind = "entry"
	// KindContents: a directory whose contents (SRC/.) go into DEST,
	// which is made when missing.
	KindContents Kind = "contents"
	// KindTar: a tar stream the user made; its entries go, with their
	// own names, into DEST, which must be a directory.
	KindTar Kind = "tar"
)

// Destination resolves where a stream of kind, whose source is named
// base, lands at dest: Extract's root directory and Options.Name ("" for
// a KindTar). A missing directory is an error that wraps fs.ErrNotExist.
func Destination(dest, base string, kind Kind) (dir, name string, err error) {
	fi, err := os.Stat(dest)
	switch {
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return "", "", err
	case kind == KindTar:
		if err != nil {
			return "", "", notFound("no such directory: %s", dest)
		}
		if !fi.IsDir() {
			return "", "", fmt.Errorf("%s is not a directory (a tar stream goes into one)", dest)
		}
		return dest, "", nil
	case kind == KindEntry && err == nil && fi.IsDir():
		if !validName(base) {
			return "", "", fmt.Errorf("cannot copy %q: not a file name", base)
		}
		return dest, base, nil
	case kind == KindContents && err == nil && !fi.IsDir():
		return "", "", fmt.Errorf("%s is not a directory (a directory's contents go into one)", dest)
	case kind == KindContents && err == nil:
		// Into the directory there (through a symlink to one, as the
		// user named it), which keeps its own mode.
		return dest, IntoRoot, nil
	case kind != KindEntry && kind != KindContents:
		return "", "", fmt.Errorf("unknown kind of copy %q", kind)
	case err != nil && (strings.HasSuffix(dest, "/") || strings.HasSuffix(dest, "/.")):
		return "", "", notFound("no such directory: %s", dest) // a directory was meant
	}
	// dest is the new name (or, for contents, a directory to merge into).
	clean := filepath.Clean(dest)
	name = filepath.Base(clean)
	if !validName(name) {
		return "", "", fmt.Errorf("cannot copy to %s: name a file or directory", dest)
	}
	dir = filepath.Dir(clean)
	if fi, err := os.Stat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", "", notFound("no such directory: %s", dir)
		}
		return "", "", err
	} else if !fi.IsDir() {
		return "", "", fmt.Errorf("%s is not a directory", dir)
	}
	return dir, name, nil
}

// notFoundError is a missing path, said plainly ("no such directory:
// /x" rather than "/x: file does not exist").
type notFoundError struct{ msg string }

func (e *notFoundError) Error() string { return e.msg }
func (e *notFoundError) Unwrap() error { return fs.ErrNotExist }

func notFound(format string, args ...any) error {
	return &notFoundError{msg: fmt.Sprintf(format, args...)}
}

// SourceName is the name a source path's stream carries (its base name,
// of the absolute path: "." and ".." name the directory they stand for)
// and whether the path asks for a directory's contents (ends in "/.").
// The root directory's stream is named "root": a stream's top needs a
// name, and its contents are what a copy of "/." is for.
func SourceName(src string) (base string, contents bool) {
	contents = strings.HasSuffix(src, "/.") || src == "."
	abs, err := filepath.Abs(src)
	if err != nil {
		abs = filepath.Clean(src)
	}
	base = filepath.Base(abs)
	if base == "/" || base == "." {
		base = "root"
	}
	return base, contents
}

// AgentMain is the agent's side of gondolin cp, `gondolin-agent cp-out
// PATH` (a tar stream of PATH on stdout) or `gondolin-agent cp-in KIND
// DEST NAME` (stdin's stream extracted at DEST). It returns the exit
// code; skipped entries and errors are told on stderr. ok is false when
// args are no cp command.
func AgentMain(args []string, stdin io.Reader, stdout, stderr io.Writer) (code int, ok bool) {
	if len(args) < 2 {
		return 0, false
	}
	skipped := func(name, why string) { fmt.Fprintf(stderr, "skipped %q: %s\n", name, why) }
	fail := func(err error) int {
		fmt.Fprintln(stderr, err)
		if errors.Is(err, fs.ErrNotExist) {
			return ExitNotFound
		}
		return ExitFailed
	}
	switch {
	case args[1] == CopyOutArg && len(args) == 3:
		src := fromHome(args[2])
		base, _ := SourceName(src)
		if err := Write(stdout, src, base, skipped); err != nil {
			return fail(err), true
		}
		return 0, true
	case args[1] == CopyInArg && len(args) == 5:
		dir, name, err := Destination(fromHome(args[3]), args[4], Kind(args[2]))
		if err != nil {
			return fail(err), true
		}
		root, err := os.OpenRoot(dir)
		if err != nil {
			return fail(err), true
		}
		defer root.Close()
		io.WriteString(stdout, ReadyLine)
		// In the guest, root copies for root: a setuid file stays one.
		if err := Extract(stdin, root, Options{Name: name, SpecialBits: true, Skipped: skipped}); err != nil {
			return fail(err), true
		}
		return 0, true
	case args[1] == CopyOutArg || args[1] == CopyInArg:
		fmt.Fprintf(stderr, "usage: %s %s PATH | %s KIND DEST NAME\n", args[0], CopyOutArg, CopyInArg)
		return 2, true
	}
	return 0, false
}

// fromHome makes a relative guest path relative to the home directory
// (scp's habit), not to wherever the session's commands start.
func fromHome(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	home := os.Getenv("HOME")
	if home == "" {
		home = "/"
	}
	// Join would clean a trailing "/." away, which asks for contents.
	return strings.TrimSuffix(home, "/") + "/" + p
}
