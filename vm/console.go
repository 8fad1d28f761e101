package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gondolin/gondolin/internal/layout"
)

// ErrGuestCrashed means the guest's serial console shows a fatal error
// (a Go runtime fatal in the agent, a kernel panic): waiting for the guest
// any longer is pointless, even if QEMU has not exited (a runtime that
// deadlocks while printing its traceback never does).
var ErrGuestCrashed = errors.New("the guest crashed")

// crashMarks start the console lines that mean the guest is gone. The
// console is the guest's to write, so a match can only end the wait for
// that one guest.
var crashMarks = [][]byte{
	[]byte("fatal error: "),                    // Go runtime throw
	[]byte("panic: "),                          // Go panic
	[]byte("SIGSEGV: "),                        // Go runtime fault
	[]byte("SIGBUS: "),                         //
	[]byte("SIGILL: "),                         //
	[]byte("unexpected fault address"),         //
	[]byte("Kernel panic - not syncing"),       // printed at loglevel >= 1
	[]byte("unexpected signal during runtime"), //
}

// Console watching bounds: how often the log is looked at, how much of
// it one look reads (a guest flooding its console is skipped through, not
// buffered), and the longest line kept.
const (
	consolePoll    = 20 * time.Millisecond
	consoleMaxRead = 256 << 10
	consoleMaxLine = 512
)

// consoleWatcher scans the console log from an offset for a crash mark.
type consoleWatcher struct {
	path   string
	offset int64
	line   []byte
	buf    []byte
}

// check reads what the console gained since the last call and returns
// the first crash line in it, if any.
func (w *consoleWatcher) check() (string, bool) {
	f, err := os.Open(w.path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", false
	}
	if st.Size() < w.offset { // cut short by capConsole: start over
		w.offset = 0
		w.line = w.line[:0]
	}
	if st.Size() == w.offset {
		return "", false
	}
	if st.Size()-w.offset > consoleMaxRead {
		w.offset = st.Size() - consoleMaxRead
		w.line = w.line[:0]
	}
	if w.buf == nil {
		w.buf = make([]byte, consoleMaxRead)
	}
	n, err := f.ReadAt(w.buf[:st.Size()-w.offset], w.offset)
	if err != nil && err != io.EOF {
		return "", false
	}
	w.offset += int64(n)
	for _, b := range w.buf[:n] {
		if b != '\n' {
			if len(w.line) < consoleMaxLine {
				w.line = append(w.line, b)
			}
			continue
		}
		if reason, ok := crashLine(w.line); ok {
			return reason, true
		}
		w.line = w.line[:0]
	}
	return crashLine(w.line) // a crash line still being written
}

// crashLine reports whether line starts (after any prefix the kernel or
// a logger put before it) with a crash mark, and returns it printable.
func crashLine(line []byte) (string, bool) {
	for _, mark := range crashMarks {
		if i := bytes.Index(line, mark); i >= 0 && i < 64 {
			return printable(line[i:]), true
		}
	}
	return "", false
}

// printable keeps a guest-written line safe to print on the user's
// terminal: printable characters only (no C0 or C1 controls, no escape
// sequences' introducers, no bidirectional overrides), invalid UTF-8
// replaced, bounded length.
func printable(b []byte) string {
	var out strings.Builder
	for len(b) > 0 && out.Len() < consoleMaxLine {
		r, size := utf8.DecodeRune(b)
		b = b[size:]
		switch {
		case r == '\t':
			out.WriteByte(' ')
		case r == utf8.RuneError && size == 1:
			out.WriteByte('?')
		case unicode.IsPrint(r):
			out.WriteRune(r)
		}
	}
	return strings.TrimSpace(out.String())
}

// The console log is the guest's to fill: a guest that writes to its
// serial port forever must not fill the host's disk. Once the log passes
// consoleCap it is cut short: its last consoleKeep bytes go to
// ConsoleLogOld, and QEMU (which appends) goes on writing from the start.
const (
	consoleCap   = 1 << 20
	consoleKeep  = 256 << 10
	consoleCheck = time.Second
)

