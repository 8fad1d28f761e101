package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testutil"
	"github.com/gondolin/gondolin/vm/agentproto"
)

func TestCrashLine(t *testing.T) {
	tests := []struct {
		line string
		want string // empty: not a crash
	}{
		{"fatal error: unlock of unlocked lock", "fatal error: unlock of unlocked lock"},
		{"panic: runtime error: index out of range", "panic: runtime error: index out of range"},
		{"[    1.234] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000200", "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000200"},
		{"SIGSEGV: segmentation violation\r", "SIGSEGV: segmentation violation"},
		{"gondolin-agent: mounts 9ms", ""},
		{"root@vm:~# echo hello", ""},
		{strings.Repeat("x", 100) + "fatal error: late in a long line", ""},
		{"fatal error: \x1b[2Jclears the screen", "fatal error: [2Jclears the screen"},
		{"fatal error: \u009b31mC1 \u202ereversed\xff", "fatal error: 31mC1 reversed?"},
		{"BUG: soft lockup - CPU#0 stuck for 22s!", ""},
	}
	for _, tt := range tests {
		got, ok := crashLine([]byte(tt.line))
		if ok != (tt.want != "") || got != tt.want {
			t.Errorf("crashLine(%q) = %q, %v; want %q", tt.line, got, ok, tt.want)
		}
	}
}

// TestConsoleWatcher feeds a console log in pieces, as QEMU writes it.
func TestConsoleWatcher(t *testing.T) {
	tests := []struct {
		name   string
		chunks []string
		from   int64
		want   string
		at     int // the chunk after which the crash must be seen (-1: never)
	}{
		{name: "clean boot", chunks: []string{"gondolin-agent: ready 300ms\n", "more\n"}, at: -1},
		{name: "fatal split across writes", chunks: []string{"ok\nfatal err", "or: unlock of unlocked lock\ngoroutine 1\n"},
			want: "fatal error: unlock of unlocked lock", at: 1},
		{name: "crash line still being written", chunks: []string{"panic: boom"}, want: "panic: boom", at: 0},
		{name: "before the offset is not ours", chunks: []string{"panic: old\n", "fine\n"}, from: int64(len("panic: old\n")), at: -1},
		{name: "flood skipped to its tail", chunks: []string{"fatal error: lost in the flood\n" + strings.Repeat("y\n", consoleMaxRead), "fatal error: seen\n"},
			want: "fatal error: seen", at: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "console.log")
			w := &consoleWatcher{path: path, offset: tt.from}
			if _, ok := w.check(); ok {
				t.Fatal("a crash in a missing log")
			}
			f, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			for i, c := range tt.chunks {
				f.WriteString(c)
				got, ok := w.check()
				if ok != (i == tt.at) {
					t.Fatalf("after chunk %d: crash %v (%q), want one only after chunk %d", i, ok, got, tt.at)
				}
				if ok {
					if got != tt.want {
						t.Fatalf("reason %q, want %q", got, tt.want)
					}
					return
				}
			}
		})
	}
}

// The console is written by the guest: the watcher must never panic, and
// what it reports must be one bounded, printable line.
func FuzzConsoleWatcher(f *testing.F) {
	f.Add([]byte("ok\nfatal error: unlock of unlocked lock\n"), 3)
	f.Add([]byte("\x00\xff panic: \x1b[31m\n"), 1)
	f.Fuzz(func(t *testing.T, data []byte, pieces int) {
		path := filepath.Join(t.TempDir(), "console.log")
		fh, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer fh.Close()
		w := &consoleWatcher{path: path}
		pieces = max(1, min(pieces, 8))
		step := max(1, len(data)/pieces)
		for i := 0; i < len(data); i += step {
			fh.Write(data[i:min(i+step, len(data))])
			if reason, ok := w.check(); ok {
				if len(reason) > consoleMaxLine || strings.ContainsAny(reason, "\n\r\x1b\x00") {
					t.Fatalf("unsafe reason %q", reason)
				}
				if reason == "" {
					t.Fatal("a crash with no reason")
				}
				return
			}
		}
	})
}

// silentAgent accepts connections on dir's agent socket and never
// answers: a guest that hangs.
func silentAgent(t *testing.T, dir string) {
	t.Helper()
	ln := testutil.Listen(t, "unix", filepath.Join(dir, layout.AgentSocket))
	testutil.Serve(t, ln, func(c net.Conn) { io.Copy(io.Discard, c); c.Close() })
}

