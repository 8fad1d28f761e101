package imagestore

import "github.com/gondolin/gondolin/internal/errdefs"

// The store's errors are of the errdefs classes: ErrNotFound (no image,
// ref or blob by that name), ErrInvalid (a malformed reference, config,
// manifest or import) and this one, checked with errors.Is.

// ErrInUse: a session or snapshot still uses the image.
var ErrInUse = errdefs.Kind(errdefs.ErrConflict, "in use")