// capConsole keeps the machine's console log under consoleCap for as
// long as QEMU runs.
func (m *Machine) capConsole() {
	t := time.NewTicker(consoleCheck)
	defer t.Stop()
	for {
		select {
		case <-m.exited:
			return
		case <-t.C:
			rotateConsole(m.cfg.Dir, consoleCap, consoleKeep)
		}
	}
}

// rotateConsole cuts dir's console log short once it is larger than
// limit, keeping its last keep bytes in ConsoleLogOld. Bytes QEMU writes
// between the copy and the cut are lost: it is a log.
func rotateConsole(dir string, limit, keep int64) {
	path := filepath.Join(dir, layout.ConsoleLog)
	st, err := os.Stat(path)
	if err != nil || st.Size() <= limit {
		return
	}
	tail := consoleTail(path, keep)
	tmp := filepath.Join(dir, layout.ConsoleLogOld+".tmp")
	if os.WriteFile(tmp, tail, 0o600) != nil || os.Rename(tmp, filepath.Join(dir, layout.ConsoleLogOld)) != nil {
		os.Remove(tmp)
	}
	os.Truncate(path, 0)
}

// ConsoleTail returns at most the last n bytes the guest printed on its
// console in run directory dir, across a rotation.
func ConsoleTail(dir string, n int64) []byte {
	cur := consoleTail(filepath.Join(dir, layout.ConsoleLog), n)
	if int64(len(cur)) >= n {
		return cur
	}
	old := consoleTail(filepath.Join(dir, layout.ConsoleLogOld), n-int64(len(cur)))
	return append(old, cur...)
}

// consoleTail reads at most the last n bytes of a console log.
func consoleTail(path string, n int64) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil
	}
	off := max(st.Size()-n, 0)
	b := make([]byte, st.Size()-off)
	k, _ := f.ReadAt(b, off)
	return b[:k]
}

// guard returns a context that ends when ctx does, when QEMU exits, or
// when the guest's console shows a crash; context.Cause says which.
// Callers that wait for the guest use it so that a dead guest ends the
// wait at once instead of at a deadline.
func (m *Machine) guard(ctx context.Context) (context.Context, context.CancelFunc) {
	gctx, cancel := context.WithCancelCause(ctx)
	w := &consoleWatcher{path: m.cfg.path(layout.ConsoleLog), offset: m.consoleStart()}
	go func() {
		t := time.NewTicker(consolePoll)
		defer t.Stop()
		for {
			select {
			case <-gctx.Done():
				return
			case <-m.exited:
				cancel(m.exitErr)
				return
			case <-t.C:
				if reason, ok := w.check(); ok {
					cancel(fmt.Errorf("%w: %s", ErrGuestCrashed, reason))
					return
				}
			}
		}
	}()
	return gctx, func() { cancel(context.Canceled) }
}

// consoleStart is where a new wait starts to read the console (see
// Machine.consoleFrom).
func (m *Machine) consoleStart() int64 {
	m.consoleMu.Lock()
	defer m.consoleMu.Unlock()
	if !m.consoleUsed {
		m.consoleUsed = true
		return m.consoleFrom
	}
	if st, err := os.Stat(m.cfg.path(layout.ConsoleLog)); err == nil {
		return st.Size()
	}
	return m.consoleFrom
}

// guestError explains why a wait for the guest ended: the guest crashed
// or QEMU exited (with the end of the console), or err itself.
func (m *Machine) guestError(gctx context.Context, err error) error {
	cause := context.Cause(gctx)
	switch {
	case errors.Is(cause, ErrGuestCrashed):
		return fmt.Errorf("%w (console: %s)", cause, m.cfg.path(layout.ConsoleLog))
	case errors.Is(cause, ErrExited):
		return fmt.Errorf("%w%s", cause, m.consoleHint())
	}
	return err
}
