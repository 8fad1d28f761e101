package vm

// These tests run twice: against the real guest agent running on the
// host (connected over a unix socket, fast, no VM), and against the agent
// in a real VM booted once for the whole package (skipped with -short).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/syncbuf"
	"github.com/gondolin/gondolin/internal/testutil"
	"github.com/gondolin/gondolin/vm/agent"
	"github.com/gondolin/gondolin/vm/agentproto"
)

type fakeSystem struct {
	mu     sync.Mutex
	setups []agentproto.Setup
}

func (f *fakeSystem) Setup(s *agentproto.Setup) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.setups = append(f.setups, *s)
	return nil
}
func (f *fakeSystem) Info() agentproto.Info {
	return agentproto.Info{Version: agentproto.Version, Kernel: "test"}
}
func (f *fakeSystem) Network(*agentproto.Network) error { return errors.New("no network here") }
func (f *fakeSystem) Mount(*agentproto.Mount) error     { return errors.New("no mounts here") }
func (f *fakeSystem) Freeze(*agentproto.Freeze) error   { return errors.New("no freezing here") }
func (f *fakeSystem) Sync() error                       { return nil }
func (f *fakeSystem) Shutdown() error                   { return errors.New("not in a VM") }

// hostAgent serves the agent on a unix socket and returns its path; every
// accepted connection is a new channel epoch, as QEMU's chardev gives.
func hostAgent(t *testing.T) (socket string, sys *fakeSystem) {
	t.Helper()
	sys = &fakeSystem{}
	return hostAgentWith(t, sys), sys
}

// hostAgentWith serves the agent with the given System.
func hostAgentWith(t *testing.T, sys agent.System) (socket string) {
	t.Helper()
	socket = filepath.Join(t.TempDir(), "agent.sock")
	ln := testutil.Listen(t, "unix", socket)
	srv := agent.NewServer(log.New(io.Discard, "", 0), sys)
	testutil.Serve(t, ln, func(c net.Conn) {
		defer c.Close()
		// The channel outlives each session, as a virtio port does:
		// serve it again until the host hangs up.
		for {
			if err := srv.ServeConn(keepOpen{c}); errors.Is(err, agentproto.ErrNoHandshake) || errors.Is(err, net.ErrClosed) {
				return
			}
		}
	})
	return socket
}

// keepOpen stops a session from closing the shared channel.
type keepOpen struct{ net.Conn }

func (keepOpen) Close() error { return nil }

// backend is a place the agent runs: on this host, or in a VM.
type backend struct {
	name string
	// connect returns a connection to the backend's agent; with fresh,
	// the previous connection is dropped first (a new host taking over).
	connect func(t *testing.T, fresh bool) *Agent
}

func backends(t *testing.T) []backend {
	host := backend{name: "host"}
	var socket string
	var current *Agent
	host.connect = func(t *testing.T, fresh bool) *Agent {
		if socket == "" {
			socket, _ = hostAgent(t)
		}
		if current == nil || fresh {
			current = dial(t, socket)
		}
		return current
	}
	return []backend{host, {name: "vm", connect: sharedVMAgent}}
}

// forEach runs f once per backend.
func forEach(t *testing.T, f func(t *testing.T, b backend)) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) { f(t, b) })
	}
}

