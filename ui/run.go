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

// Run opens the dashboard on the process's terminal for client's
// supervisor and returns when the user quits. Quitting leaves every VM
// running.
func Run(ctx context.Context, client *sessions.Client) error {
	keys, err := termio.ParseDetachKeys(termio.DefaultDetachKeys)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m := New(ctx, client, Options{
		Attach: func(ctx context.Context, ref string, pty uint64, in, out *os.File) (sessions.AttachResult, error) {
			return sessions.AttachTerminal(ctx, client, ref, pty, keys, in, out)
		},
		UsageRefresh: usageRefresh,
	})
	_, err = tea.NewProgram(m, tea.WithContext(ctx)).Run()
	return err
}
