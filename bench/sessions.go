package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gondolin/gondolin/sessions"
	"github.com/gondolin/gondolin/vm"
	"github.com/gondolin/gondolin/vm/agentproto"
)

func init() {
	sections = append(sections, section{"sessions: supervisor, terminals", benchSessions})
}

// startSupervisor starts a supervisor for e's home, as the user's first
// command would, and returns a client of it, a context that ends after
// timeout, and stop, which stops the supervisor and ends the context.
func startSupervisor(e *env, timeout time.Duration) (context.Context, *sessions.Client, func()) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	client, err := sessions.Connect(ctx, e.home, sessions.ConnectOptions{Start: true, Executable: e.bin})
	check("start supervisor", err)
	return ctx, client, func() {
		client.StopSupervisor(context.Background(), true)
		cancel()
	}
}

// benchSessions measures what a user of sessions feels: keystroke echo
// through the supervisor (against the bare agent channel), the time from
// create to a prompt, and the supervisor's memory with idle sessions.
func benchSessions(e *env) []row {
	raw := e.rawBootFigure(benchConfig(e, ""))
	ctx, client, stop := startSupervisor(e, 10*time.Minute)
	defer stop()

	// Keystroke echo through the supervisor (one byte in, the terminal's
	// echo of it out), then the same through the bare agent channel of a
	// VM of our own, under the same load.
	first, err := client.Create(ctx, sessions.CreateRequest{Command: []string{"sh", "-c", "PS1='ready> ' exec sh -i"}})
	check("create", err)
	ids := []string{first.ID}
	att, err := client.Attach(ctx, first.ID, 0, 24, 80)
	check("attach", err)
	out := &signalBuffer{ch: make(chan struct{}, 1)}
	go att.Output(out)
	waitFor(out, "ready>")
	viaSupervisor := echoRTT(200, func(b byte) { att.Input([]byte{b}) }, out)
	att.Close()
	bare := bareEchoRTT(ctx, e)

	// Create-to-prompt, each with the warm pool full (the claim, not a
	// refill, is measured).
	var toPrompt durations
	for range *runs {
		waitPoolReady(e)
		start := time.Now()
		s, err := client.Create(ctx, sessions.CreateRequest{Command: []string{"sh", "-c", "PS1='ready> ' exec sh -i"}})
		check("create", err)
		ids = append(ids, s.ID)
		waitOutput(ctx, client, s.ID, "ready>")
		toPrompt = append(toPrompt, time.Since(start))
	}

	// Memory with 10 idle sessions.
	for len(ids) < 10 {
		s, err := client.Create(ctx, sessions.CreateRequest{})
		check("create idle", err)
		ids = append(ids, s.ID)
	}
	time.Sleep(2 * time.Second)
	st, err := client.Status(ctx)
	check("status", err)
	var qemuRSS int64
	list, _ := client.List(ctx, false)
	for _, s := range list {
		if s.Usage != nil {
			qemuRSS += s.Usage.RSSBytes
		}
	}
	return []row{
		{"keystroke echo via supervisor", viaSupervisor.p50p99(), "agent " + bare.p50p99(), ratio(viaSupervisor.pct(0.5), bare.pct(0.5))},
		{"session create to prompt (API), warm pool", toPrompt.String(), "boot " + ms(raw.pct(0.5)), ratio(toPrompt.pct(0.5), raw.pct(0.5))},
		{fmt.Sprintf("supervisor RSS, %d idle sessions", len(list)), fmt.Sprintf("%.1f MiB", float64(st.RSSBytes)/(1<<20)),
			fmt.Sprintf("QEMU total %.0f MiB", float64(qemuRSS)/(1<<20)), "-"},
	}
}

func (d durations) p50p99() string {
	return fmt.Sprintf("p50 %s  p99 %s", ms(d.pct(0.5)), ms(d.pct(0.99)))
}

// signalBuffer collects output and signals each write.
type signalBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	ch  chan struct{}
}

func (s *signalBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	s.buf.Write(p)
	s.mu.Unlock()
	select {
	case s.ch <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (s *signalBuffer) take() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.buf.String()
	s.buf.Reset()
	return out
}

func waitFor(s *signalBuffer, want string) {
	deadline := time.After(60 * time.Second)
	var seen strings.Builder
	for !strings.Contains(seen.String(), want) {
		select {
		case <-s.ch:
			seen.WriteString(s.take())
		case <-deadline:
			fatal(fmt.Errorf("never saw %q in %q", want, seen.String()))
		}
	}
}

// echoRTT types n letters one at a time and times each echo.
func echoRTT(n int, send func(byte), out *signalBuffer) durations {
	var d durations
	for i := range n {
		b := byte('a' + i%26)
		out.take()
		start := time.Now()
		send(b)
		waitFor(out, string(b))
		d = append(d, time.Since(start))
	}
	return d
}

func waitOutput(ctx context.Context, c *sessions.Client, id, want string) {
	for {
		scr, err := c.Screen(ctx, id, 0)
		if err == nil && strings.Contains(scr.Text, want) {
			return
		}
		select {
		case <-ctx.Done():
			fatal(fmt.Errorf("session %s never showed %q", id, want))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func bareEchoRTT(ctx context.Context, e *env) durations {
	dir, err := os.MkdirTemp(string(e.home), "echo")
	check("run dir", err)
	defer os.RemoveAll(dir)
	cfg := benchConfig(e, dir)
	m, a, err := (&vm.Templates{Dir: e.home.Templates()}).Clone(ctx, cfg, agentproto.Setup{})
	check("boot", err)
	defer m.Kill()
	defer a.Close()
	out := &signalBuffer{ch: make(chan struct{}, 1)}
	p, err := a.Start(ctx, vm.Command{Exec: agentproto.Exec{Argv: []string{"sh", "-c", "PS1='ready> ' exec sh -i"}, TTY: true, Persistent: true},
		OnOutput: func(_ uint64, data []byte) { out.Write(data) }})
	check("pty", err)
	in, err := a.OpenStdin(ctx, p.ID)
	check("stdin", err)
	waitFor(out, "ready>")
	return echoRTT(200, func(b byte) { in.Write([]byte{b}) }, out)
}