func dial(t *testing.T, socket string) *Agent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := DialAgent(ctx, socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func run(t *testing.T, a *Agent, cmd Command) (stdout, stderr string, exit agentproto.ExitStatus, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	exit, err = a.Run(ctx, cmd)
	return out.String(), errb.String(), exit, err
}

func sh(script string) Command {
	return Command{Exec: agentproto.Exec{Argv: []string{"/bin/sh", "-c", script}}}
}

func TestAgentExec(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		a := b.connect(t, false)
		tests := []struct {
			name       string
			cmd        Command
			wantOut    string
			wantErr    string
			wantCode   int
			wantSignal int
		}{
			{name: "streams apart", cmd: sh("echo out; echo err >&2; exit 7"), wantOut: "out\n", wantErr: "err\n", wantCode: 7},
			{name: "signal exit", cmd: sh("kill -TERM $$"), wantCode: 128 + 15, wantSignal: 15},
			{name: "env and cwd", cmd: Command{Exec: agentproto.Exec{Argv: []string{"/bin/sh", "-c", "echo $FOO; pwd"}, Env: []string{"FOO=bar"}, Cwd: "/tmp"}}, wantOut: "bar\n/tmp\n"},
			{name: "stdin and EOF", cmd: Command{Exec: agentproto.Exec{Argv: []string{"/bin/sh", "-c", "cat; echo done"}}, Stdin: strings.NewReader("hi\n")}, wantOut: "hi\ndone\n"},
			{name: "no stdin reads EOF", cmd: sh("cat; echo $?"), wantOut: "0\n"},
			{name: "path lookup", cmd: Command{Exec: agentproto.Exec{Argv: []string{"echo", "a b"}}}, wantOut: "a b\n"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				out, errOut, exit, err := run(t, a, tt.cmd)
				if err != nil {
					t.Fatal(err)
				}
				if out != tt.wantOut || errOut != tt.wantErr || exit.Code != tt.wantCode || exit.Signal != tt.wantSignal {
					t.Fatalf("got out=%q err=%q exit=%+v; want out=%q err=%q code=%d signal=%d",
						out, errOut, exit, tt.wantOut, tt.wantErr, tt.wantCode, tt.wantSignal)
				}
			})
		}
	})
}

func TestAgentStartErrors(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		a := b.connect(t, false)
		notExec := fmt.Sprintf("/tmp/gd-notexec-%d", time.Now().UnixNano())
		if _, _, exit, err := run(t, a, sh("printf x > "+notExec+"; chmod 644 "+notExec)); err != nil || exit.Code != 0 {
			t.Fatalf("create %s: %+v %v", notExec, exit, err)
		}
		tests := []struct {
			name string
			exec agentproto.Exec
			code int
			msg  string
		}{
			{"not found", agentproto.Exec{Argv: []string{"no-such-command-xyz"}}, 127, "command not found"},
			{"not executable", agentproto.Exec{Argv: []string{notExec}}, 126, "permission denied"},
			{"missing cwd", agentproto.Exec{Argv: []string{"true"}, Cwd: "/no/such/dir"}, 126, "working directory"},
			{"empty argv", agentproto.Exec{}, 0, "empty command"},
			{"persistent without tty", agentproto.Exec{Argv: []string{"true"}, Persistent: true}, 0, "need a TTY"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				_, _, _, err := run(t, a, Command{Exec: tt.exec})
				if err == nil || !strings.Contains(err.Error(), tt.msg) {
					t.Fatalf("err = %v, want %q", err, tt.msg)
				}
				code, _ := StartError(err)
				if code != tt.code {
					t.Fatalf("code = %d, want %d", code, tt.code)
				}
			})
		}
	})
}

func TestAgentLargeOutputIntact(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		a := b.connect(t, false)
		h := sha256.New()
		var n int64
		cmd := sh("head -c 10485760 /dev/urandom | tee /dev/stderr | sha256sum")
		var digest bytes.Buffer
		cmd.Stdout = &digest
		cmd.Stderr = io.MultiWriter(h, countWriter(&n))
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		p, err := a.Start(ctx, cmd)
		if err != nil {
			t.Fatal(err)
		}
		if exit, err := p.Wait(); err != nil || exit.Code != 0 {
			t.Fatalf("exit %+v, %v", exit, err)
		}
		if n != 10<<20 {
			t.Fatalf("got %d bytes, want %d", n, 10<<20)
		}
		if got := fmt.Sprintf("%x", h.Sum(nil)); !strings.HasPrefix(digest.String(), got) {
			t.Fatalf("host sha256 %s, guest says %s", got, digest.String())
		}
	})
}

type counter struct{ n *int64 }

func (c counter) Write(p []byte) (int, error) { *c.n += int64(len(p)); return len(p), nil }
func countWriter(n *int64) io.Writer          { return counter{n} }

