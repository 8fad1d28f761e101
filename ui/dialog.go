package ui

import (
	"strings"

	tea "charm.land/bubbletea/v2"
	"charm.land/lipgloss/v2"
	"github.com/charmbracelet/x/ansi"
)

// dialog is a box drawn over the main view that takes the keys while it
// is open.
type dialog interface {
	// update handles a message; done closes the dialog.
	update(m *Model, msg tea.Msg) (done bool, cmd tea.Cmd)
	// view draws the dialog's box in at most w columns and h rows.
	view(m *Model, w, h int) string
}

// box frames a dialog's title and body lines in at most w columns and h
// rows.
func (m *Model) box(title string, body []string, w, h int) string {
	inner := max(w-4, 10) // border and padding
	lines := make([]string, 0, len(body)+2)
	lines = append(lines, m.st.dialogTitle.Render(ansi.Truncate(title, inner, "…")), "")
	for _, l := range body {
		lines = append(lines, ansi.Truncate(l, inner, "…"))
	}
	if max(h-2, 1) < len(lines) {
		lines = lines[:max(h-2, 1)]
	}
	width := 0
	for _, l := range lines {
		width = max(width, ansi.StringWidth(l))
	}
	return m.st.dialog.Width(min(max(width+4, 40), w)).Render(strings.Join(lines, "\n"))
}

// wrap breaks text into lines of at most w cells.
func wrap(text string, w int) []string {
	return strings.Split(lipgloss.Wrap(text, max(w, 10), " "), "\n")
}

// helpDialog lists every key.
type helpDialog struct{}

func (helpDialog) update(m *Model, msg tea.Msg) (bool, tea.Cmd) {
	if k, ok := msg.(tea.KeyPressMsg); ok {
		if k.String() == "ctrl+c" {
			return true, m.quit()
		}
		return true, nil
	}
	return false, nil
}

func (helpDialog) view(m *Model, w, h int) string {
	lines := 0
	for _, g := range keyMap {
		lines += len(g.bindings) + 2
	}
	// On short terminals the groups go without blank lines between them,
	// so that every key still shows.
	roomy := lines+4 <= h
	var body []string
	for i, g := range keyMap {
		if i > 0 && roomy {
			body = append(body, "")
		}
		body = append(body, m.st.label.Render(g.title))
		for _, b := range g.bindings {
			body = append(body, "  "+m.st.key.Render(fit(b.keys, 14, false))+" "+b.help)
		}
	}
	return m.box("Keys", body, w, h)
}

// confirmDialog asks before a destructive action.
type confirmDialog struct {
	title, body string
	yes, doing  string // "stop", "stopping …"
	run         tea.Cmd
}

func (d *confirmDialog) update(m *Model, msg tea.Msg) (bool, tea.Cmd) {
	k, ok := msg.(tea.KeyPressMsg)
	if !ok {
		return false, nil
	}
	switch k.String() {
	case "y", "Y", "enter":
		return true, tea.Batch(m.setStatus(d.doing), d.run)
	case "n", "N", "esc", "q":
		return true, nil
	case "ctrl+c":
		return true, m.quit()
	}
	return false, nil
}

func (d *confirmDialog) view(m *Model, w, h int) string {
	inner := min(w, 60) - 4
	body := wrap(d.body, inner)
	body = append(body, "", m.st.key.Render("y")+" "+d.yes+"    "+m.st.key.Render("n")+" cancel")
	return m.box(d.title, body, min(w, 60), h)
}
