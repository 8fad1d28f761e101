// Package errdefs holds gondolin's error classes: the four kinds of
// failure a caller acts on, whatever package they come from. An error
// belongs to a class when errors.Is finds the class in its chain, so
// packages wrap with %w and keep the cause. The supervisor's API turns a
// class into an HTTP status and the client turns it back (HTTPStatus,
// FromHTTPStatus), so errors.Is works on both sides of the socket; the
// CLI picks its exit code from the class.
package errdefs

import (
	"errors"
	"fmt"
	"net/http"
)

// The classes. Their texts are the prefixes users see on wrapped errors
// ("invalid: ...", "not found: ...").
var (
	// ErrInvalid: bad input from the user or the guest (a flag, a
	// request, a damaged file); asking again the same way fails again.
	ErrInvalid = errors.New("invalid")
	// ErrNotFound: nothing by that name.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the request clashes with what exists (a name taken,
	// an image in use, a session in the wrong state).
	ErrConflict = errors.New("conflict")
	// ErrUnavailable: the thing exists but cannot serve now (a VM
	// booting or gone, a supervisor closing).
	ErrUnavailable = errors.New("unavailable")
)

// classed is an error of a class whose text is its message alone.
type classed struct {
	class error
	msg   string
	cause error
}

func (e *classed) Error() string { return e.msg }

func (e *classed) Unwrap() []error {
	if e.cause == nil {
		return []error{e.class}
	}
	return []error{e.class, e.cause}
}

// Errorf returns an error of class whose message is the formatted text
// alone (no class prefix): for messages written whole for the user. A %w
// in format keeps that cause in the chain.
func Errorf(class error, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &classed{class: class, msg: err.Error(), cause: errors.Unwrap(err)}
}

// Kind returns a sentinel of class with its own text, for a package
// whose errors say more than the class ("snapshot not found"): errors.Is
// finds both the sentinel and the class.
func Kind(class error, text string) error {
	return &classed{class: class, msg: text}
}

// FieldError is bad input in one named field, a flag such as --cpus, so
// that a form can point at the field and a CLI at the flag. It is of
// class ErrInvalid; its message is Err's.
type FieldError struct {
	Field string // the flag's name, with its dashes: "--cpus"
	Err   error
}

func (e *FieldError) Error() string   { return e.Err.Error() }
func (e *FieldError) Unwrap() []error { return []error{ErrInvalid, e.Err} }

// Field wraps err (if not nil) as a FieldError of field, unless it
// already names a field: the innermost field is the precise one.
func Field(field string, err error) error {
	if err == nil {
		return nil
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		return err
	}
	return &FieldError{Field: field, Err: err}
}

// Fieldf is Field of a new message.
func Fieldf(field, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}

// FieldOf names the field an error is about, or "".
func FieldOf(err error) string {
	var fe *FieldError
	if errors.As(err, &fe) {
		return fe.Field
	}
	return ""
}

// HTTPStatus is the status an API answers an error with.
func HTTPStatus(err error) int {
	switch {
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// FromHTTPStatus is the class of an API's error status, or nil.
func FromHTTPStatus(status int) error {
	switch status {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusMethodNotAllowed, http.StatusUnsupportedMediaType:
		return ErrInvalid
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusConflict:
		return ErrConflict
	case http.StatusServiceUnavailable:
		return ErrUnavailable
	}
	return nil
}
