package snapshots

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/atomicfile"
)

// signedSnapshot commits a live --output snapshot with a session record
// that has what escaping and compaction could disturb.
func signedSnapshot(t *testing.T, st *Store) (*Snapshot, string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "env.qcow2")
	id, dir, err := st.Begin()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, DiskFile), []byte("disk"), 0o600)
	os.WriteFile(filepath.Join(dir, StateFile), []byte("state"), 0o600)
	s := &Snapshot{ID: id, Name: "n", Kind: Live, Created: time.Now(), Source: "0123456789ab", ImageRef: "a<b>&c\u2028",
		Session: json.RawMessage(`{"spec":{"mounts":[{"host_path":"/home/u/work","guest_path":"/w"}]},"x":1.50,"s":"<\u00e9>"}`),
		Path:    out}
	if err := st.Commit(s, dir); err != nil {
		t.Fatal(err)
	}
	return s, out
}

// editMeta rewrites one field of a metadata file, as anyone without the
// key can.
func editMeta(t *testing.T, path, field string, value any) {
	t.Helper()
	var m map[string]json.RawMessage
	b, _ := os.ReadFile(path)
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	m[field], _ = json.Marshal(value)
	b, _ = json.Marshal(m)
	os.WriteFile(path, b, 0o600)
}

// TestOwn: the snapshots a home commits verify, from the store and from
// their sidecar, however the file is re-encoded; an edit to any field,
// another home's key, or no key at all make them foreign.
func TestOwn(t *testing.T) {
	st := &Store{Dir: t.TempDir()}
	s, out := signedSnapshot(t, st)
	if s.MAC == "" {
		t.Fatal("Commit did not sign")
	}
	own := func(t *testing.T, st *Store, ref string) bool {
		t.Helper()
		got, err := st.Resolve(ref)
		if err != nil {
			t.Fatal(err)
		}
		ok, err := st.Own(got)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !own(t, st, s.ID) || !own(t, st, out) {
		t.Fatal("a snapshot this home made is not own")
	}
	// The same values, spelled differently: indentation, key order and
	// escapes are not what the MAC covers (the session record is covered
	// as its compacted bytes).
	t.Run("re-encoded", func(t *testing.T) {
		var m map[string]json.RawMessage
		b, _ := os.ReadFile(out + SidecarMeta)
		json.Unmarshal(b, &m)
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		enc.SetIndent("\t", "\t")
		enc.Encode(m)
		os.WriteFile(out+SidecarMeta, bytes.ReplaceAll(buf.Bytes(), []byte(`\u003c`), []byte(`<`)), 0o600)
		if !own(t, st, out) {
			t.Errorf("re-encoded metadata no longer verifies:\n%s", buf.Bytes())
		}
	})
	// A key repeated later in the file, in another case, is what json
	// decodes.
	t.Run("repeated key", func(t *testing.T) {
		_, out := signedSnapshot(t, st)
		b, _ := os.ReadFile(out + SidecarMeta)
		b = bytes.TrimRight(b, "}\n")
		os.WriteFile(out+SidecarMeta, append(b, `,"SESSION":{"spec":{}}}`...), 0o600)
		if own(t, st, out) {
			t.Error("a sidecar with a repeated session key verifies")
		}
	})
	for _, tt := range []struct {
		field string
		value any
	}{
		{"session", map[string]any{"spec": map[string]any{"mounts": []any{map[string]any{"host_path": "/", "guest_path": "/w"}}}}},
		{"kind", "disk"},
		{"image_id", "other"},
		{"base_digest", "sha256:00"},
		{"files", []File{{Name: DiskFile, Size: 1, SHA256: "00"}}},
		{"shape", Shape{CPUs: 64}},
		{"path", "/elsewhere.qcow2"},
		{"created", time.Unix(0, 0)},
		{"name", "other"},
		{"mac", strings.Repeat("0", 64)},
		{"mac", "zz"},
		{"mac", ""},
	} {
		t.Run("edited "+tt.field, func(t *testing.T) {
			_, out := signedSnapshot(t, st)
			editMeta(t, out+SidecarMeta, tt.field, tt.value)
			if own(t, st, out) {
				t.Errorf("a sidecar with %s edited verifies", tt.field)
			}
		})
	}
	t.Run("another home", func(t *testing.T) {
		other := &Store{Dir: t.TempDir()}
		_, theirs := signedSnapshot(t, other)
		if own(t, st, theirs) {
			t.Error("another home's snapshot is own")
		}
	})
	t.Run("no key", func(t *testing.T) {
		if own(t, &Store{Dir: t.TempDir()}, out) {
			t.Error("own in a home that never signed")
		}
	})
	t.Run("damaged key", func(t *testing.T) {
		home := &Store{Dir: t.TempDir()}
		os.WriteFile(home.keyPath(), []byte("short"), 0o600)
		got, _ := home.Resolve(out)
		if _, err := home.Own(got); err == nil || !strings.Contains(err.Error(), "damaged") {
			t.Errorf("damaged key: %v", err)
		}
	})
	// A snapshot from before signing: the same metadata without a MAC.
	t.Run("unsigned", func(t *testing.T) {
		_, out := signedSnapshot(t, st)
		var m map[string]json.RawMessage
		b, _ := os.ReadFile(out + SidecarMeta)
		json.Unmarshal(b, &m)
		delete(m, "mac")
		b, _ = json.Marshal(m)
		os.WriteFile(out+SidecarMeta, b, 0o600)
		if own(t, st, out) {
			t.Error("an unsigned snapshot is own")
		}
	})
}

// TestKeyRace: processes making the key at once all sign with the one
// that was kept.
func TestKeyRace(t *testing.T) {
	dir := t.TempDir()
	const n = 8
	keys := make([][]byte, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			k, err := (&Store{Dir: dir}).key()
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		})
	}
	wg.Wait()
	kept, err := os.ReadFile(filepath.Join(dir, "snapshot.key"))
	if err != nil || len(kept) != keySize {
		t.Fatalf("key file: %d bytes, %v", len(kept), err)
	}
	for i, k := range keys {
		if !bytes.Equal(k, kept) {
			t.Errorf("process %d signs with a key that was not kept", i)
		}
	}
	st, _ := os.Stat(filepath.Join(dir, "snapshot.key"))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v", st.Mode())
	}
}

