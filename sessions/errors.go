package sessions

import "github.com/gondolin/gondolin/internal/errdefs"

// errorf is an error of an errdefs class that reads as its message alone.
func errorf(class error, format string, args ...any) error {
	return errdefs.Errorf(class, format, args...)
}

// invalidf is bad input from the user (exit code 2).
func invalidf(format string, args ...any) error {
	return errdefs.Errorf(errdefs.ErrInvalid, format, args...)
}

// fieldf is bad input in one flag: the form points at its field.
func fieldf(flag, format string, args ...any) error {
	return errdefs.Fieldf(flag, format, args...)
}
