package ui

import (
	"fmt"
	"strings"
	"time"

	"charm.land/bubbles/v2/textinput"
	tea "charm.land/bubbletea/v2"
	"github.com/gondolin/gondolin/sessions"
	"github.com/gondolin/gondolin/snapshots"
)

// snapshotDialog takes a disk or live snapshot of a session and shows it
// under way.
type snapshotDialog struct {
	sb      SnapshotBackend
	session sessions.Session
	host    *host
	live    bool
	name    textinput.Model

	running bool
	started time.Time
	elapsed time.Duration
	result  *snapshots.Snapshot
	err     error
}

type (
	snapTickMsg struct{ d *snapshotDialog }
	snapDoneMsg struct {
		d    *snapshotDialog
		snap *snapshots.Snapshot
		err  error
	}
)

func (m *Model) openSnapshot() tea.Cmd {
	sb, s, cmd, ok := liveFeature[SnapshotBackend](m, "snapshots", "snapshot")
	if !ok {
		return cmd
	}
	in := textinput.New()
	in.Prompt = ""
	in.Placeholder = "optional"
	in.CharLimit = 63
	st := in.Styles()
	st.Cursor.Blink = false
	in.SetStyles(st)
	d := &snapshotDialog{sb: sb, session: s.Session, host: s.host, name: in}
	m.dialog = d
	return d.name.Focus()
}

// tick animates the dialog while the supervisor works: its API
// answers once, at the end, so the dialog shows time spent, not a
// fraction done.
func (d *snapshotDialog) tick() tea.Cmd {
	return tea.Tick(100*time.Millisecond, func(time.Time) tea.Msg { return snapTickMsg{d: d} })
}

func (d *snapshotDialog) start(m *Model) tea.Cmd {
	d.running, d.started = true, time.Now()
	req := sessions.SnapshotRequest{Name: strings.TrimSpace(d.name.Value()), Live: d.live}
	id := d.session.ID
	run := func() tea.Msg {
		ctx, cancel := contextWithTimeout(m.ctx, createTimeout)
		defer cancel()
		snap, err := d.sb.Snapshot(ctx, id, req)
		return snapDoneMsg{d: d, snap: snap, err: err}
	}
	return tea.Batch(run, d.tick())
}

// onSnapDone reports a finished snapshot whether or not its dialog is
// still open (esc hides it while the work goes on).
func (m *Model) onSnapDone(msg snapDoneMsg) tea.Cmd {
	d := msg.d
	d.running = false
	if msg.err != nil {
		d.err = msg.err
		return m.setError(fmt.Errorf("snapshot %s: %w", displayName(d.session), msg.err))
	}
	d.result = msg.snap
	return m.setStatus("snapshot " + snapName(msg.snap) + " saved; r resumes it")
}

func snapName(s *snapshots.Snapshot) string {
	if s == nil {
		return ""
	}
	return orDefault(s.Name, s.ID)
}

func (d *snapshotDialog) update(m *Model, msg tea.Msg) (bool, tea.Cmd) {
	switch msg := msg.(type) {
	case snapTickMsg:
		if msg.d == d && d.running {
			d.elapsed = time.Since(d.started)
			return false, d.tick()
		}
		return false, nil
	case tea.KeyPressMsg:
		key := msg.String()
		if key == "ctrl+c" {
			return true, m.quit()
		}
		if d.result != nil || d.err != nil {
			return true, nil // any key closes the finished dialog
		}
		if d.running {
			if key == "esc" {
				return true, m.setStatus("the snapshot goes on in the background")
			}
			return false, nil
		}
		switch key {
		case "esc":
			return true, nil
		case "tab", "up", "down":
			d.live = !d.live
			return false, nil
		case "enter":
			return false, d.start(m)
		}
		var cmd tea.Cmd
		d.name, cmd = d.name.Update(msg)
		return false, cmd
	}
	return false, nil
}

func (d *snapshotDialog) view(m *Model, w, h int) string {
	w = min(w, 70)
	inner := w - 4
	var body []string
	radio := func(on bool, text string) string {
		if on {
			return m.st.focused.Render("(•) " + text)
		}
		return "( ) " + text
	}
	body = append(body,
		radio(!d.live, "disk: the root disk; the VM pauses for a moment"),
		radio(d.live, "live: RAM and devices too; resumes where it was"),
		"")
	d.name.SetWidth(max(inner-12, 8))
	body = append(body, m.st.label.Render("Name      ")+d.name.View(), "")
	switch {
	case d.err != nil:
		body = append(body, wrap(m.st.errText.Render("failed: "+oneLine(d.err.Error())), inner)...)
		body = append(body, "", "any key closes")
	case d.result != nil:
		body = append(body, m.st.okText.Render(fmt.Sprintf("saved %s (%s, %s)", snapName(d.result), d.result.Kind, humanBytes(d.result.Size()))), "", "any key closes")
	case d.running:
		what := "copying the disk"
		if d.live {
			what = "saving RAM and devices, then the disk"
		}
		body = append(body, busyBar(d.elapsed, inner), fmt.Sprintf("%s… %.1fs", what, d.elapsed.Seconds()), "",
			m.st.key.Render("esc")+" hide (the snapshot goes on)")
	default:
		body = append(body, m.st.key.Render("tab")+" disk/live   "+m.st.key.Render("enter")+" take it   "+m.st.key.Render("esc")+" cancel")
	}
	return m.box("Snapshot · "+displayName(d.session), body, w, h)
}

