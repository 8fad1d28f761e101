package ui

import (
	"context"
	"strings"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/colorprofile"
	"github.com/charmbracelet/x/ansi"
	"github.com/charmbracelet/x/exp/golden"
	"github.com/charmbracelet/x/exp/teatest/v2"
	"github.com/gondolin/gondolin/internal/testutil"
)

// harness runs the real model in a Bubble Tea program (teatest) against
// a fake backend, drives it with keys and reads its screen.
type harness struct {
	t  *testing.T
	tm *teatest.TestModel
}

func start(t *testing.T, b Backend, w, h int, tune ...func(*Options)) *harness {
	t.Helper()
	hs := startModel(t, w, h, func(ctx context.Context, opts Options) *Model { return New(ctx, b, opts) }, tune...)
	hs.settle()
	return hs
}

// startHosts is start for a dashboard over several hosts. It does not
// wait for them to settle: a test may hold one up on purpose.
func startHosts(t *testing.T, hosts []Host, w, h int, tune ...func(*Options)) *harness {
	t.Helper()
	return startModel(t, w, h, func(ctx context.Context, opts Options) *Model { return NewHosts(ctx, hosts, opts) }, tune...)
}

func startModel(t *testing.T, w, h int, newModel func(context.Context, Options) *Model, tune ...func(*Options)) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	opts := Options{Now: func() time.Time { return epoch }, DefaultImage: "default:latest"}
	for _, f := range tune {
		f(&opts)
	}
	m := newModel(ctx, opts)
	tm := teatest.NewTestModel(t, m, teatest.WithInitialTermSize(w, h),
		// Pinned so that what the program writes does not depend on the
		// terminal running the tests.
		teatest.WithProgramOptions(tea.WithColorProfile(colorprofile.ANSI256)))
	hs := &harness{t: t, tm: tm}
	t.Cleanup(func() {
		tm.Quit()
		tm.WaitFinished(t, teatest.WithFinalTimeout(5*time.Second))
		cancel()
	})
	return hs
}

// inspect runs f on the model in the program's goroutine.
func (h *harness) inspect(f func(*Model)) {
	h.t.Helper()
	done := make(chan struct{})
	h.tm.Send(inspectMsg(func(m *Model) { f(m); close(done) }))
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		h.t.Fatal("the program did not answer")
	}
}

// waitUntil polls cond on the model until it holds.
func (h *harness) waitUntil(what string, cond func(*Model) bool) {
	h.t.Helper()
	if !testutil.Poll(5*time.Second, func() bool {
		ok := false
		h.inspect(func(m *Model) { ok = cond(m) })
		return ok
	}) {
		h.t.Fatalf("never: %s; screen:\n%s", what, h.screen())
	}
}

// settle waits until no list, screen or status request is in flight,
// and the status has been read when the backend has one.
func (h *harness) settle() {
	h.t.Helper()
	h.waitUntil("settled", func(m *Model) bool {
		id, pty := m.previewTarget()
		_, status := m.hosts[0].Backend.(StatusBackend)
		return m.loaded && !m.listing && len(m.fetching) == 0 && (pty == 0 || (m.preview.session == id && m.preview.pty == pty)) &&
			!m.statusReading && (m.poolKnown || !status)
	})
}

var specialKeys = map[string]tea.KeyPressMsg{
	"enter":     {Code: tea.KeyEnter},
	"esc":       {Code: tea.KeyEscape},
	"tab":       {Code: tea.KeyTab},
	"shift+tab": {Code: tea.KeyTab, Mod: tea.ModShift},
	"up":        {Code: tea.KeyUp},
	"down":      {Code: tea.KeyDown},
	"backspace": {Code: tea.KeyBackspace},
	"ctrl+u":    {Code: 'u', Mod: tea.ModCtrl},
	"ctrl+c":    {Code: 'c', Mod: tea.ModCtrl},
}

// keys sends each key: a special key's name, or text typed rune by rune.
func (h *harness) keys(keys ...string) {
	h.t.Helper()
	for _, k := range keys {
		if msg, ok := specialKeys[k]; ok {
			h.tm.Send(msg)
		} else {
			h.tm.Type(k)
		}
	}
	// Every key has been handled once a later message is.
	h.inspect(func(*Model) {})
}

// screen is the current frame as plain text, trailing spaces trimmed.
func (h *harness) screen() string {
	var s string
	h.inspect(func(m *Model) { s = m.render() })
	return plainScreen(s)
}

func plainScreen(s string) string {
	lines := strings.Split(ansi.Strip(s), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}
	return strings.Join(lines, "\n") + "\n"
}

// golden compares the screen with testdata/<test name>.golden.
func (h *harness) golden() {
	h.t.Helper()
	golden.RequireEqual(h.t, []byte(h.screen()))
}
