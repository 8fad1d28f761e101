// Package contain keeps a panic in code that handles one guest's bytes
// (frames, the terminal emulator, the file protocol, the network glue)
// from taking down the supervisor, which serves every guest: the panic
// becomes an error for that one guest's owner to act on.
package contain

import (
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
)

// ErrPanic marks an error made from a recovered panic.
var ErrPanic = errors.New("internal error")

// PanicError is a recovered panic: its value and the stack it happened
// on (for the log; Error is one line).
type PanicError struct {
	Where string
	Value any
	Stack []byte
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("internal error in %s: %v", e.Where, firstLine(fmt.Sprint(e.Value)))
}

func (e *PanicError) Unwrap() error { return ErrPanic }

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// Recover, deferred directly (defer contain.Recover("what", f)), turns a
// panic in the deferring function into a call to onPanic; without a
// panic it does nothing.
func Recover(where string, onPanic func(*PanicError)) {
	if v := recover(); v != nil {
		onPanic(&PanicError{Where: where, Value: v, Stack: debug.Stack()})
	}
}

// Go runs f in a new goroutine, turning a panic in it into a call to
// onPanic.
func Go(where string, onPanic func(*PanicError), f func()) {
	go func() {
		defer Recover(where, onPanic)
		f()
	}()
}
