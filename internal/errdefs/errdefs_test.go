package errdefs

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"testing"
)

func TestClasses(t *testing.T) {
	cause := fs.ErrPermission
	tests := []struct {
		name      string
		err       error
		class     error
		msg       string
		status    int
		field     string
		keepCause bool
	}{
		{"wrapped class", fmt.Errorf("%w: bad ref", ErrInvalid), ErrInvalid, "invalid: bad ref", http.StatusBadRequest, "", false},
		{"errorf reads alone", Errorf(ErrNotFound, "no session %s", "x"), ErrNotFound, "no session x", http.StatusNotFound, "", false},
		{"errorf keeps %w", Errorf(ErrUnavailable, "open: %w", cause), ErrUnavailable, "open: permission denied", http.StatusServiceUnavailable, "", true},
		{"kind", fmt.Errorf("%w: a", Kind(ErrConflict, "already exists")), ErrConflict, "already exists: a", http.StatusConflict, "", false},
		{"field", Fieldf("--cpus", "--cpus %d: use 1 to 64", 100), ErrInvalid, "--cpus 100: use 1 to 64", http.StatusBadRequest, "--cpus", false},
		{"field keeps the inner one", Field("--allow-host", Field("--host-secret", errors.New("x"))), ErrInvalid, "x", http.StatusBadRequest, "--host-secret", false},
		{"field wrapped further", fmt.Errorf("create: %w", Fieldf("--name", "bad")), ErrInvalid, "create: bad", http.StatusBadRequest, "--name", false},
		{"no class", errors.New("boom"), nil, "boom", http.StatusInternalServerError, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.err.Error() != tt.msg {
				t.Errorf("message %q, want %q", tt.err.Error(), tt.msg)
			}
			for _, c := range []error{ErrInvalid, ErrNotFound, ErrConflict, ErrUnavailable} {
				if got := errors.Is(tt.err, c); got != (c == tt.class) {
					t.Errorf("errors.Is(%v) = %v", c, got)
				}
			}
			if got := HTTPStatus(tt.err); got != tt.status {
				t.Errorf("HTTPStatus = %d, want %d", got, tt.status)
			}
			if got := FromHTTPStatus(tt.status); got != tt.class {
				t.Errorf("FromHTTPStatus(%d) = %v, want %v", tt.status, got, tt.class)
			}
			if got := FieldOf(tt.err); got != tt.field {
				t.Errorf("FieldOf = %q, want %q", got, tt.field)
			}
			if tt.keepCause && !errors.Is(tt.err, cause) {
				t.Errorf("the cause is lost")
			}
		})
	}
	if Field("--x", nil) != nil {
		t.Error("Field of nil is not nil")
	}
}
