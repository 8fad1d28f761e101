package ui

import (
	"fmt"
	"strings"

	"charm.land/bubbles/v2/textinput"
	tea "charm.land/bubbletea/v2"
	"github.com/gondolin/gondolin/sessions"
)

func (m *Model) snapshotBackend() SnapshotBackend {
	sb, _ := m.backend.(SnapshotBackend)
	return sb
}

// snapshotDialog takes a disk or live snapshot of a session and shows its
// progress.
type snapshotDialog struct {
	sb      SnapshotBackend
	session sessions.Session
	live    bool
	name    textinput.Model

	running  bool
	progress SnapshotProgress
	progCh   chan SnapshotProgress
	result   *Snapshot
	err      error
}

type (
	snapProgressMsg struct {
		ch chan SnapshotProgress
		p  SnapshotProgress
	}
	snapDoneMsg struct {
		session string
		snap    Snapshot
		err     error
	}
)

func (m *Model) openSnapshot() tea.Cmd {
	sb := m.snapshotBackend()
	if sb == nil {
		return m.setStatus("snapshots: not available in this version")
	}
	s, cmd, ok := m.needLive("snapshot")
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
	d := &snapshotDialog{sb: sb, session: s, name: in}
	m.dialog = d
	return d.name.Focus()
}

func waitProgress(ch chan SnapshotProgress) tea.Cmd {
	return func() tea.Msg {
		p, ok := <-ch
		if !ok {
			return nil
		}
		return snapProgressMsg{ch: ch, p: p}
	}
}

func (d *snapshotDialog) start(m *Model) tea.Cmd {
	d.running = true
	d.progCh = make(chan SnapshotProgress, 1)
	ch := d.progCh
	req := SnapshotRequest{Name: strings.TrimSpace(d.name.Value()), Live: d.live}
	id := d.session.ID
	run := func() tea.Msg {
		ctx, cancel := contextWithTimeout(m.ctx, createTimeout)
		defer cancel()
		snap, err := d.sb.Snapshot(ctx, id, req, func(p SnapshotProgress) {
			// Keep only the latest figure: the view needs no history.
			select {
			case <-ch:
			default:
			}
			ch <- p
		})
		close(ch)
		return snapDoneMsg{session: id, snap: snap, err: err}
	}
	return tea.Batch(run, waitProgress(ch))
}

func (d *snapshotDialog) update(m *Model, msg tea.Msg) (bool, tea.Cmd) {
	switch msg := msg.(type) {
	case snapProgressMsg:
		if msg.ch == d.progCh {
			d.progress = msg.p
			return false, waitProgress(msg.ch)
		}
		return false, nil
	case snapDoneMsg:
		if msg.session != d.session.ID {
			return false, nil
		}
		d.running = false
		if msg.err != nil {
			d.err = msg.err
			return false, m.setError(fmt.Errorf("snapshot %s: %w", displayName(d.session), msg.err))
		}
		d.result = &msg.snap
		return false, m.setStatus("snapshot " + orDefault(msg.snap.Name, msg.snap.ID) + " saved; r resumes it")
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
				// Keep working in the background; the status line
				// reports the end.
				return true, m.setStatus("snapshot continues in the background")
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
		radio(!d.live, "disk: the root disk only; the VM keeps running"),
		radio(d.live, "live: RAM and devices too; resumes where it was"),
		"")
	d.name.SetWidth(max(inner-12, 8))
	body = append(body, m.st.label.Render("Name      ")+d.name.View(), "")
	switch {
	case d.err != nil:
		body = append(body, wrap(m.st.errText.Render("failed: "+oneLine(d.err.Error())), inner)...)
		body = append(body, "", "any key closes")
	case d.result != nil:
		body = append(body, m.st.okText.Render("saved "+orDefault(d.result.Name, d.result.ID)+" ("+humanBytes(d.result.Bytes)+")"), "", "any key closes")
	case d.running:
		body = append(body, progressBar(d.progress, inner), "", m.st.key.Render("esc")+" hide (the snapshot continues)")
	default:
		body = append(body, m.st.key.Render("tab")+" disk/live   "+m.st.key.Render("enter")+" take it   "+m.st.key.Render("esc")+" cancel")
	}
	return m.box("Snapshot · "+displayName(d.session), body, w, h)
}

// progressBar draws p as text, so it reads the same without colour.
func progressBar(p SnapshotProgress, w int) string {
	done := max(0, min(p.Done, 1))
	label := fmt.Sprintf(" %3.0f%% %s", done*100, p.Phase)
	barW := max(w-len(label)-2, 10)
	n := int(done * float64(barW))
	return "[" + strings.Repeat("#", n) + strings.Repeat("-", barW-n) + "]" + label
}

// resumeDialog lists snapshots and resumes one into a new session.
type resumeDialog struct {
	sb     SnapshotBackend
	list   []Snapshot
	loaded bool
	err    error
	cursor int
	busy   bool
}

type snapListMsg struct {
	list []Snapshot
	err  error
}

func (m *Model) openResume() tea.Cmd {
	sb := m.snapshotBackend()
	if sb == nil {
		return m.setStatus("snapshots: not available in this version")
	}
	m.dialog = &resumeDialog{sb: sb}
	return func() tea.Msg {
		ctx, cancel := m.reqCtx()
		defer cancel()
		list, err := sb.ListSnapshots(ctx)
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
			if len(d.list) == 0 || d.busy {
				return false, nil
			}
			snap := d.list[d.cursor]
			return true, tea.Batch(m.setStatus("resuming "+orDefault(snap.Name, snap.ID)+"…"), func() tea.Msg {
				ctx, cancel := contextWithTimeout(m.ctx, createTimeout)
				defer cancel()
				s, err := d.sb.Resume(ctx, snap.ID, ResumeRequest{})
				if err != nil {
					return doneMsg{err: fmt.Errorf("resume %s: %w", orDefault(snap.Name, snap.ID), err)}
				}
				return doneMsg{text: "resumed " + displayName(s), refresh: true, selectID: s.ID}
			})
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
			kind := "disk"
			if s.Live {
				kind = "live"
			}
			line := marker(i == d.cursor) + fit(orDefault(s.Name, s.ID), 16, false) + " " + fit(s.Session, 12, false) + " " +
				fit(kind, 4, false) + " " + fit(humanDuration(m.opts.Now().Sub(s.Created)), 5, true) + " " + fit(humanBytes(s.Bytes), 6, true)
			if i == d.cursor {
				line = m.st.selected.Render(line)
			}
			body = append(body, line)
		}
	}
	body = append(body, "", m.st.key.Render("enter")+" resume into a new session   "+m.st.key.Render("esc")+" close")
	return m.box("Resume from a snapshot", body, min(w, 70), h)
}
