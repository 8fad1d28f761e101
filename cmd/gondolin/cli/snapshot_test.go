package cli

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/snapshots"
)

// Refs the supervisor's API cannot carry are answered by the store here,
// without a supervisor, as before rm went through it, and nothing goes.
func TestRemoveSnapshotHere(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(layout.EnvHome, dir)
	notDisk := filepath.Join(dir, "notes.qcow2")
	if err := os.WriteFile(notDisk, []byte("not a qcow2 file"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ref  string
		want error
	}{
		{"", errdefs.ErrNotFound},
		{".", errdefs.ErrNotFound},
		{"..", errdefs.ErrNotFound},
		{filepath.Join(dir, "missing.qcow2"), errdefs.ErrNotFound},
		{"relative/missing.qcow2", errdefs.ErrNotFound},
		{notDisk, snapshots.ErrCorrupt},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			if apiCarries(tc.ref) {
				t.Fatalf("apiCarries(%q) = true", tc.ref)
			}
			err := removeSnapshotHere(tc.ref)
			if !errors.Is(err, tc.want) {
				t.Errorf("removeSnapshotHere(%q) = %v, want %v", tc.ref, err, tc.want)
			}
		})
	}
	if _, err := os.Stat(notDisk); err != nil {
		t.Errorf("rm deleted a file outside the store: %v", err)
	}
}

func TestAPICarries(t *testing.T) {
	for _, ref := range []string{"0123456789ab", "0123", "before-upgrade", "v1.2", "...", "we ird?#%"} {
		if !apiCarries(ref) {
			t.Errorf("apiCarries(%q) = false, want true", ref)
		}
	}
}
