package sshaccess

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/syncbuf"
)

// chokingBackend panics where the guest's answers are handled, as a bug
// hit by a hostile guest's bytes would: on the command "choke" and on
// every forwarding.
type chokingBackend struct{ fakeBackend }

func (b *chokingBackend) Exec(ctx context.Context, p *Process) (Exit, error) {
	if p.Command == "choke" {
		panic("test: an exit status the agent client chokes on")
	}
	return b.fakeBackend.Exec(ctx, p)
}

func (b *chokingBackend) Forward(context.Context, string, uint16) (net.Conn, error) {
	panic("test: a connection the guest dialer chokes on")
}

// TestPanicContained makes serving one client panic: that session or
// connection must end (not hang), the panic be logged with its stack,
// and the server go on serving. Without containment each case crashes
// the test binary.
func TestPanicContained(t *testing.T) {
	logs := &syncbuf.Buffer{}
	s := newServer(t, Options{Backend: &chokingBackend{}, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	for _, tc := range []struct {
		name string
		run  func(t *testing.T)
	}{
		{"command", func(t *testing.T) {
			cl := mustLogin(t, s, "root")
			sess, err := cl.NewSession()
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			failsWithin(t, "the command", func() error { return sess.Run("choke") })
			// The connection's other sessions go on.
			if out, _, code := run(t, cl, "echo same connection", ""); out != "same connection\n" || code != 0 {
				t.Errorf("%q %d", out, code)
			}
		}},
		{"forwarding", func(t *testing.T) {
			cl := mustLogin(t, s, "root")
			failsWithin(t, "the forwarding", func() error {
				c, err := cl.Dial("tcp", "localhost:8000")
				if err == nil {
					c.Close()
				}
				return err
			})
		}},
	} {
		t.Run(tc.name, tc.run)
	}
	if l := logs.String(); strings.Count(l, "level=ERROR") < 2 || !strings.Contains(l, "panic_test.go") {
		t.Errorf("panics not logged with their stacks:\n%s", l)
	}
	cl := mustLogin(t, s, "root")
	if out, _, code := run(t, cl, "echo still here", ""); out != "still here\n" || code != 0 {
		t.Errorf("after the panics: %q %d", out, code)
	}
}

// failsWithin runs f and fails t unless it returns an error within 10
// seconds: what a panic in serving it must come to, rather than a hang.
func failsWithin(t *testing.T, what string, f func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("%s succeeded", what)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s hangs", what)
	}
}
