package ui

import (
	"context"
	"os"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/gondolin/gondolin/internal/termio"
	"github.com/gondolin/gondolin/sessions"
)

// usageRefresh is 0: the supervisor's session.usage events keep the CPU
// and memory columns current, so the dashboard never polls.
const usageRefresh = 0 * time.Second

// Run opens the dashboard on the process's terminal for hosts'
// supervisors (this machine's first) and returns when the user quits.
// Quitting leaves every VM running. A host whose Backend is a
// *sessions.Client and that has no Attach attaches through it. host
// names the host the new-session form proposes (empty: the first).
func Run(ctx context.Context, hosts []Host, host string) error {
	keys, err := termio.ParseDetachKeys(termio.DefaultDetachKeys)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hosts = append([]Host(nil), hosts...)
	for i, h := range hosts {
		if client, ok := h.Backend.(*sessions.Client); ok && h.Attach == nil {
			hosts[i].Attach = func(ctx context.Context, ref string, pty uint64, in, out *os.File) (sessions.AttachResult, error) {
				return sessions.AttachTerminal(ctx, client, ref, pty, keys, in, out)
			}
		}
	}
	m := NewHosts(ctx, hosts, Options{UsageRefresh: usageRefresh, Host: host})
	_, err = tea.NewProgram(m, tea.WithContext(ctx)).Run()
	return err
}
