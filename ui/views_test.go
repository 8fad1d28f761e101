package ui

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/charmbracelet/colorprofile"
	"github.com/charmbracelet/x/exp/golden"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/sessions"
	"github.com/gondolin/gondolin/snapshots"
)

// TestViews draws every view and dialog against the fake supervisor and
// compares the screen with its golden file (go test ./ui -update
// rewrites them).
func TestViews(t *testing.T) {
	tests := []struct {
		name    string
		backend func() Backend
		w, h    int
		keys    []string
		// wait, if set, is what the screen must reach before the golden.
		wait func(*Model) bool
	}{
		{name: "main_80x24", w: 80, h: 24},
		{name: "main_120x40", w: 120, h: 40},
		{name: "main_100x30", w: 100, h: 30, keys: []string{"1"}}, // the README's capture
		{name: "main_60x20_narrow", w: 60, h: 20},
		{name: "empty", backend: func() Backend { return newFake() }, w: 80, h: 24},
		{name: "second_pty", w: 80, h: 24, keys: []string{"tab"}},
		{name: "stale_selected", w: 80, h: 24, keys: []string{"j", "j"}},
		{name: "help", w: 80, h: 24, keys: []string{"?"}},
		{name: "filter_typing", w: 80, h: 24, keys: []string{"/", "build"}},
		{name: "filter_applied", w: 80, h: 24, keys: []string{"/", "default", "enter"}},
		{name: "filter_no_match", w: 80, h: 24, keys: []string{"/", "nothing-like-this", "enter"}},
		{name: "new_session_form", w: 80, h: 24, keys: []string{"n"}},
		{name: "new_session_invalid_memory", w: 80, h: 24, keys: []string{"n", "tab", "web", "tab", "2", "tab", "12", "enter"}},
		{name: "new_session_mount_missing", w: 80, h: 24, keys: []string{"n", "tab", "tab", "tab", "tab", "/nonexistent/src:/work:ro", "enter"}},
		{name: "confirm_stop", w: 80, h: 24, keys: []string{"x"}},
		{name: "confirm_remove", w: 80, h: 24, keys: []string{"j", "j", "d"}},
		{name: "remove_live_refused", w: 80, h: 24, keys: []string{"d"}},
		{name: "policy_editor", w: 100, h: 30, keys: []string{"p"}, wait: policyReady},
		{name: "policy_add_secret_value_masked", w: 100, h: 30, keys: []string{"p"}, wait: policyReady},
		{name: "policy_remove_secret_confirm", w: 100, h: 30, keys: []string{"p"}, wait: policyReady},
		{name: "policy_not_available", backend: func() Backend { return basicBackend{sampleBackend()} }, w: 80, h: 24, keys: []string{"p"}},
		{name: "snapshot_dialog", w: 80, h: 24, keys: []string{"s", "tab", "before-deploy"}},
		{name: "snapshot_not_available", backend: func() Backend { return basicBackend{sampleBackend()} }, w: 80, h: 24, keys: []string{"s"}},
		{name: "creating_selected", backend: creatingBackend, w: 100, h: 24},
		{name: "creating_80x24", backend: creatingBackend, w: 80, h: 24},
		{name: "resume_list", w: 80, h: 24, keys: []string{"r"}, wait: func(m *Model) bool {
			d, ok := m.dialog.(*resumeDialog)
			return ok && d.loaded
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b Backend = sampleBackend()
			if tt.backend != nil {
				b = tt.backend()
			}
			h := start(t, b, tt.w, tt.h)
			h.keys(tt.keys...)
			// Steps that need the dialog's data before their keys.
			switch tt.name {
			case "policy_add_secret_value_masked":
				h.waitUntil("policy loaded", policyReady)
				h.keys("tab", "a", "DB_PASSWORD@db.internal", "enter", "hunter2")
			case "policy_remove_secret_confirm":
				h.waitUntil("policy loaded", policyReady)
				h.keys("tab", "d")
			}
			if tt.wait != nil {
				h.waitUntil("the view is ready", tt.wait)
			}
			h.settle()
			h.golden()
		})
	}
}

