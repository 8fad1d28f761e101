package contain

import (
	"errors"
	"strings"
	"testing"
)

func TestRecover(t *testing.T) {
	got := make(chan *PanicError, 1)
	Go("the emulator", func(p *PanicError) { got <- p }, func() {
		var m map[string]int
		//lint:ignore SA5000 the panic is what this test needs
		m["x"] = 1 // a nil map write panics
	})
	p := <-got
	if !errors.Is(p, ErrPanic) || !strings.HasPrefix(p.Error(), "internal error in the emulator: assignment to entry in nil map") {
		t.Fatalf("%v", p)
	}
	if !strings.Contains(string(p.Stack), "contain_test.go") {
		t.Fatalf("the stack does not show where it panicked:\n%s", p.Stack)
	}
	if strings.Contains(p.Error(), "\n") {
		t.Fatalf("Error is not one line: %q", p.Error())
	}

	called := false
	func() {
		defer Recover("nothing", func(*PanicError) { called = true })
	}()
	if called {
		t.Fatal("onPanic called without a panic")
	}
}
