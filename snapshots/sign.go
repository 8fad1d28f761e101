package snapshots

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/gondolin/gondolin/internal/atomicfile"
	"github.com/gondolin/gondolin/internal/layout"
)

// A snapshot file can come from anywhere: its metadata names host
// directories to mount and a network policy, and a live one carries a
// migration stream, which QEMU does not treat as a security boundary. So
// every snapshot a home commits is signed with that home's key (an
// HMAC-SHA256 over its metadata, file checksums included, so the files
// are bound too), and only a snapshot whose signature verifies is
// trusted whole. The supervisor resumes any other as a disk checkpoint,
// through ForeignBacking, and with none of its recorded session.

const keySize = 32

// macLabel starts what a MAC covers, so that the key signs nothing else
// by accident and a later encoding can change the label.
const macLabel = "gondolin snapshot metadata v1\n"

func (st *Store) keyPath() string { return filepath.Join(st.Dir, layout.SnapshotKeyFile) }

// readKey reads the home's key; fs.ErrNotExist when this home never
// signed a snapshot.
func (st *Store) readKey() ([]byte, error) {
	key, err := os.ReadFile(st.keyPath())
	if err != nil {
		return nil, err
	}
	if len(key) != keySize {
		// Never replaced silently: every snapshot signed with it would
		// turn foreign.
		return nil, fmt.Errorf("snapshot key %s is damaged (%d bytes, not %d); remove it to make a new one (the snapshots signed with it will then resume as foreign)",
			st.keyPath(), len(key), keySize)
	}
	return key, nil
}

// key returns the home's key, made on first use.
func (st *Store) key() ([]byte, error) {
	key, err := st.readKey()
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	if err := layout.MkdirPrivate(st.Dir); err != nil {
		return nil, err
	}
	key = make([]byte, keySize)
	rand.Read(key) // never fails (crypto/rand since Go 1.24)
	// Create, not a rename over: of two processes making the key at
	// once, the second must not replace the key the first already
	// signed with. The loser reads the winner's.
	if err := atomicfile.Create(st.keyPath(), key, 0o600); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("create the snapshot key: %w", err)
	}
	return st.readKey()
}

// signedBytes is what a snapshot's MAC covers: every field of its
// metadata but the MAC, encoded as json.Marshal does, in field order.
// That encoding is a function of the decoded values (strings are
// re-escaped, times keep their nanoseconds and offset, the session
// record is a RawMessage and so compacted), so the MAC vouches for
// exactly the values a resume uses, however the file spells them
// (indentation, key order, a key repeated: json keeps the last):
// metadata read back from its file gives the bytes it was signed over,
// and an edit that changes a value does not. FuzzMeta checks the first
// half.
func (s *Snapshot) signedBytes() ([]byte, error) {
	c := *s
	c.MAC = ""
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, err
	}
	return append([]byte(macLabel), b...), nil
}

func mac(key, msg []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(msg)
	return h.Sum(nil)
}

// sign sets s.MAC with the home's key, making the key on first use.
func (st *Store) sign(s *Snapshot) error {
	key, err := st.key()
	if err != nil {
		return err
	}
	b, err := s.signedBytes()
	if err != nil {
		return err
	}
	s.MAC = hex.EncodeToString(mac(key, b))
	s.signed = b
	return nil
}

// Own reports whether this home made s: its metadata, as it was read,
// carries a MAC that verifies with this home's key. A snapshot without
// one (a bare disk, metadata from another home, edited since, or taken
// before snapshots were signed) is foreign. An error means the key is
// unreadable, never that s is bad.
func (st *Store) Own(s *Snapshot) (bool, error) {
	if s.MAC == "" || s.signed == nil {
		return false, nil
	}
	got, err := hex.DecodeString(s.MAC)
	if err != nil || len(got) != sha256.Size {
		return false, nil
	}
	key, err := st.readKey()
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil // this home never signed anything
	}
	if err != nil {
		return false, err
	}
	return hmac.Equal(got, mac(key, s.signed)), nil
}

// AsDiskCheckpoint returns what of a foreign snapshot a resume may use:
// its disk, and the image it names (a choice among this home's images,
// nothing more). The live state, the recorded session (mounts, policy,
// command) and the VM's shape are dropped, and only the disk's checksum
// is kept (a foreign live snapshot may well come without its state).
func (s *Snapshot) AsDiskCheckpoint() *Snapshot {
	c := &Snapshot{
		ID: s.ID, Name: s.Name, Kind: Disk, Created: s.Created, Source: s.Source,
		ImageID: s.ImageID, ImageRef: s.ImageRef, BaseDigest: s.BaseDigest,
		Path: s.Path, dir: s.dir,
	}
	for _, f := range s.Files {
		if f.Name == DiskFile {
			c.Files = append(c.Files, f)
		}
	}
	return c
}