func TestAgentConcurrentExecs(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		a := b.connect(t, false)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, _, exit, err := run(t, a, sh(fmt.Sprintf("for j in 1 2 3 4 5; do echo %d-$j; done; exit %d", i, i)))
				want := ""
				for j := 1; j <= 5; j++ {
					want += fmt.Sprintf("%d-%d\n", i, j)
				}
				if err != nil || out != want || exit.Code != i {
					errs <- fmt.Errorf("exec %d: out=%q exit=%+v err=%v", i, out, exit, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func TestAgentSignalAndPTY(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		a := b.connect(t, false)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()

		t.Run("SIGINT reaches the process", func(t *testing.T) {
			var out syncbuf.Buffer
			p, err := a.Start(ctx, Command{Exec: agentproto.Exec{Argv: []string{"/bin/sh", "-c", "echo ready; exec sleep 30"}}, Stdout: &out})
			if err != nil {
				t.Fatal(err)
			}
			testutil.WaitFor(t, 10*time.Second, "ready from the process", func() bool { return strings.Contains(out.String(), "ready") })
			if err := p.Signal(ctx, int(syscall.SIGINT)); err != nil {
				t.Fatal(err)
			}
			exit, err := p.Wait()
			if err != nil || exit.Code != 130 || exit.Signal != 2 {
				t.Fatalf("exit %+v, %v; want 130", exit, err)
			}
		})

		t.Run("window size and resize", func(t *testing.T) {
			var out syncbuf.Buffer
			pr, pw := io.Pipe()
			defer pw.Close() // the stdin copier ends with its reader
			p, err := a.Start(ctx, Command{
				Exec:   agentproto.Exec{Argv: []string{"/bin/sh", "-c", "stty size; read x; stty size"}, TTY: true, Rows: 40, Cols: 100},
				Stdin:  pr,
				Stdout: &out,
			})
			if err != nil {
				t.Fatal(err)
			}
			testutil.WaitFor(t, 10*time.Second, "the first window size", func() bool { return strings.Contains(out.String(), "40 100") })
			if err := p.Resize(ctx, 50, 132); err != nil {
				t.Fatal(err)
			}
			pw.Write([]byte("\n"))
			exit, err := p.Wait()
			if err != nil || exit.Code != 0 {
				t.Fatalf("exit %+v, %v", exit, err)
			}
			if !strings.Contains(out.String(), "50 132") {
				t.Fatalf("output %q lacks the new size", out.String())
			}
		})
	})
}

func TestAgentSurvivesBadFrames(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		a := b.connect(t, false)
		ctx := context.Background()

		raw := func(payload []byte) string {
			st, err := a.sess.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			st.Write(payload)
			f, err := agentproto.ReadFrame(st, agentproto.MaxFrame)
			if err != nil {
				t.Fatalf("no reply: %v", err)
			}
			if f.Type != agentproto.FrameError {
				t.Fatalf("reply is %s, want error", f.Type)
			}
			return string(f.Payload)
		}
		oversized := make([]byte, 4)
		binary.BigEndian.PutUint32(oversized, agentproto.MaxFrame+1)
		var badJSON, unknownOp, wrongType bytes.Buffer
		agentproto.WriteFrame(&badJSON, agentproto.FrameRequest, []byte("{not json"))
		agentproto.WriteJSON(&unknownOp, agentproto.FrameRequest, agentproto.Request{Op: "format-disk"})
		agentproto.WriteFrame(&wrongType, agentproto.FrameStdout, []byte("x"))
		for name, payload := range map[string][]byte{
			"oversized":  oversized,
			"bad json":   badJSON.Bytes(),
			"unknown op": unknownOp.Bytes(),
			"wrong type": wrongType.Bytes(),
		} {
			if msg := raw(payload); !strings.Contains(msg, "bad request") {
				t.Errorf("%s: reply %s", name, msg)
			}
		}
		if _, err := a.Ping(ctx); err != nil {
			t.Fatalf("agent stopped serving: %v", err)
		}
		if err := a.Signal(ctx, 999, 9); err == nil || !strings.Contains(err.Error(), "no process 999") {
			t.Fatalf("signal to unknown process: %v", err)
		}
	})
}

