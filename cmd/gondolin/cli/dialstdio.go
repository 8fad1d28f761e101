package cli

import (
	"context"
	"io"
	"net"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/gondolin/gondolin/contexts"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/sessions"
)

// newDialStdioCmd is what a context's ssh runs on the far host: the
// supervisor API of the user it runs as, on stdin and stdout. It serves
// that one socket and nothing else; ssh did the authentication.
func newDialStdioCmd() *cobra.Command {
	var noStart bool
	c := &cobra.Command{
		Use:   "dial-stdio [--no-start]",
		Short: "Carry this home's supervisor API on stdin and stdout (what gondolin contexts run over ssh)",
		Args:  noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			return dialStdio(noStart)
		},
	}
	c.Flags().BoolVar(&noStart, "no-start", false, "answer with an error instead of starting a supervisor")
	return c
}

func dialStdio(noStart bool) error {
	fail := func(err error) error {
		os.Stdout.WriteString(contexts.GreetingError(err))
		return &exitError{code: exitFailure} // said on stdout, to the far end
	}
	home, err := layout.DefaultHome()
	if err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	client, info, err := sessions.ConnectInfo(ctx, home, sessions.ConnectOptions{Start: !noStart})
	if err != nil {
		return fail(err)
	}
	client.Close() // its ping's connection: the splice below has one of its own
	conn, err := net.Dial("unix", home.SupervisorSocket())
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	if _, err := os.Stdout.WriteString(contexts.Greeting(buildVersion().Version, home.SupervisorSocket(), info.Instance)); err != nil {
		return err
	}
	answered := make(chan struct{})
	go func() {
		defer close(answered)
		io.Copy(os.Stdout, conn)
	}()
	inputEnded := make(chan struct{})
	go func() {
		defer close(inputEnded)
		io.Copy(conn, os.Stdin)
		conn.(*net.UnixConn).CloseWrite()
	}()
	// The supervisor closing is the end (it stopped: the client must
	// see that now). The client's end of input is the supervisor's: it
	// then answers what it was asked and closes. A client that went
	// away (ssh ends its input when its own caller dies) leaves nobody
	// to read a stream that never ends (events -f, logs -f, a
	// terminal), so waiting for the answer has the bound the client
	// gives its own close.
	select {
	case <-answered:
	case <-inputEnded:
		select {
		case <-answered:
		case <-time.After(contexts.CloseGrace):
		}
	}
	return nil
}
