package ui

import (
	"context"
	"fmt"
	"io"
	"os"

	tea "charm.land/bubbletea/v2"
	"github.com/gondolin/gondolin/sessions"
)

// onKey handles a key on the main view (no dialog open).
func (m *Model) onKey(k tea.KeyPressMsg) tea.Cmd {
	key := k.String()
	if m.filtering {
		switch key {
		case "esc":
			m.filtering = false
			m.filter.Blur()
			m.filter.SetValue("")
			m.applyFilter()
			return m.fetchPreview(false)
		case "enter", "down", "up", "tab":
			// Keep the filter and go back to the table, the row found
			// selected (it stays so when the filter is cleared).
			m.filtering = false
			m.filter.Blur()
			m.picked = len(m.visible) > 0
			return nil
		case "ctrl+c":
			return m.quit()
		}
		var cmd tea.Cmd
		m.filter, cmd = m.filter.Update(k)
		m.applyFilter()
		return tea.Batch(cmd, m.fetchPreview(false))
	}
	page := max(1, m.layout().tableRows-1)
	switch key {
	case "q", "ctrl+c":
		return m.quit()
	case "up", "k":
		return m.selectRow(m.cursor - 1)
	case "down", "j":
		return m.selectRow(m.cursor + 1)
	case "pgup":
		return m.selectRow(m.cursor - page)
	case "pgdown":
		return m.selectRow(m.cursor + page)
	case "home", "g":
		return m.selectRow(0)
	case "end", "G":
		return m.selectRow(len(m.visible) - 1)
	case "?":
		m.dialog = &helpDialog{}
		return nil
	case "/":
		m.filtering = true
		return m.filter.Focus()
	case "esc":
		if m.filter.Value() != "" {
			m.filter.SetValue("")
			m.applyFilter()
			return m.fetchPreview(false)
		}
		return nil
	case "enter":
		return m.attach()
	case "tab", "shift+tab":
		return m.cyclePTY(key == "tab")
	case "1", "2", "3", "4", "5", "6", "7", "8", "9":
		return m.pickPTY(int(key[0] - '0'))
	case "c":
		return m.openShell()
	case "n":
		m.dialog = newSessionForm(m)
		return m.dialog.(*sessionForm).focusCmd()
	case "x":
		return m.confirmStop()
	case "d":
		return m.confirmRemove()
	case "p":
		return m.openPolicy()
	case "s":
		return m.openSnapshot()
	case "r":
		return m.openResume()
	}
	return nil
}

// quit leaves the dashboard. It never stops a VM: sessions belong to the
// supervisor, not to this process.
func (m *Model) quit() tea.Cmd {
	m.quitting = true
	return tea.Quit
}

func (m *Model) cyclePTY(forward bool) tea.Cmd {
	s, ok := m.current()
	if !ok || len(s.PTYs) == 0 {
		return nil
	}
	cur, _ := m.ptyFor(s)
	i := 0
	for j, p := range s.PTYs {
		if p.ID == cur.ID {
			i = j
		}
	}
	if forward {
		i = (i + 1) % len(s.PTYs)
	} else {
		i = (i + len(s.PTYs) - 1) % len(s.PTYs)
	}
	m.ptyChoice[s.key()] = s.PTYs[i].ID
	return m.fetchPreview(false)
}

func (m *Model) pickPTY(n int) tea.Cmd {
	s, ok := m.current()
	if !ok {
		return nil
	}
	if n > len(s.PTYs) {
		return m.setStatus(fmt.Sprintf("%s has %d terminal(s)", s.displayName(), len(s.PTYs)))
	}
	m.ptyChoice[s.key()] = s.PTYs[n-1].ID
	return m.fetchPreview(false)
}

func displayName(s sessions.Session) string {
	if s.Name != "" {
		return s.Name
	}
	return s.ID
}

// displayName names the row's session, or its host for a placeholder.
func (r row) displayName() string {
	if r.placeholder() && r.host != nil {
		return "host " + r.host.Name
	}
	return displayName(r.Session)
}

