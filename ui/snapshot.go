package ui

import tea "charm.land/bubbletea/v2"

func (m *Model) openSnapshot() tea.Cmd {
	return m.setStatus("snapshots: not available in this version")
}
func (m *Model) openResume() tea.Cmd { return m.setStatus("snapshots: not available in this version") }
