package cli

import (
	"reflect"
	"testing"
	"time"

	"github.com/gondolin/gondolin/sessions"
)

// TestSafeCopy: what a template prints of a session holds no control
// character, wherever in it a guest put one, and the original is left
// as it was.
func TestSafeCopy(t *testing.T) {
	evil := "x\x1b]52;c;cHduZWQ=\x07\nfake line\u0085"
	s := sessions.Session{ID: "abc", Reason: evil, Errors: []string{evil}, Created: time.Unix(1, 0),
		Spec: sessions.Spec{Env: []string{evil}}, PTYs: []sessions.PTY{{Argv: []string{evil}}}}
	got := safeCopy(reflect.ValueOf(s)).Interface().(sessions.Session)
	for _, f := range []string{got.Reason, got.Errors[0], got.Spec.Env[0], got.PTYs[0].Argv[0]} {
		if f != `x\x1b]52;c;cHduZWQ=\x07\x0afake line\x85` {
			t.Errorf("field %q still holds control characters", f)
		}
	}
	if got.ID != "abc" || !got.Created.Equal(s.Created) {
		t.Errorf("safe fields changed: %+v", got)
	}
	if s.Reason != evil || s.Errors[0] != evil || s.PTYs[0].Argv[0] != evil {
		t.Errorf("the original was changed")
	}
}