// TestConnectAgentEndsOnCrash checks that waiting for a guest ends as
// soon as its console shows a crash, or QEMU exits, with that reason,
// however long the caller was willing to wait.
func TestConnectAgentEndsOnCrash(t *testing.T) {
	tests := []struct {
		name  string
		crash func(m *Machine)
		want  error
		text  string
	}{
		{"fatal on the console", func(m *Machine) {
			os.WriteFile(m.cfg.path(layout.ConsoleLog), []byte("booting\nfatal error: unlock of unlocked lock\n"), 0o600)
		}, ErrGuestCrashed, "unlock of unlocked lock"},
		{"qemu exited", func(m *Machine) {
			m.exitErr = fmt.Errorf("%w (qemu exited: exit status 1)", ErrExited)
			close(m.exited)
		}, ErrExited, "exit status 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "gdc")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			silentAgent(t, dir)
			m := &Machine{cfg: Config{Dir: dir}, exited: make(chan struct{})}
			time.AfterFunc(200*time.Millisecond, func() { tt.crash(m) })
			ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
			defer cancel()
			_, err = m.ConnectAgent(ctx, agentproto.Setup{})
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.text) {
				t.Fatalf("err = %v; want %v mentioning %q", err, tt.want, tt.text)
			}
		})
	}
}

// TestLaterWaitsIgnoreOldOutput: only the first wait after a start reads
// the console from its beginning; a later wait (a reconnect) is not ended
// by a crash line printed before it began, only by a new one.
func TestLaterWaitsIgnoreOldOutput(t *testing.T) {
	dir := t.TempDir()
	console := filepath.Join(dir, layout.ConsoleLog)
	os.WriteFile(console, []byte("panic: printed long ago by a program\n"), 0o600)
	m := &Machine{cfg: Config{Dir: dir}, exited: make(chan struct{})}
	first, cancel := m.guard(context.Background())
	<-first.Done()
	cancel()
	if !errors.Is(context.Cause(first), ErrGuestCrashed) {
		t.Fatalf("the first wait after a start missed the crash line: %v", context.Cause(first))
	}
	later, cancel := m.guard(context.Background())
	defer cancel()
	select {
	case <-later.Done():
		t.Fatalf("a later wait ended on old output: %v", context.Cause(later))
	case <-time.After(10 * consolePoll):
	}
	f, _ := os.OpenFile(console, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("fatal error: new\n")
	f.Close()
	<-later.Done()
	if cause := context.Cause(later); !errors.Is(cause, ErrGuestCrashed) || !strings.Contains(cause.Error(), "fatal error: new") {
		t.Fatalf("a later wait: %v", cause)
	}
}

// TestConsoleRotation: a console log past its cap is cut short, its end
// kept in the older file, and readers follow across the cut.
func TestConsoleRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, layout.ConsoleLog)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := &consoleWatcher{path: path}
	f.Write([]byte(strings.Repeat("x", 1000) + "\nthe end of the old part\n"))
	if _, ok := w.check(); ok {
		t.Fatal("no crash yet")
	}
	rotateConsole(dir, 100, 30)
	if st, _ := os.Stat(path); st.Size() != 0 {
		t.Fatalf("the log was not cut short: %d bytes", st.Size())
	}
	if old, _ := os.ReadFile(filepath.Join(dir, layout.ConsoleLogOld)); string(old) != "xxxxx\nthe end of the old part\n" {
		t.Fatalf("kept %q, want the last 30 bytes", old)
	}
	f.Write([]byte("fatal error: after the cut\n")) // QEMU appends: from the start
	if reason, ok := w.check(); !ok || reason != "fatal error: after the cut" {
		t.Fatalf("after a cut the watcher saw %q, %v", reason, ok)
	}
	tail := string(ConsoleTail(dir, 1<<20))
	if !strings.HasSuffix(tail, "the end of the old part\nfatal error: after the cut\n") {
		t.Fatalf("ConsoleTail across the cut: %q", tail)
	}
	rotateConsole(dir, 100, 30) // under the cap: nothing happens
	if st, _ := os.Stat(path); st.Size() == 0 {
		t.Fatal("a log under its cap was cut")
	}
}
