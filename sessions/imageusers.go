package sessions

import (
	"slices"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/snapshots"
)

// ImageUsers returns the imagestore.RemoveOptions.InUse function for
// home: the users of an image are the sessions whose record and the
// snapshots in the store whose metadata name it. A record that cannot be
// read names no image, and a missing directory holds no users. Snapshots
// saved with --output outside the home are not seen. (imagestore asks
// its caller rather than read these records: they are sessions' and
// snapshots' to define.)
func ImageUsers(home layout.Home) func(imageID string) ([]string, error) {
	return func(imageID string) ([]string, error) {
		var users []string
		named := func(kind, id, name string) string {
			if name != "" {
				return kind + " " + id + " (" + name + ")"
			}
			return kind + " " + id
		}
		reg := registry{home: home}
		ids, err := reg.ids()
		if err != nil {
			return nil, err
		}
		for _, id := range ids {
			if rec, _, err := reg.load(id); err == nil && rec.ImageID == imageID {
				users = append(users, named("session", id, rec.Spec.Name))
			}
		}
		snaps, err := (&snapshots.Store{Dir: home.Snapshots()}).List()
		if err != nil {
			return nil, err
		}
		for _, s := range snaps {
			if s.ImageID == imageID {
				users = append(users, named("snapshot", s.ID, s.Name))
			}
		}
		slices.Sort(users)
		return users, nil
	}
}
