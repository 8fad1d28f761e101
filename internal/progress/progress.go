// Package progress shows how far a long operation (an image build, a pull)
// has got, on a terminal only: piped or redirected output stays clean.
package progress

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/term"
)

// Reporter receives progress from a long operation. Implementations are
// safe for concurrent use.
type Reporter interface {
	// Phase starts a named phase and ends the previous one.
	Phase(name string)
	// Step reports that done of total units of the current phase are done.
	Step(done, total int)
	// Warnf reports a problem that does not stop the operation.
	Warnf(format string, args ...any)
	// Done ends the last phase.
	Done()
}

// Discard is a Reporter that shows nothing.
var Discard Reporter = discard{}

type discard struct{}

func (discard) Phase(string)         {}
func (discard) Step(int, int)        {}
func (discard) Warnf(string, ...any) {}
func (discard) Done()                {}

// New returns a Reporter that draws progress on f when f is a terminal.
// When f is not a terminal only warnings are written, so that logs and
// pipes get no carriage-return noise.
func New(f *os.File) Reporter {
	return newLine(f, term.IsTerminal(int(f.Fd())))
}

// minRedraw limits how often Step redraws the line: a build reports
// thousands of steps and a terminal does not need to see each one.
const minRedraw = 100 * time.Millisecond

type line struct {
	mu     sync.Mutex
	w      io.Writer
	tty    bool
	phase  string
	start  time.Time
	drawn  time.Time
	active bool // a phase line is on screen and not yet ended
	now    func() time.Time
}

func newLine(w io.Writer, tty bool) *line {
	return &line{w: w, tty: tty, now: time.Now}
}

func (l *line) Phase(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.end()
	l.phase, l.start, l.active = name, l.now(), true
	if l.tty {
		fmt.Fprintf(l.w, "\r\033[K%s", name)
	}
}

func (l *line) Step(done, total int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.tty || !l.active {
		return
	}
	now := l.now()
	if done < total && now.Sub(l.drawn) < minRedraw {
		return
	}
	l.drawn = now
	if total > 0 {
		fmt.Fprintf(l.w, "\r\033[K%s %d/%d", l.phase, done, total)
	} else {
		fmt.Fprintf(l.w, "\r\033[K%s %d", l.phase, done)
	}
}

func (l *line) Warnf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.tty && l.active {
		// Keep the warning on its own line; the phase line is redrawn
		// by the next Step.
		fmt.Fprint(l.w, "\r\033[K")
	}
	fmt.Fprintf(l.w, "warning: "+format+"\n", args...)
	if l.tty && l.active {
		fmt.Fprint(l.w, l.phase)
	}
}

func (l *line) Done() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.end()
}

// end finishes the current phase line with how long the phase took.
func (l *line) end() {
	if !l.active {
		return
	}
	l.active = false
	if l.tty {
		fmt.Fprintf(l.w, "\r\033[K%s (%s)\n", l.phase, l.now().Sub(l.start).Round(10*time.Millisecond))
	}
}

// Status is a one-line message that stays on a terminal only while an
// operation runs (a VM booting before a command's own output starts).
type Status struct {
	mu    sync.Mutex
	w     io.Writer
	tty   bool
	shown bool
}

// NewStatus returns a Status that draws on f when f is a terminal.
func NewStatus(f *os.File) *Status {
	return &Status{w: f, tty: term.IsTerminal(int(f.Fd()))}
}

// Show replaces the status line with msg.
func (s *Status) Show(msg string) {
	if s == nil || !s.tty {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(s.w, "\r\033[K%s", msg)
	s.shown = true
}

// Clear erases the status line.
func (s *Status) Clear() {
	if s == nil || !s.tty {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shown {
		fmt.Fprint(s.w, "\r\033[K")
		s.shown = false
	}
}
