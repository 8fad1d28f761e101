package sessions

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/snapshots"
)

func TestImageUsers(t *testing.T) {
	home := layout.Home(t.TempDir())
	users := ImageUsers(home)
	id := "sha256:" + strings.Repeat("a", 64)
	other := "sha256:" + strings.Repeat("b", 64)
	if got, err := users(id); err != nil || len(got) != 0 {
		t.Fatalf("empty home: %v, %v", got, err)
	}
	write := func(p, data string) {
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(home.Session("0123456789ab"), layout.SpecFile), `{"id":"0123456789ab","image_id":"`+id+`","spec":{"name":"work"}}`)
	write(filepath.Join(home.Session("ba9876543210"), layout.SpecFile), `{"id":"ba9876543210","image_id":"`+id+`","spec":{}}`)
	write(filepath.Join(home.Session("cccccccccccc"), layout.SpecFile), `{"id":"cccccccccccc","image_id":"`+other+`"}`)
	write(filepath.Join(home.Session("dddddddddddd"), layout.SpecFile), `{corrupt`)
	st := &snapshots.Store{Dir: home.Snapshots()}
	for _, s := range []*snapshots.Snapshot{{Name: "before-upgrade", ImageID: id}, {ImageID: other}} {
		sid, dir, err := st.Begin()
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, snapshots.DiskFile), []byte("disk"), 0o600)
		s.ID, s.Kind = sid, snapshots.Disk
		if err := st.Commit(s, dir); err != nil {
			t.Fatal(err)
		}
		if s.ImageID == id {
			defer func(sid string) {
				got, err := users(id)
				want := []string{"session 0123456789ab (work)", "session ba9876543210", "snapshot " + sid + " (before-upgrade)"}
				if err != nil || !reflect.DeepEqual(got, want) {
					t.Fatalf("users = %q, %v; want %q", got, err, want)
				}
			}(sid)
		}
	}
}
