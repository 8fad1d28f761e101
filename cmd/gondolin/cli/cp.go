package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/gondolin/gondolin/cptar"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/termio"
	"github.com/gondolin/gondolin/internal/termsafe"
	"github.com/gondolin/gondolin/sessions"
)

func newCpCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "cp SRC DEST",
		Short: "Copy files and directories between the host and a session",
		Long: `Copy a file, a symlink or a directory tree into or out of a running
session, through its agent (no mount needed), keeping modes and times.
One side is SESSION:PATH (a session's name, ID or ID prefix; a relative
PATH is relative to the session's $HOME, /root as a rule), the other a
host path:

  gondolin cp ./src dev:/work            ./src becomes /work/src (or /work,
                                         if /work does not exist)
  gondolin cp ./src/. dev:/work          the contents of ./src into /work
  gondolin cp dev:/var/log/app.log .     a file out
  tar -c . | gondolin cp - dev:/work     a tar stream, extracted into /work
  gondolin cp dev:/etc - | tar -t        a tar stream of /etc, on stdout

As with docker cp, when DEST is a directory the source goes into it
under its own name; otherwise it is copied to that name, whose parent
must exist. Owners are not copied: copies belong to the user who writes
them. Copying out, the guest's stream is unpacked inside DEST only (never
through a symlink); setuid, setgid and sticky bits are dropped, and device
nodes, fifos, sockets and sparse files are skipped, each with a note on
stderr. A stream that breaks off is an error; what was written stays.`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usageError("cp needs a source and a destination: gondolin cp SRC DEST (one of them SESSION:PATH)")
			}
			src, dst := parseCpOperand(args[0]), parseCpOperand(args[1])
			switch {
			case src.session != "" && dst.session != "":
				return usageError("cp copies between the host and a session, not between two sessions")
			case src.session == "" && dst.session == "":
				return usageError("cp copies between the host and a session: name the session's side as SESSION:PATH")
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			src, dst := parseCpOperand(args[0]), parseCpOperand(args[1])
			switch {
			case src.session != "":
				return copyOut(src, dst.path)
			}
			return copyIn(src.path, dst)
		},
	}
}

// cpOperand is one side of a copy: a host path ("-": stdin or stdout)
// or a path in a session.
type cpOperand struct {
	session, path string
}

// parseCpOperand reads SESSION:PATH, as docker cp does: a colon makes a
// session's path unless a slash comes before it (./a:b is a host file).
func parseCpOperand(s string) cpOperand {
	i := strings.IndexByte(s, ':')
	if i <= 0 || strings.Contains(s[:i], "/") {
		return cpOperand{path: s}
	}
	p := s[i+1:]
	if p == "" {
		p = "." // scp's host: is the home directory
	}
	return cpOperand{session: s[:i], path: p}
}

// errCopyEnded stops the packing of a stream the guest no longer reads.
var errCopyEnded = errors.New("the copy ended")