// needLive returns the selected row if its session is live and its host
// reachable, else a status message saying why the action cannot run.
func (m *Model) needLive(action string) (row, tea.Cmd, bool) {
	s, ok := m.current()
	if !ok {
		return s, m.setStatus("no session selected; n creates one"), false
	}
	if s.down != "" {
		return s, m.setError(fmt.Errorf("cannot %s %s: host %s is unreachable (%s)", action, s.displayName(), s.host.Name, s.down)), false
	}
	if s.placeholder() {
		return s, m.setStatus(fmt.Sprintf("host %s has not been listed yet", s.host.Name)), false
	}
	if s.State == sessions.Creating {
		return s, m.setStatus(fmt.Sprintf("%s is being created (%s): wait until it is live", s.displayName(), orDefault(s.Phase, sessions.PhaseStarting))), false
	}
	if s.State != sessions.Live {
		return s, m.setError(fmt.Errorf("cannot %s %s: it is %s", action, s.displayName(), s.State)), false
	}
	return s, nil, true
}

// optionalFeature returns h's backend as B, one of the optional feature
// interfaces (see PolicyBackend). When the backend lacks it, ok is false
// and cmd says the feature is not available in this version.
func optionalFeature[B any](m *Model, h *host, feature string) (b B, cmd tea.Cmd, ok bool) {
	if b, ok = h.Backend.(B); !ok {
		if h.multi {
			return b, m.setStatus(feature + ": not available on host " + h.Name + " (its gondolin is older)"), false
		}
		return b, m.setStatus(feature + ": not available in this version"), false
	}
	return b, nil, true
}

// liveFeature is optionalFeature (of the selected row's host) followed
// by needLive: the start of an action on the selected live session that
// needs the optional feature B.
func liveFeature[B any](m *Model, feature, action string) (B, row, tea.Cmd, bool) {
	h := m.hosts[0]
	if s, ok := m.current(); ok {
		h = s.host
	}
	b, cmd, ok := optionalFeature[B](m, h, feature)
	if !ok {
		return b, row{}, cmd, false
	}
	s, cmd, ok := m.needLive(action)
	return b, s, cmd, ok
}

func (m *Model) openShell() tea.Cmd {
	s, cmd, ok := m.needLive("open a terminal in")
	if !ok {
		return cmd
	}
	rows, cols := uint16(max(m.height, 24)), uint16(max(m.width, 80))
	return func() tea.Msg {
		ctx, cancel := m.reqCtx()
		defer cancel()
		p, err := s.host.Backend.OpenPTY(ctx, s.ID, sessions.OpenPTYRequest{Rows: rows, Cols: cols})
		if err != nil {
			return doneMsg{err: fmt.Errorf("new terminal in %s: %w", s.displayName(), err)}
		}
		return doneMsg{text: fmt.Sprintf("opened terminal %d in %s (enter attaches)", p.ID, s.displayName()),
			refresh: true, selectKey: s.key(), pty: p.ID}
	}
}

func (m *Model) confirmStop() tea.Cmd {
	s, cmd, ok := m.needLive("stop")
	if !ok {
		return cmd
	}
	m.dialog = &confirmDialog{
		title: "Stop " + s.displayName() + "?",
		body:  fmt.Sprintf("Its VM shuts down and its %d terminal(s) end. The session stays listed as stopped until removed.", s.RunningPTYs()),
		yes:   "stop",
		doing: "stopping " + s.displayName() + "…",
		run: func() tea.Msg {
			ctx, cancel := context.WithTimeout(m.ctx, 2*requestTimeout)
			defer cancel()
			if _, err := s.host.Backend.Stop(ctx, s.ID); err != nil {
				return doneMsg{err: fmt.Errorf("stop %s: %w", s.displayName(), err), refresh: true}
			}
			return doneMsg{text: "stopped " + s.displayName(), refresh: true}
		},
	}
	return nil
}

