package imagestore

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/gondolin/gondolin/internal/layout"
)

// snapshotMetaFile is the file in each snapshot directory that names the
// snapshot's image (snapshots.MetaFile; imagestore cannot import the
// snapshots package, which imports it).
const snapshotMetaFile = "meta.json"

// UsersIn returns the RemoveOptions.InUse function for the gondolin home
// home: the users of an image are the sessions whose spec.json and the
// snapshots whose meta.json name it by "image_id". The files are read as
// plain JSON so that imagestore need not import the sessions and
// snapshots packages (they import imagestore); a file that cannot be read
// or parsed names no image, and a missing directory holds no users.
// Snapshots saved with --output outside the home are not seen.
func UsersIn(home layout.Home) func(imageID string) ([]string, error) {
	return func(imageID string) ([]string, error) {
		var users []string
		scan := func(dir, file, kind string) error {
			entries, err := os.ReadDir(dir)
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("list %s: %w", dir, err)
			}
			for _, e := range entries {
				if !e.IsDir() {
					continue
				}
				data, err := os.ReadFile(filepath.Join(dir, e.Name(), file))
				if err != nil {
					continue
				}
				var rec struct {
					ImageID string `json:"image_id"`
					Name    string `json:"name"`
					Spec    struct {
						Name string `json:"name"`
					} `json:"spec"`
				}
				if json.Unmarshal(data, &rec) != nil || rec.ImageID != imageID {
					continue
				}
				name := kind + " " + e.Name()
				if n := rec.Name + rec.Spec.Name; n != "" {
					name += " (" + n + ")"
				}
				users = append(users, name)
			}
			return nil
		}
		if err := scan(home.Sessions(), layout.SpecFile, "session"); err != nil {
			return nil, err
		}
		if err := scan(home.Snapshots(), snapshotMetaFile, "snapshot"); err != nil {
			return nil, err
		}
		slices.Sort(users)
		return users, nil
	}
}