// copyIn packs a host path (or takes a tar stream from stdin) and has the
// session's agent unpack it.
func copyIn(src string, dst cpOperand) error {
	var (
		stdin    io.Reader
		kind     = cptar.KindTar
		base     string
		packErr  = make(chan error, 1)
		stopPack = func() {}
	)
	if src == "-" {
		if termio.IsTerminal(os.Stdin) {
			return usageError("cp - reads a tar stream from stdin, which is a terminal (pipe one in: tar -c . | gondolin cp - %s:%s)", dst.session, dst.path)
		}
		stdin = os.Stdin
		packErr <- nil
	} else {
		var contents bool
		base, contents = cptar.SourceName(src)
		kind = cptar.KindEntry
		if contents {
			kind = cptar.KindContents
		}
		stat := os.Lstat
		if contents || strings.HasSuffix(src, "/") {
			stat = os.Stat
		}
		if _, err := stat(src); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return errdefs.Errorf(errdefs.ErrNotFound, "no such file or directory: %s", src)
			}
			return err
		}
		if abs, _ := filepath.Abs(src); !contents && abs == "/" {
			return usageError("cp cannot copy / itself (copy its contents with /. or name what is below it)")
		}
		pr, pw := io.Pipe()
		stdin = pr
		stopPack = func() { pr.CloseWithError(errCopyEnded) }
		go func() {
			err := cptar.Write(pw, src, base, func(name, why string) {
				fmt.Fprintf(os.Stderr, "gondolin: skipped %s: %s\n", termsafe.String(name), termsafe.String(why)) // why may quote a name
			})
			packErr <- err
			pw.CloseWithError(err)
		}()
	}
	client, err := dialSupervisor(true)
	if err != nil {
		return err
	}
	kill := make(chan int, 1)
	guestErr := &agentNotes{kill: kill}
	ready := &readyGate{ready: make(chan struct{}), ended: make(chan struct{}), r: stdin}
	req := sessions.ExecRequest{Argv: []string{cptar.AgentPath, cptar.CopyInArg, string(kind), dst.path, base}}
	code, err := client.Exec(context.Background(), dst.session, req, sessions.ExecStreams{
		Stdin: ready, Stdout: ready, Stderr: guestErr, Signals: kill,
	})
	close(ready.ended)
	if err != nil {
		return err
	}
	// A host file that could not be read cut the stream short: that is
	// the error to tell, not the guest's "unexpected EOF".
	stopPack()
	if err := <-packErr; err != nil && !errors.Is(err, errCopyEnded) && !guestErr.tooOld {
		return fmt.Errorf("copy %s into session %s: %w", src, dst.session, err)
	}
	return guestErr.result(code, dst, "into")
}

// readyGate holds the stream back until the agent's cp-in says it takes
// it (cptar.ReadyLine on its stdout). Stdin queued behind a command that
// never reads it would hold up the signal that stops that command: the
// exec stream carries both in order.
type readyGate struct {
	r         io.Reader
	ready     chan struct{} // closed when the agent said it is ready
	ended     chan struct{} // closed when the command has ended
	said      []byte
	saidReady bool
}

func (g *readyGate) Read(p []byte) (int, error) {
	select {
	case <-g.ready:
		return g.r.Read(p)
	case <-g.ended:
		return 0, errCopyEnded
	}
}

// Write takes the agent's stdout: the ready line, and nothing else.
func (g *readyGate) Write(p []byte) (int, error) {
	if !g.saidReady && len(g.said) < len(cptar.ReadyLine) {
		g.said = append(g.said, p[:min(len(p), len(cptar.ReadyLine)-len(g.said))]...)
		if string(g.said) == cptar.ReadyLine {
			g.saidReady = true
			close(g.ready)
		}
	}
	return len(p), nil
}

// copyOut has the session's agent pack a path and unpacks it here (or
// writes the stream to stdout).
func copyOut(src cpOperand, dst string) error {
	base, contents := path.Base(path.Clean(src.path)), strings.HasSuffix(src.path, "/.") || src.path == "."
	if !contents && (base == "/" || base == "." || base == "..") {
		return usageError("cp cannot tell what to name %s:%s; name it by its path (or copy its contents with %s/.)", src.session, src.path, strings.TrimSuffix(src.path, "/"))
	}
	var stdout io.Writer = os.Stdout
	var extract func() error
	kill := make(chan int, 2)
	killed := false // after a whole archive, for what followed it
	if dst == "-" {
		if termio.IsTerminal(os.Stdout) {
			return usageError("cp %s:%s - writes a tar stream, not to a terminal (pipe it: ... - | tar -t)", src.session, src.path)
		}
	} else {
		kind := cptar.KindEntry
		if contents {
			kind = cptar.KindContents
		}
		dir, name, err := cptar.Destination(dst, base, kind)
		if errors.Is(err, fs.ErrNotExist) {
			return errdefs.Errorf(errdefs.ErrNotFound, "%w", err)
		}
		if err != nil {
			return err
		}
		root, err := os.OpenRoot(dir)
		if err != nil {
			return err
		}
		defer root.Close()
		pr, pw := io.Pipe()
		stdout = pw
		done := make(chan error, 1)
		go func() {
			// The guest wrote this stream: Extract keeps it inside
			// root, with no setuid bit and no device.
			err := cptar.Extract(pr, root, cptar.Options{Name: name, Skipped: func(name, why string) {
				fmt.Fprintf(os.Stderr, "gondolin: skipped %s: %s\n", termsafe.String(name), termsafe.String(why)) // why may quote a name
			}})
			if err != nil {
				// Stop the guest's command rather than read the rest.
				pr.CloseWithError(err)
				kill <- int(syscall.SIGKILL)
			} else if n, _ := io.CopyN(io.Discard, pr, maxTrailer+1); n > maxTrailer {
				// The archive is whole; what follows it is a guest
				// that would keep this command waiting.
				pr.CloseWithError(errCopyEnded)
				killed = true
				kill <- int(syscall.SIGKILL)
			}
			done <- err
		}()
		extract = func() error {
			pw.Close()
			return <-done
		}
	}
	client, err := dialSupervisor(true)
	if err != nil {
		return err
	}
	guestErr := &agentNotes{kill: kill}
	req := sessions.ExecRequest{Argv: []string{cptar.AgentPath, cptar.CopyOutArg, src.path}}
	code, err := client.Exec(context.Background(), src.session, req, sessions.ExecStreams{
		Stdout: stdout, Stderr: guestErr, Signals: kill,
	})
	var xerr error
	if extract != nil {
		xerr = extract()
	}
	if err != nil {
		return err
	}
	// The guest's own failure explains a cut stream better, unless the
	// stream failed first and this command killed the guest's side.
	if xerr != nil && !guestErr.tooOld && (code == 0 || code == 128+int(syscall.SIGKILL)) {
		return fmt.Errorf("copy %s:%s: %w (what was written before stays)", src.session, src.path, xerr)
	}
	if killed && !guestErr.tooOld {
		return nil
	}
	return guestErr.result(code, src, "from")
}

