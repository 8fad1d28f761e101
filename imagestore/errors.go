package imagestore

import "errors"

// Error classes, checked with errors.Is.
var (
	// ErrNotFound: no image, ref or blob by that name.
	ErrNotFound = errors.New("not found")
	// ErrInvalid: a malformed reference, config, manifest or import.
	ErrInvalid = errors.New("invalid")
	// ErrInUse: a session or snapshot still uses the image.
	ErrInUse = errors.New("in use")
)

// hintError carries a complete message for the user while still matching
// an error class.
type hintError struct {
	msg   string
	class error
}

func (e *hintError) Error() string { return e.msg }
func (e *hintError) Unwrap() error { return e.class }
