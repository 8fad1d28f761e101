package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/progress"
	"github.com/gondolin/gondolin/internal/termio"
	"github.com/gondolin/gondolin/internal/termsafe"
	"github.com/gondolin/gondolin/sessions"
	"github.com/spf13/cobra"
)

func newExecCmd() *cobra.Command {
	var (
		vf          vmFlags
		interactive bool
		tty         bool
		timeout     time.Duration
		session     string
		resume      string
	)
	c := &cobra.Command{
		Use:   "exec [flags] -- CMD [ARGS...]",
		Short: "Run a command in a fresh disposable VM (or in a session)",
		Long: `Run a command in a fresh VM, stream its stdout and stderr, and exit with
its exit code (128+N when signal N killed it; 125 when gondolin failed;
2 for bad usage). The VM is destroyed afterwards. With --session, run it
in that session's VM instead.

stdin is forwarded when it is a pipe or a file, or with -i. -t runs the
command on a terminal (and forwards the keyboard when stdin is one).`,
		Example: `  gondolin exec -- uname -a
  echo hi | gondolin exec -- cat
  gondolin exec -t -- bash
  gondolin exec --cpus 2 --memory 1G --mount-hostfs .:/work --cwd /work -- make test
  gondolin exec --allow-host api.github.com --host-secret GITHUB_TOKEN@api.github.com -- ./deploy.sh
  gondolin exec --no-network --mount-hostfs ./src:/src:ro -- ./untrusted-build
  gondolin exec --session dev -- git status`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError("exec needs a command: gondolin exec [flags] -- CMD [ARGS...]")
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			if err := vf.checkCommand(args); err != nil {
				return err
			}
			if session != "" {
				if timeout > 0 || resume != "" {
					return usageError("--timeout and --resume do not go with --session")
				}
				if given := newVMOnly(c.Flags()); len(given) > 0 {
					verb := "applies"
					if len(given) > 1 {
						verb = "apply"
					}
					return usageError("%s %s to new VMs, not to --session %s (change a running session's network with gondolin policy)", strings.Join(given, ", "), verb, session)
				}
			}
			if session != "" {
				// Only --env and --cwd apply: the VM's shape (and
				// GONDOLIN_CPUS, GONDOLIN_MEMORY) is the session's.
				spec := &sessions.Spec{Env: vf.Env, Cwd: vf.Cwd}
				if err := spec.Validate(); err != nil {
					return err
				}
				term := setupTerminal(tty, interactive)
				defer term.restore()
				return execInSession(session, spec, args, term)
			}
			spec, err := vf.spec()
			if err != nil {
				return err
			}
			term := setupTerminal(tty, interactive)
			defer term.restore()
			// A one-shot exec runs in a VM the supervisor makes, from its
			// warm pool when it holds one; --cold, --resume, a home
			// without a supervisor and GONDOLIN_DEBUG (which shows the
			// VM's console here) run the VM in this process.
			if _, err := selectedContext(); err != nil {
				return err // an unknown context: nowhere to run
			}
			if remote() {
				// The VM runs where the context's supervisor is; nothing
				// of it can run in this process.
				if spec.Cold || resume != "" {
					return usageError("--cold and --resume run the VM in exec's own process: not through a context on another machine (use bash --resume there, or --context default)")
				}
				code, served, err := execThroughSupervisor(spec, args, term, tty, timeout)
				if !served {
					err = errdefs.Errorf(errdefs.ErrUnavailable, "the supervisor of this context cannot run a one-shot exec (is its gondolin older?)")
				}
				return exitWith(code, err)
			}
			if !spec.Cold && resume == "" && os.Getenv(layout.EnvNoSupervisor) == "" && os.Getenv(layout.EnvDebug) == "" {
				if code, served, err := execThroughSupervisor(spec, args, term, tty, timeout); served {
					return exitWith(code, err)
				}
			}
			rt, err := runtime()
			if err != nil {
				return err
			}
			rt.Status = progress.NewStatus(os.Stderr)
			// A template that broke is rebuilt by the supervisor (started
			// if need be) while this command runs on a cold-booted VM.
			var rebuild chan struct{}
			rt.RebuildTemplate = func(spec sessions.Spec) {
				rebuild = make(chan struct{})
				go func() {
					defer close(rebuild)
					if client, err := dialSupervisor(true); err == nil {
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						defer cancel()
						client.RebuildTemplate(ctx, spec)
					}
				}()
			}
			eio := sessions.ExecIO{
				Stdin: term.stdin, Stdout: os.Stdout, Stderr: os.Stderr, Timeout: timeout,
				TTY: tty, Rows: term.rows, Cols: term.cols, Resizes: term.resizes,
				Signals: forwardSignals(), Resume: resume,
			}
			code, err := rt.Exec(context.Background(), spec, args, eio)
			if rebuild != nil {
				// The request is answered at once; a supervisor that is
				// slow to start is not waited for long (the next run
				// would build the template itself), and Ctrl-C works
				// again meanwhile.
				signal.Reset(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
				select {
				case <-rebuild:
				case <-time.After(rebuildWait):
				}
			}
			return exitWith(code, err)
		},
	}
	c.Flags().SetInterspersed(false)
	vf.register(c.Flags())
	c.Flags().BoolVarP(&interactive, "interactive", "i", false, "forward stdin even when it is a terminal")
	c.Flags().BoolVarP(&tty, "tty", "t", false, "run the command on a pseudo-terminal")
	c.Flags().DurationVar(&timeout, "timeout", 0, "send SIGTERM after this long, SIGKILL 2s later (e.g. 30s, 5m)")
	c.Flags().StringVar(&resume, "resume", "", "run in a VM resumed from this snapshot (ID, name, or .qcow2 path); one this home did not make boots as a disk checkpoint with only this command's mounts and network policy")
	c.Flags().StringVar(&session, "session", "", "run in this session (ID, prefix or name) instead of a fresh VM")
	setGroup(c.Flags(), groupCommand, "interactive", "tty", "timeout", "resume", "session")
	groupedHelp(c, append(vmEnv, envVar{layout.EnvNoSupervisor, "run the VM in exec's own process; never start a supervisor"}))
	return c
}

