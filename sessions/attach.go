package sessions

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/gondolin/gondolin/internal/termio"
)

// AttachResult says how an attached terminal session ended.
type AttachResult struct {
	Detached bool // the user typed the detach keys
	Exited   bool // the guest process exited, with ExitCode
	ExitCode int
}

// AttachTerminal joins the user's terminal (in, out) to a guest terminal
// until the user types detachKeys or the guest process exits: raw mode,
// window-size changes and a repaint of the current screen on arrival. It
// serves `gondolin attach` and the dashboard's full-screen attach.
func AttachTerminal(ctx context.Context, client *Client, ref string, pty uint64, detachKeys []byte, in, out *os.File) (AttachResult, error) {
	rows, cols := termio.Size(out)
	att, err := client.Attach(ctx, ref, pty, rows, cols)
	if err != nil {
		return AttachResult{}, err
	}
	defer att.Close()
	if termio.IsTerminal(in) {
		if restore, err := termio.MakeRaw(in); err == nil {
			defer restore()
		}
	}
	if termio.IsTerminal(out) {
		sizes, stop := termio.WatchSize(out)
		defer stop()
		go func() {
			for size := range sizes {
				att.Resize(size[0], size[1])
			}
		}()
	}
	detached := make(chan struct{})
	go func() {
		m := termio.NewDetachMatcher(detachKeys)
		buf := make([]byte, 4096)
		for {
			n, err := in.Read(buf)
			if n > 0 {
				forward, detach := m.Feed(buf[:n])
				if len(forward) > 0 && att.Input(forward) != nil {
					return
				}
				if detach {
					close(detached)
					att.Close()
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	outErr := att.Output(out)
	select {
	case <-detached:
		return AttachResult{Detached: true}, nil
	default:
	}
	if att.Exit != nil {
		return AttachResult{Exited: true, ExitCode: att.Exit.Code}, nil
	}
	if outErr == nil {
		outErr = errors.New("connection closed")
	}
	return AttachResult{}, fmt.Errorf("lost the connection to the supervisor (%v); the session keeps running: gondolin attach %s", outErr, ref)
}
