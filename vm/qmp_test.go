package vm

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
)

// fakeQMP answers QMP on dir's socket, one client at a time, as QEMU
// does; commands named in slow are answered only after a long delay.
type fakeQMP struct {
	mu       sync.Mutex
	commands []string
	clients  int
}

func serveFakeQMP(t *testing.T, dir string, slow map[string]bool) *fakeQMP {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(dir, layout.QMPSocket))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	f := &fakeQMP{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.clients++
			f.mu.Unlock()
			f.serve(c, slow)
		}
	}()
	return f
}

func (f *fakeQMP) serve(c net.Conn, slow map[string]bool) {
	defer c.Close()
	c.Write([]byte(`{"QMP": {"version": {}, "capabilities": ["oob"]}}` + "\n"))
	dec := json.NewDecoder(c) // QMP commands need no newline between them
	for {
		var cmd struct {
			Execute string `json:"execute"`
		}
		if dec.Decode(&cmd) != nil {
			return
		}
		f.mu.Lock()
		f.commands = append(f.commands, cmd.Execute)
		f.mu.Unlock()
		if slow[cmd.Execute] {
			time.Sleep(5 * time.Second)
		}
		if _, err := c.Write([]byte(`{"return": {}}` + "\n")); err != nil {
			return
		}
	}
}

// TestQMPAfterACutOffCall: a QMP call cut off by its context must not
// leave the machine without a monitor: undoing a pause is exactly the
// call that comes after a cut-off one.
func TestQMPAfterACutOffCall(t *testing.T) {
	dir, err := os.MkdirTemp("", "gdq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := serveFakeQMP(t, dir, map[string]bool{"stop": true})
	m := &Machine{cfg: Config{Dir: dir}, exited: make(chan struct{})}
	t.Cleanup(m.closeQMP)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := m.Pause(ctx); err == nil {
		t.Fatal("a pause QEMU never answered succeeded")
	}
	if err := m.Resume(context.Background()); err != nil {
		t.Fatalf("resume after a cut-off pause: %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if got := strings.Join(f.commands, " "); !strings.HasSuffix(got, "stop qmp_capabilities cont") || f.clients != 2 {
		t.Fatalf("QEMU saw %q from %d clients; want a new client for the resume", got, f.clients)
	}
}