// maxTrailer is how much copy out reads after the end of an archive
// before it stops the guest's side: the agent writes nothing there.
const maxTrailer = 1 << 20

// agentNotes takes the stderr of the agent's cp-in or cp-out: notes
// (skipped files) it passes on, line by line, and the last line, which
// is the error when the agent fails. The guest wrote it: it is printed
// sanitized, and a line is cut at maxNote bytes.
type agentNotes struct {
	line    []byte
	last    string
	hasLast bool
	// kill, when set, stops the agent's command: an agent built before
	// gondolin cp does not know its words and would run as a second
	// agent, looking for its port forever.
	kill   chan<- int
	tooOld bool
}

// oldAgentLine starts what an agent from before gondolin cp prints, every
// 200 ms, when run as a command: the port it looks for is PID 1's.
const oldAgentLine = "gondolin-agent: open channel:"

const maxNote = 4096

func (a *agentNotes) Write(p []byte) (int, error) {
	for _, b := range p {
		if b != '\n' {
			if len(a.line) < maxNote {
				a.line = append(a.line, b)
			}
			continue
		}
		a.push(string(a.line))
		a.line = a.line[:0]
	}
	return len(p), nil
}

// push prints the line held back and holds back line.
func (a *agentNotes) push(line string) {
	if strings.HasPrefix(line, oldAgentLine) {
		if !a.tooOld && a.kill != nil {
			a.kill <- int(syscall.SIGKILL)
		}
		a.tooOld = true
		return
	}
	if a.hasLast {
		fmt.Fprintf(os.Stderr, "gondolin: %s\n", termsafe.String(a.last))
	}
	a.last, a.hasLast = line, true
}

// result is the copy's outcome from the agent's exit code.
func (a *agentNotes) result(code int, in cpOperand, dir string) error {
	if len(bytes.TrimSpace(a.line)) > 0 {
		a.push(string(a.line))
	}
	if a.tooOld {
		return errdefs.Errorf(errdefs.ErrUnavailable, "session %s runs an agent from before gondolin cp: recreate it (its image is rebuilt by: gondolin image build)", in.session)
	}
	if code == 0 {
		a.push("")
		return nil
	}
	msg := strings.TrimSpace(a.last)
	if msg == "" {
		msg = fmt.Sprintf("the agent exited with code %d", code)
	}
	if code == cptar.ExitNotFound {
		return errdefs.Errorf(errdefs.ErrNotFound, "copy %s session %s: %s", dir, in.session, msg)
	}
	return fmt.Errorf("copy %s session %s: %s", dir, in.session, msg)
}