// TestAgentResyncAfterDeadHost checks the handshake on one channel that a
// host abandoned in the middle of a frame, without the guest seeing EOF:
// the next host's handshake must still get through.
func TestAgentResyncAfterDeadHost(t *testing.T) {
	socket, sys := hostAgent(t)
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Host 1: a bare handshake, then half of a yamux frame.
	nonce := agentproto.NewNonce()
	conn.Write(agentproto.Line(agentproto.WordHello, nonce))
	buf := make([]byte, 256)
	n, _ := io.ReadAtLeast(conn, buf, len(agentproto.Line(agentproto.WordReady, nonce)))
	if !bytes.Contains(buf[:n], []byte("READY "+nonce)) {
		t.Fatalf("host 1 got %q", buf[:n])
	}
	conn.Write(agentproto.Line(agentproto.WordGo, nonce))
	// yamux header: version 0, type data, flags SYN, stream 1, length 30000.
	hdr := []byte{0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0x75, 0x30}
	conn.Write(append(hdr, bytes.Repeat([]byte("x"), 100)...))

	// Host 2 on the same channel.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := Handshake(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.Setup(ctx, agentproto.Setup{Hostname: "second"}); err != nil {
		t.Fatal(err)
	}
	out, _, _, err := run(t, a, sh("echo alive"))
	if err != nil || out != "alive\n" {
		t.Fatalf("after resync: %q, %v", out, err)
	}
	sys.mu.Lock()
	defer sys.mu.Unlock()
	if len(sys.setups) != 1 || sys.setups[0].Hostname != "second" || len(sys.setups[0].Seed) == 0 {
		t.Fatalf("setups %+v", sys.setups)
	}
}

func TestAgentPersistentOutputSurvivesHost(t *testing.T) {
	socket, _ := hostAgent(t)
	a := dial(t, socket)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	persistentOutputSurvivesHost(t, ctx, a, func() *Agent {
		a.Close() // the host goes away; the process must not
		b := dial(t, socket)
		procs, err := b.Processes(ctx)
		if err != nil || len(procs) != 1 || !procs[0].Running {
			t.Fatalf("processes after reconnect: %+v, %v", procs, err)
		}
		return b
	})
}

// persistentOutputSurvivesHost starts a persistent process on a that
// prints, waits for input and prints again; then takeOver gives the agent
// a new host, which must find the process, feed it, and replay all its
// output from the start.
func persistentOutputSurvivesHost(t *testing.T, ctx context.Context, a *Agent, takeOver func() *Agent) {
	t.Helper()
	var first syncbuf.Buffer
	p, err := a.Start(ctx, Command{
		Exec:   agentproto.Exec{Argv: []string{"/bin/sh", "-c", "echo one; read x; echo two"}, TTY: true, Persistent: true},
		Stdout: &first,
	})
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "the first line", func() bool { return strings.Contains(first.String(), "one") })
	b := takeOver()
	in, err := b.OpenStdin(ctx, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	in.Write([]byte("go\n"))
	var all syncbuf.Buffer
	var offsets []uint64
	q, err := b.Attach(ctx, p.ID, 0, Command{OnOutput: func(off uint64, data []byte) {
		offsets = append(offsets, off)
		all.Write(data)
	}})
	if err != nil {
		t.Fatal(err)
	}
	exit, err := q.Wait()
	if err != nil || exit.Code != 0 {
		t.Fatalf("exit %+v, %v", exit, err)
	}
	if s := all.String(); !strings.Contains(s, "one") || !strings.Contains(s, "two") {
		t.Fatalf("replayed output %q", s)
	}
	if offsets[0] != 0 {
		t.Fatalf("first offset %d, want 0", offsets[0])
	}
}

// TestAgentBackgroundChildDoesNotHang checks that a command which leaves a
// background process holding its output ends when the command does.
func TestAgentBackgroundChildDoesNotHang(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		a := b.connect(t, false)
		for _, tty := range []bool{false, true} {
			start := time.Now()
			_, _, exit, err := run(t, a, Command{Exec: agentproto.Exec{Argv: []string{"/bin/sh", "-c", "sleep 30 & echo started"}, TTY: tty}})
			if err != nil || exit.Code != 0 {
				t.Fatalf("tty=%v: exit %+v, %v", tty, exit, err)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Fatalf("tty=%v: took %v", tty, d)
			}
		}
	})
}

// TestAgentQuickCommandWithStdin: a command that exits before its stdin
// stream is attached must not fail the exec.
func TestAgentQuickCommandWithStdin(t *testing.T) {
	forEach(t, func(t *testing.T, b backend) {
		a := b.connect(t, false)
		for i := range 20 {
			out, _, exit, err := run(t, a, Command{Exec: agentproto.Exec{Argv: []string{"/bin/sh", "-c", "echo quick"}}, Stdin: strings.NewReader("unread")})
			if err != nil || exit.Code != 0 || out != "quick\n" {
				t.Fatalf("run %d: %q %+v %v", i, out, exit, err)
			}
		}
	})
}
