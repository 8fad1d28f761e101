package ui

import (
	"charm.land/lipgloss/v2"
	"github.com/gondolin/gondolin/sessions"
)

// Colour only ever repeats what the text already says (state names, the
// ">" on the selected row, brackets around the current terminal), so the
// dashboard reads the same under NO_COLOR, where Bubble Tea drops colours.
var (
	colAccent = lipgloss.Color("#7D56F4")
	colLive   = lipgloss.Color("#3FB950")
	colStale  = lipgloss.Color("#D29922")
	colStop   = lipgloss.Color("#8B949E")
	colErr    = lipgloss.Color("#F85149")
	colDim    = lipgloss.Color("#8B949E")
)

type styles struct {
	title, header, selected, dim, key, errText, okText, border, dialog, dialogTitle, label, focused lipgloss.Style
	state                                                                                           map[sessions.State]lipgloss.Style
}

func newStyles() styles {
	s := styles{
		title:       lipgloss.NewStyle().Bold(true).Foreground(colAccent),
		header:      lipgloss.NewStyle().Bold(true),
		selected:    lipgloss.NewStyle().Reverse(true),
		dim:         lipgloss.NewStyle().Foreground(colDim),
		key:         lipgloss.NewStyle().Bold(true),
		errText:     lipgloss.NewStyle().Foreground(colErr),
		okText:      lipgloss.NewStyle().Foreground(colLive),
		border:      lipgloss.NewStyle().Foreground(colDim),
		dialog:      lipgloss.NewStyle().Border(lipgloss.RoundedBorder()).BorderForeground(colAccent).Padding(0, 1),
		dialogTitle: lipgloss.NewStyle().Bold(true),
		label:       lipgloss.NewStyle().Bold(true),
		focused:     lipgloss.NewStyle().Bold(true).Foreground(colAccent),
		state: map[sessions.State]lipgloss.Style{
			sessions.Live:    lipgloss.NewStyle().Foreground(colLive),
			sessions.Stale:   lipgloss.NewStyle().Foreground(colStale),
			sessions.Stopped: lipgloss.NewStyle().Foreground(colStop),
			// Work in progress, in the accent colour: neither healthy yet
			// nor in trouble.
			sessions.Creating: lipgloss.NewStyle().Foreground(colAccent),
		},
	}
	return s
}

func (s styles) stateStyle(st sessions.State) lipgloss.Style {
	if style, ok := s.state[st]; ok {
		return style
	}
	return lipgloss.NewStyle()
}
