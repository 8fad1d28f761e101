// Package termio connects the user's terminal to a guest terminal: raw
// mode, window sizes and their changes.
package termio

import (
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"
)

// IsTerminal reports whether f is a terminal.
func IsTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// Size returns f's window size, or 24x80 when f is not a terminal.
func Size(f *os.File) (rows, cols uint16) {
	w, h, err := term.GetSize(int(f.Fd()))
	if err != nil || w <= 0 || h <= 0 {
		return 24, 80
	}
	return uint16(h), uint16(w)
}

// MakeRaw puts f into raw mode and returns the function that restores it.
func MakeRaw(f *os.File) (restore func(), err error) {
	old, err := term.MakeRaw(int(f.Fd()))
	if err != nil {
		return nil, err
	}
	return func() { term.Restore(int(f.Fd()), old) }, nil
}

// WatchSize sends f's new size whenever the window changes, until stop
// is called.
func WatchSize(f *os.File) (sizes <-chan [2]uint16, stop func()) {
	sig := make(chan os.Signal, 1)
	out := make(chan [2]uint16, 1)
	done := make(chan struct{})
	signal.Notify(sig, syscall.SIGWINCH)
	go func() {
		for {
			select {
			case <-sig:
				rows, cols := Size(f)
				select {
				case out <- [2]uint16{rows, cols}:
				default: // a newer size will follow; never block
				}
			case <-done:
				return
			}
		}
	}()
	return out, func() { signal.Stop(sig); close(done) }
}