// execThroughSupervisor is a one-shot exec in a VM the supervisor makes
// and destroys. served is false when no supervisor can serve it (none could
// be started, or an older one runs): the caller then runs the VM itself.
func execThroughSupervisor(spec *sessions.Spec, args []string, term *terminal, tty bool, timeout time.Duration) (code int, served bool, err error) {
	client, info, err := dialSupervisorInfo(true)
	if errors.Is(err, errdefs.ErrInvalid) || err != nil && remote() {
		return 0, true, err // a bad GONDOLIN_POOL, or an unreachable context: the user's to fix
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "gondolin: %v; running the VM in this process\n", err)
		return 0, false, nil
	}
	// The VM's network is the supervisor's process's: one in another
	// network namespace (this command runs in a container or `ip netns
	// exec`) would reach other hosts than this command can, and one with
	// another accelerator setting would boot another way. (A context's
	// supervisor is on another machine: its network is that machine's.)
	if own := sessions.OwnPingInfo(); !remote() && (info.NetNS != own.NetNS || info.Accel != own.Accel) {
		return 0, false, nil
	}
	// The supervisor's environment is not this command's: the image this
	// command would use by default goes with the request.
	if spec.Image == "" {
		spec.Image = cmp.Or(os.Getenv(layout.EnvDefaultImage), layout.DefaultImage)
	}
	req := sessions.RunRequest{Spec: *spec, Argv: args, TTY: tty, Rows: term.rows, Cols: term.cols,
		SecretValues: spec.SecretValues()}
	if timeout > 0 {
		req.TimeoutMS = max(1, timeout.Milliseconds())
	}
	if spec.Policy != nil {
		req.SSHPassphrases = spec.Policy.SSHPassphrases()
	}
	status := progress.NewStatus(os.Stderr)
	defer status.Clear()
	code, err = client.Run(context.Background(), req, sessions.ExecStreams{
		Stdin: term.stdin, Stdout: os.Stdout, Stderr: os.Stderr, Signals: forwardSignalNumbers(), Resizes: term.resizes,
		Status: func(msg string) {
			if msg == "" {
				status.Clear()
			} else {
				status.Show(termsafe.String(msg)) // the supervisor's words, maybe another machine's
			}
		},
		Notice: func(msg string) {
			status.Clear()
			fmt.Fprintln(os.Stderr, termsafe.String(msg))
		},
	})
	if errors.Is(err, sessions.ErrNoOneShot) {
		return 0, false, nil
	}
	return code, true, err
}