// TestMetaFiles: a sidecar is read only if it is a regular file of a
// sane size.
func TestMetaFiles(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "d.qcow2")
	os.WriteFile(disk, []byte("disk"), 0o600)
	huge := filepath.Join(dir, "huge.json")
	f, _ := os.Create(huge)
	f.WriteString(`{"id":"0123456789ab","kind":"disk","name":"`)
	f.Truncate(maxMeta + 10)
	f.Close()
	fifo := filepath.Join(dir, "fifo.json")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, sidecar, want string
	}{
		{"huge", huge, "larger than"},
		{"fifo", fifo, "not a regular file"},
		{"directory", dir, "not a regular file"},
		{"device", "/dev/zero", "not a regular file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(disk + SidecarMeta)
			if err := os.Symlink(tt.sidecar, disk+SidecarMeta); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { _, err := OpenPath(disk); done <- err }()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("err = %v, want %q", err, tt.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("OpenPath hangs")
			}
		})
	}
}

func TestAsDiskCheckpoint(t *testing.T) {
	st := &Store{Dir: t.TempDir()}
	s, out := signedSnapshot(t, st)
	got, _ := st.Resolve(out)
	c := got.AsDiskCheckpoint()
	if c.Kind != Disk || c.StatePath() != "" || len(c.Session) != 0 || c.Shape != (Shape{}) || c.MAC != "" || c.signed != nil {
		t.Errorf("%+v: live state, session or signature kept", c)
	}
	if len(c.Files) != 1 || c.Files[0].Name != DiskFile || c.DiskPath() != out || c.ImageID != s.ImageID {
		t.Errorf("%+v: disk lost", c)
	}
	if ok, _ := st.Own(c); ok {
		t.Error("a disk checkpoint of a foreign snapshot is own")
	}
}

// FuzzMeta: metadata read from any bytes re-encodes to what it was
// signed over. Whatever a signed file's values are, the file written
// from them reads back to the same signed bytes, so a snapshot this home
// made always verifies; and reading never panics.
func FuzzMeta(f *testing.F) {
	f.Add([]byte(`{"id":"0123456789ab","kind":"live","created":"2024-01-02T03:04:05.123456789+02:00","session":{"a": [1, 2.50, "<\u00e9>"]}}`))
	f.Add([]byte(`{"id":"0123456789ab","kind":"disk","image_ref":"\u2028\ud800","files":[{"name":"disk.qcow2","size":-1}]}`))
	f.Add([]byte(`{"id":"0123456789ab","kind":"disk","session":"x","SESSION":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		p := filepath.Join(dir, MetaFile)
		os.WriteFile(p, b, 0o600)
		s, err := load(p)
		if err != nil {
			return
		}
		first := s.signed
		if err := atomicfile.WriteJSON(p, s, 0o600); err != nil {
			return // a time json cannot encode: Commit fails too
		}
		again, err := load(p)
		if err != nil {
			t.Fatalf("metadata written from read values does not read: %v", err)
		}
		if !bytes.Equal(again.signed, first) {
			t.Fatalf("signed bytes changed:\n%s\n%s", first, again.signed)
		}
	})
}

// TestForeignStorePathIgnored: metadata in the store that this home did
// not sign (copied in, or edited) cannot point the store at a host file:
// its path is ignored, so a resume does not open it and rm does not
// delete it. This home's own --output snapshots keep theirs.
func TestForeignStorePathIgnored(t *testing.T) {
	st := &Store{Dir: t.TempDir()}
	own, out := signedSnapshot(t, st)
	victim := filepath.Join(t.TempDir(), "victim.txt")
	os.WriteFile(victim, []byte("keep me"), 0o600)
	foreign := fakeSnapshot(t, st, "foreign", Disk)
	editMeta(t, filepath.Join(st.Dir, foreign.ID, MetaFile), "path", victim)

	got, err := st.Resolve(own.ID)
	if err != nil || got.DiskPath() != out {
		t.Fatalf("own --output snapshot: %v, disk %q; want %q", err, got.DiskPath(), out)
	}
	got, err = st.Resolve("foreign")
	if err != nil {
		t.Fatal(err)
	}
	if got.DiskPath() == victim || got.Path != "" {
		t.Fatalf("a foreign entry's path is trusted: disk %q", got.DiskPath())
	}
	if err := st.Remove("foreign"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "keep me" {
		t.Fatalf("rm of a foreign entry touched the file it names: %q %v", b, err)
	}
	if err := st.Remove(own.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("rm of an own --output snapshot left its disk: %v", err)
	}
}