// busyBar is a bar whose block sweeps back and forth with time: work
// under way whose end is unknown. Plain characters, so it reads the same
// without colour.
func busyBar(elapsed time.Duration, w int) string {
	barW := max(w-2, 10)
	const block = 6
	span := barW - block
	step := int(elapsed/(100*time.Millisecond)) % (2 * span)
	pos := step
	if step > span {
		pos = 2*span - step
	}
	return "[" + strings.Repeat("-", pos) + strings.Repeat("#", block) + strings.Repeat("-", span-pos) + "]"
}

// resumeDialog lists snapshots and resumes one into a new session.
type resumeDialog struct {
	sb     SnapshotBackend
	host   *host // where the snapshots are, and the session resumes
	list   []sessions.SnapshotInfo
	loaded bool
	err    error
	cursor int
}

type snapListMsg struct {
	list []sessions.SnapshotInfo
	err  error
}

// openResume lists the snapshots of the selected row's host (reachable),
// else of the form's default host: a snapshot resumes where it is.
func (m *Model) openResume() tea.Cmd {
	h := m.formHost()
	if s, ok := m.current(); ok && s.down == "" {
		h = s.host
	}
	sb, cmd, ok := optionalFeature[SnapshotBackend](m, h, "snapshots")
	if !ok {
		return cmd
	}
	m.dialog = &resumeDialog{sb: sb, host: h}
	return func() tea.Msg {
		ctx, cancel := m.reqCtx()
		defer cancel()
		list, err := sb.Snapshots(ctx)
		return snapListMsg{list: list, err: err}
	}
}

func (d *resumeDialog) update(m *Model, msg tea.Msg) (bool, tea.Cmd) {
	switch msg := msg.(type) {
	case snapListMsg:
		d.list, d.err, d.loaded = msg.list, msg.err, true
		return false, nil
	case tea.KeyPressMsg:
		switch msg.String() {
		case "ctrl+c":
			return true, m.quit()
		case "esc", "q", "r":
			return true, nil
		case "up", "k":
			d.cursor = max(d.cursor-1, 0)
		case "down", "j":
			d.cursor = min(d.cursor+1, max(len(d.list)-1, 0))
		case "enter":
			if len(d.list) == 0 {
				return false, nil
			}
			snap := d.list[d.cursor]
			req := sessions.CreateRequest{Resume: snap.ID, Rows: uint16(max(m.height, 24)), Cols: uint16(max(m.width, 80))}
			return true, tea.Batch(m.setStatus("resuming "+snapName(snap.Snapshot)+"…"), m.create(d.host, req, nil))
		}
	}
	return false, nil
}

func (d *resumeDialog) view(m *Model, w, h int) string {
	var body []string
	switch {
	case !d.loaded:
		body = append(body, "loading…")
	case d.err != nil:
		body = append(body, m.st.errText.Render(oneLine(d.err.Error())))
	case len(d.list) == 0:
		body = append(body, "no snapshots yet: s takes one")
	default:
		body = append(body, m.st.header.Render("  "+fit("NAME", 16, false)+" "+fit("FROM", 12, false)+" "+fit("KIND", 4, false)+" "+fit("AGE", 5, true)+" "+fit("SIZE", 6, true)))
		rows := max(h-8, 1)
		start := max(0, d.cursor-rows+1)
		for i := start; i < len(d.list) && i < start+rows; i++ {
			s := d.list[i]
			line := marker(i == d.cursor) + fit(snapName(s.Snapshot), 16, false) + " " + fit(dash(s.Source), 12, false) + " " +
				fit(string(s.Kind), 4, false) + " " + fit(humanDuration(m.opts.Now().Sub(s.Created)), 5, true) + " " + fit(humanBytes(s.Size()), 6, true)
			if i == d.cursor {
				line = m.st.selected.Render(line)
			}
			body = append(body, line)
		}
	}
	body = append(body, "", m.st.key.Render("enter")+" resume into a new session   "+m.st.key.Render("esc")+" close")
	title := "Resume from a snapshot"
	if d.host.multi {
		title += " on " + d.host.Name
	}
	return m.box(title, body, min(w, 70), h)
}
