package vm

import (
	"bufio"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/testutil"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// parkOn connects to socket and parks the agent there, within d.
func parkOn(t *testing.T, socket string, d time.Duration) (net.Conn, error) {
	t.Helper()
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return conn, park(ctx, conn)
}

// TestParkWaitsForQuiet parks the real agent (on this host): it refuses
// while a command runs, parks once nothing does, and a parked agent runs
// nothing until the host's setup has reseeded and set the clock.
func TestParkWaitsForQuiet(t *testing.T) {
	socket, sys := hostAgent(t)
	a := dial(t, socket)
	ctx, cancel := context.WithCancel(context.Background())
	running := make(chan error, 1)
	go func() {
		_, err := a.Run(ctx, Command{Exec: agentproto.Exec{Argv: []string{"sleep", "30"}}})
		running <- err
	}()
	testutil.WaitFor(t, 10*time.Second, "the command running", func() bool {
		procs, err := a.Processes(context.Background())
		return err == nil && len(procs) == 1
	})
	if _, err := parkOn(t, socket, time.Second); err == nil {
		t.Fatal("the agent parked while a command was running")
	}
	cancel() // closing the stream kills the command
	<-running
	a.Close()
	if _, err := parkOn(t, socket, 10*time.Second); err != nil {
		t.Fatalf("park once nothing runs: %v", err)
	}

	b := dial(t, socket)
	_, _, _, err := run(t, b, sh("echo should not run"))
	if err == nil || !strings.Contains(err.Error(), "setup") {
		t.Fatalf("exec before setup after a park: err = %v, want a refusal that asks for setup", err)
	}
	if _, err := b.Ping(context.Background()); err != nil {
		t.Fatalf("ping before setup: %v", err)
	}
	if err := b.Setup(context.Background(), agentproto.Setup{Hostname: "clone"}); err != nil {
		t.Fatal(err)
	}
	out, _, exit, err := run(t, b, sh("echo ran"))
	if err != nil || exit.Code != 0 || out != "ran\n" {
		t.Fatalf("exec after setup: %q %+v %v", out, exit, err)
	}
	sys.mu.Lock()
	last := sys.setups[len(sys.setups)-1]
	sys.mu.Unlock()
	if len(last.Seed) == 0 || last.UnixNano == 0 {
		t.Fatalf("the setup that reopened the agent carried no seed or time: %+v", last)
	}
}

// stuckSystem never answers a freeze until released: a guest that hangs.
type stuckSystem struct {
	fakeSystem
	release chan struct{}
	once    sync.Once
}

func (s *stuckSystem) Freeze(*agentproto.Freeze) error {
	<-s.release
	return nil
}

func (s *stuckSystem) unstick() { s.once.Do(func() { close(s.release) }) }

// TestCallsToAStuckGuestEnd checks that a call the guest never answers
// ends with its caller's context, and by itself when the caller set no
// deadline.
func TestCallsToAStuckGuestEnd(t *testing.T) {
	sys := &stuckSystem{release: make(chan struct{})}
	t.Cleanup(sys.unstick)
	a := dial(t, hostAgentWith(t, sys))

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	if err := a.Freeze(ctx, false, time.Second); err == nil {
		t.Fatal("a freeze the guest never answered succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("a cancelled call returned after %v", d)
	}

	old := callTimeout
	callTimeout = 200 * time.Millisecond
	t.Cleanup(func() { callTimeout = old })
	done := make(chan error, 1)
	go func() { done <- a.Freeze(context.Background(), false, time.Second) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a freeze the guest never answered succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a call without a deadline of its own waited for the guest forever")
	}
	// The connection survives its abandoned calls.
	if _, err := a.Ping(context.Background()); err != nil {
		t.Fatalf("ping after abandoned calls: %v", err)
	}
}

// TestHandshakeWithAGuestThatStopsReading: a guest that answers the
// handshake but never reads again (its side of the socket fills up) must
// not hold the host past its deadline.
func TestHandshakeWithAGuestThatStopsReading(t *testing.T) {
	dir, err := os.MkdirTemp("", "gdh")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	testDone := make(chan struct{})
	guestDone := make(chan struct{})
	t.Cleanup(func() { close(testDone); <-guestDone })
	go func() {
		defer close(guestDone)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		word, nonce, err := agentproto.ScanLine(bufio.NewReader(c))
		if err != nil || word != agentproto.WordHello {
			return
		}
		time.Sleep(time.Second) // the host's padded HELLOs fill the socket
		c.Write(agentproto.Line(agentproto.WordReady, nonce))
		<-testDone // and never reads again
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		a, err := DialAgent(ctx, socket)
		if err == nil {
			a.Close()
		}
		done <- err
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the handshake outlived its deadline by far")
	}
}
