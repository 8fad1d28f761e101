package imagestore

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/gondolin/gondolin/internal/layout"
)

// The store has two flock(2) locks, always taken in this order:
//
//   - blobs.lock, shared by every writer (Hold) for as long as it has
//     stored blobs that no manifest names yet, and exclusive for Remove,
//     which deletes the blobs no manifest names;
//   - refs.lock, exclusive for whoever changes refs.
//
// Readers take neither: every file they read is replaced by rename or
// link, never rewritten in place.
func (s *Store) blobLock() string { return filepath.Join(s.root, layout.ImagesBlobLock) }

// flock opens path and locks it; the lock lasts until the file is closed.
func flock(path string, how int) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Hold keeps Remove from collecting blobs until release is called. A
// writer (a build, a pull, an import) holds it from before its first
// PutBlob or PutFile until its manifest is stored and tagged, so that the
// blobs it has stored but no manifest names yet survive a concurrent
// `gondolin image rm`. Holds are shared: writers never wait for each
// other, only for a running Remove.
func (s *Store) Hold() (release func(), err error) {
	f, err := flock(s.blobLock(), syscall.LOCK_SH)
	if err != nil {
		return nil, fmt.Errorf("image store: lock blobs: %w", err)
	}
	return func() { f.Close() }, nil
}

// lockRefs takes refs.lock exclusively.
func (s *Store) lockRefs() (unlock func(), err error) {
	f, err := flock(s.refLock(), syscall.LOCK_EX)
	if err != nil {
		return nil, fmt.Errorf("image store: lock refs: %w", err)
	}
	return func() { f.Close() }, nil
}