func (m *Model) confirmRemove() tea.Cmd {
	s, ok := m.current()
	if !ok {
		return m.setStatus("no session selected")
	}
	if s.down != "" {
		return m.setError(fmt.Errorf("cannot remove %s: host %s is unreachable (%s)", s.displayName(), s.host.Name, s.down))
	}
	if s.placeholder() {
		return m.setStatus(fmt.Sprintf("host %s has not been listed yet", s.host.Name))
	}
	if s.State == sessions.Live {
		return m.setError(fmt.Errorf("%s is live: stop it first (x), then remove it", s.displayName()))
	}
	if s.State == sessions.Creating {
		// The supervisor refuses it too: a create ends, live or gone,
		// within its boot timeout.
		return m.setStatus(fmt.Sprintf("%s is being created: remove it once it is live (or its create failed)", s.displayName()))
	}
	m.dialog = &confirmDialog{
		title: "Remove " + s.displayName() + "?",
		body:  fmt.Sprintf("Its directory, disk overlay and logs are deleted. It is %s.", s.State),
		yes:   "remove",
		doing: "removing " + s.displayName() + "…",
		run: func() tea.Msg {
			ctx, cancel := m.reqCtx()
			defer cancel()
			if err := s.host.Backend.Remove(ctx, s.ID, false); err != nil {
				return doneMsg{err: fmt.Errorf("remove %s: %w", s.displayName(), err), refresh: true}
			}
			return doneMsg{text: "removed " + s.displayName(), refresh: true}
		},
	}
	return nil
}

// attach hands the terminal to the selected session's previewed
// terminal until the user detaches (Ctrl-]); Bubble Tea releases the
// terminal meanwhile and repaints afterwards.
func (m *Model) attach() tea.Cmd {
	s, cmd, ok := m.needLive("attach to")
	if !ok {
		return cmd
	}
	p, ok := m.ptyFor(s)
	if !ok || !p.Running {
		return m.setError(fmt.Errorf("%s has no running terminal: c opens a shell", s.displayName()))
	}
	if s.host.Attach == nil {
		return m.setError(fmt.Errorf("attaching is not available here: use gondolin attach %s", s.displayName()))
	}
	a := &attachExec{ctx: m.ctx, fn: s.host.Attach, ref: s.ID, pty: p.ID}
	return tea.Exec(a, func(err error) tea.Msg {
		if err == nil {
			err = a.err
		}
		return attachDoneMsg{ref: s.ID, pty: p.ID, res: a.res, err: err}
	})
}

func (m *Model) onAttachDone(msg attachDoneMsg) tea.Cmd {
	var status tea.Cmd
	switch {
	case msg.err != nil:
		status = m.setError(msg.err)
	case msg.res.Exited:
		status = m.setStatus(fmt.Sprintf("terminal %d exited with code %d", msg.pty, msg.res.ExitCode))
	default:
		status = m.setStatus("detached; the terminal keeps running")
	}
	// The screen changed while we were away and its paint events were
	// not watched for this terminal by anyone but us: fetch it now.
	return tea.Batch(status, m.refresh(), m.fetchPreview(true))
}

// attachExec runs an AttachFunc as a tea.ExecCommand, with the terminal
// Bubble Tea hands over.
type attachExec struct {
	ctx     context.Context
	fn      AttachFunc
	ref     string
	pty     uint64
	in, out *os.File
	res     sessions.AttachResult
	err     error
}

func (a *attachExec) SetStdin(r io.Reader) {
	if f, ok := r.(*os.File); ok {
		a.in = f
	}
}

func (a *attachExec) SetStdout(w io.Writer) {
	if f, ok := w.(*os.File); ok {
		a.out = f
	}
}

func (a *attachExec) SetStderr(io.Writer) {}

func (a *attachExec) Run() error {
	in, out := a.in, a.out
	if in == nil {
		in = os.Stdin
	}
	if out == nil {
		out = os.Stdout
	} else {
		// Clear the dashboard off the screen: the attach repaints the
		// guest terminal's screen over a blank one.
		io.WriteString(out, "\x1b[H\x1b[2J")
	}
	a.res, a.err = a.fn(a.ctx, a.ref, a.pty, in, out)
	return nil
}
