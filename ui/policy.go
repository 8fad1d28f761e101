package ui

import (
	tea "charm.land/bubbletea/v2"
	"github.com/gondolin/gondolin/sessions"
)

func (m *Model) policyBackend() PolicyBackend {
	pb, _ := m.backend.(PolicyBackend)
	return pb
}

func (m *Model) policySummary(s sessions.Session) string { return "-" }

func (m *Model) openPolicy() tea.Cmd { return m.setStatus("policy: not available in this version") }
