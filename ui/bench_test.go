package ui

import (
	"context"
	"fmt"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/exp/teatest/v2"
	"github.com/gondolin/gondolin/sessions"
)

var teatestTimeout = teatest.WithFinalTimeout(5 * time.Second)

func sizeMsg(w, h int) tea.WindowSizeMsg { return tea.WindowSizeMsg{Width: w, Height: h} }

// manySessions is a fake supervisor with n sessions of every state, each
// with a full terminal screen.
func manySessions(n int) *fakeBackend {
	f := newFake()
	states := []sessions.State{sessions.Live, sessions.Live, sessions.Live, sessions.Stale, sessions.Stopped}
	for i := 0; i < n; i++ {
		s := sessions.Session{
			ID: fmt.Sprintf("%012x", 0xabc000000000+i), Name: fmt.Sprintf("session-%03d", i), State: states[i%len(states)],
			Created: epoch.Add(-time.Duration(i) * time.Minute), Image: "default:latest", Policy: "3 hosts, 1 secret",
			PTYs: []sessions.PTY{{ID: 1, Running: true, Main: true}, {ID: 2, Argv: []string{"top"}, Running: true}},
		}
		if s.State == sessions.Live {
			s.Usage = &sessions.Usage{CPUPercent: float64(i % 100), RSSBytes: int64(100+i) << 20}
		}
		if s.State == sessions.Stale {
			s.Reason = "the VM is not running"
		}
		f.sessions = append(f.sessions, s)
		lines := make([]string, 40)
		for j := range lines {
			lines[j] = fmt.Sprintf("\x1b[32mline %d\x1b[m of session %d: \x1b[1m%s\x1b[m", j, i, "some output that fills the row to the edge of the screen....")
		}
		scr := screenOf(40, 120, lines...)
		scr.ANSI = scr.Text
		f.screens[s.ID+"/2"] = scr
	}
	return f
}

// BenchmarkFrame100Sessions renders one dashboard frame with 100
// sessions and a full preview, at 80x24 and at 200x60, and reports
// ns/frame (a 60 Hz terminal leaves 16 ms per frame).
func BenchmarkFrame100Sessions(b *testing.B) {
	for _, size := range [][2]int{{80, 24}, {200, 60}} {
		b.Run(fmt.Sprintf("%dx%d", size[0], size[1]), func(b *testing.B) {
			f := manySessions(100)
			m := New(context.Background(), f, Options{Now: func() time.Time { return epoch }})
			m.Update(sizeMsg(size[0], size[1]))
			list, _ := f.List(context.Background(), true)
			m.Update(listMsg{host: m.hosts[0], list: list})
			m.selectRow(50)
			key, pty := m.previewTarget()
			s, _ := m.current()
			scr, _ := f.Screen(context.Background(), s.ID, pty)
			m.Update(screenMsg{key: key, pty: pty, screen: scr})
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				// Moving the selection each frame defeats any caching a
				// static screen would enjoy.
				m.cursor = 40 + i%20
				_ = m.render()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/frame")
		})
	}
}
