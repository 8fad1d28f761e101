package vm

import (
	"errors"
	"testing"

	"github.com/gondolin/gondolin/internal/contain"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// TestOutputPanicIsContained: a panic in what handles a guest process's
// output (a terminal emulator fed by OnOutput) ends that process's stream
// with an error instead of taking the host process down.
func TestOutputPanicIsContained(t *testing.T) {
	socket, _ := hostAgent(t)
	a := dial(t, socket)
	p, err := a.Start(t.Context(), Command{
		Exec:     agentproto.Exec{Argv: []string{"/bin/sh", "-c", "echo hi; sleep 30"}, TTY: true, Persistent: true},
		OnOutput: func(uint64, []byte) { panic("the emulator broke") },
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Wait()
	var pe *contain.PanicError
	if !errors.As(err, &pe) || !errors.Is(err, contain.ErrPanic) || pe.Value != "the emulator broke" {
		t.Fatalf("Wait: %v; want the contained panic", err)
	}
	if err := a.Signal(t.Context(), p.ID, 9); err != nil {
		t.Fatalf("the connection did not survive: %v", err)
	}
}