// forwardSignalNumbers is forwardSignals for the supervisor's API.
func forwardSignalNumbers() <-chan int {
	sigs := make(chan int, 4)
	go func() {
		for s := range forwardSignals() {
			sigs <- int(s)
		}
	}()
	return sigs
}

// execInSession is exec --session: the same stdio and exit codes as a
// one-shot exec, in an existing session.
func execInSession(ref string, spec *sessions.Spec, args []string, term *terminal) error {
	client, err := dialSupervisor(true)
	if err != nil {
		return err
	}
	req := sessions.ExecRequest{Argv: args, Env: spec.Env, Cwd: spec.Cwd, TTY: term.rows > 0, Rows: term.rows, Cols: term.cols}
	code, err := client.Exec(context.Background(), ref, req, sessions.ExecStreams{
		Stdin: term.stdin, Stdout: os.Stdout, Stderr: os.Stderr, Signals: forwardSignalNumbers(), Resizes: term.resizes,
	})
	return exitWith(code, err)
}

// rebuildWait bounds how long exec waits, after its command, for its
// request that the supervisor rebuild a broken template.
const rebuildWait = 3 * time.Second

// exitWith turns a guest command's outcome into gondolin's exit.
func exitWith(code int, err error) error {
	if err != nil && code == 0 {
		return err
	}
	if err != nil { // the command could not start: 126 or 127
		return &exitError{code: code, err: err}
	}
	return &exitError{code: code}
}

// terminal is how exec connects the user's terminal to a guest command.
type terminal struct {
	stdin      io.Reader
	rows, cols uint16
	resizes    <-chan [2]uint16
	undo       []func()
}

// setupTerminal decides what exec forwards: stdin when it is a pipe or a
// file, or with -i, or with -t on a terminal (raw, with size changes).
func setupTerminal(tty, interactive bool) *terminal {
	t := &terminal{}
	stdinTTY := termio.IsTerminal(os.Stdin)
	if interactive || !stdinTTY || (tty && stdinTTY) {
		t.stdin = os.Stdin
	}
	if !tty {
		return t
	}
	t.rows, t.cols = termio.Size(os.Stdout)
	if termio.IsTerminal(os.Stdout) {
		sizes, stop := termio.WatchSize(os.Stdout)
		t.resizes = sizes
		t.undo = append(t.undo, stop)
	}
	if stdinTTY {
		if restore, err := termio.MakeRaw(os.Stdin); err == nil {
			t.undo = append(t.undo, restore)
		}
	}
	return t
}

func (t *terminal) restore() {
	for i := len(t.undo) - 1; i >= 0; i-- {
		t.undo[i]()
	}
}

// forwardSignals relays the signals a user sends to gondolin (Ctrl-C,
// kill, a closed terminal) to the guest command instead of dying.
func forwardSignals() <-chan syscall.Signal {
	in := make(chan os.Signal, 4)
	out := make(chan syscall.Signal, 4)
	signal.Notify(in, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	go func() {
		for s := range in {
			out <- s.(syscall.Signal)
		}
	}()
	return out
}