// creatingBackend is the sample with one more session, being made: the
// supervisor builds its template.
func creatingBackend() Backend {
	f := sampleBackend()
	f.sessions = append([]sessions.Session{{ID: "c0ffee000001", Name: "web", State: sessions.Creating,
		Phase: sessions.PhaseTemplate, Created: epoch, Image: "default:latest", PTYs: []sessions.PTY{}}}, f.sessions...)
	return f
}

func policyReady(m *Model) bool {
	d, ok := m.dialog.(*policyEditor)
	return ok && d.loaded && len(d.requests) == 2
}

// TestSnapshotProgress shows the progress bar while a snapshot runs, then
// its result.
func TestSnapshotProgress(t *testing.T) {
	f := sampleBackend()
	f.gate = make(chan struct{})
	h := start(t, f, 80, 24)
	h.keys("s", "tab", "enter")
	h.waitUntil("progress shown", func(m *Model) bool {
		d, ok := m.dialog.(*snapshotDialog)
		return ok && d.running && d.elapsed > 0
	})
	// The supervisor's phase reaches the row behind the dialog too.
	h.waitUntil("the row snapshotting", func(m *Model) bool { s, _ := m.current(); return s.Phase == sessions.PhaseSnapshot })
	// The elapsed time moves; the golden pins the rest.
	var frame string
	h.inspect(func(m *Model) {
		m.dialog.(*snapshotDialog).elapsed = 1500 * time.Millisecond
		frame = m.render()
	})
	golden.RequireEqual(t, []byte(plainScreen(frame)))
	close(f.gate)
	h.waitUntil("snapshot done", func(m *Model) bool {
		d, ok := m.dialog.(*snapshotDialog)
		return ok && d.result != nil
	})
	if !strings.Contains(h.screen(), "saved snap0001") {
		t.Fatalf("no result:\n%s", h.screen())
	}
	if f.count("Snapshot") != 1 || f.snaps[0].Kind != snapshots.Live {
		t.Fatalf("want one live snapshot, got %d calls, %+v", f.count("Snapshot"), f.snaps)
	}
}

// TestColourGolden pins the styled main view: a colour or attribute
// change shows up as a diff of its escape codes (ANSI 256-colour
// profile), and the NO_COLOR rendering keeps every piece of text.
func TestColourGolden(t *testing.T) {
	h := start(t, sampleBackend(), 80, 24)
	var styled string
	h.inspect(func(m *Model) { styled = m.render() })
	for _, p := range []struct {
		name    string
		profile colorprofile.Profile
	}{{"ansi256", colorprofile.ANSI256}, {"nocolor", colorprofile.Ascii}} {
		t.Run(p.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := &colorprofile.Writer{Forward: &buf, Profile: p.profile}
			w.WriteString(styled)
			golden.RequireEqual(t, buf.Bytes())
			if got := plainScreen(buf.String()); got != h.screen() {
				t.Errorf("text differs under %s:\n%s", p.name, got)
			}
		})
	}
}

// TestEventsReconnect: the title says when the event stream is down, and
// the dashboard subscribes again by itself.
func TestEventsReconnect(t *testing.T) {
	f := sampleBackend()
	f.eventsErr = errdefs.ErrUnavailable
	h := start(t, f, 80, 24)
	h.waitUntil("reconnecting shown", func(m *Model) bool { return !m.eventsUp && m.eventsNote != "" })
	if !strings.Contains(h.screen(), "events: reconnecting") {
		t.Fatalf("title does not say so:\n%s", h.screen())
	}
	f.mu.Lock()
	f.eventsErr = nil
	f.mu.Unlock()
	h.waitUntil("events up again", func(m *Model) bool { return m.eventsUp })
	if !strings.Contains(h.screen(), "events: live") {
		t.Fatalf("title:\n%s", h.screen())
	}
}
