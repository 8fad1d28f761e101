package sessions

import (
	"log"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/syncbuf"
	"github.com/gondolin/gondolin/internal/testutil"
	"github.com/gondolin/gondolin/netpolicy"
)

// chokingStream is a VM's network stream on which reading a frame
// panics, as a bug hit by a hostile guest's frame would.
type chokingStream struct{ net.Conn }

func (chokingStream) Read([]byte) (int, error) { panic("test: a frame the stack chokes on") }

// A panic in the loop that serves a VM's whole network stops that
// network and marks its session broken, as one in its file server does;
// the supervisor goes on. Without containment the test binary crashes.
func TestNetworkPanicMarksSessionBroken(t *testing.T) {
	rt, sv, s, logs := panicSupervisor(t)

	n, err := rt.NewNetwork(netpolicy.DefaultPolicy(), sv.reg.dir(panicID))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	c1, c2 := net.Pipe()
	defer c2.Close()
	if err := n.Attach(chokingStream{c1}); err != nil {
		t.Fatal(err)
	}
	checkBroken(t, s, logs, "internal error in the guest's frames", "panic_test.go")
	// The network is stopped: the next stream is refused.
	testutil.WaitFor(t, 10*time.Second, "the network closed", func() bool {
		a, b := net.Pipe()
		err := n.Attach(a)
		a.Close()
		b.Close()
		return err != nil
	})
}

// panicID is the session of panicSupervisor.
const panicID = "0123456789ab"

// panicSupervisor makes a supervisor that logs into logs, with one
// session, s, that has no VM: enough for a part of a session to panic in.
func panicSupervisor(t *testing.T) (rt *Runtime, sv *Supervisor, s *session, logs *syncbuf.Buffer) {
	t.Helper()
	rt, err := NewRuntime(layout.Home(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	logs = &syncbuf.Buffer{}
	sv = NewSupervisor(rt, log.New(logs, "", 0))
	t.Cleanup(sv.Close)
	s = &session{sv: sv, rec: Record{ID: panicID}}
	sv.mu.Lock()
	sv.sessions[panicID] = s
	sv.mu.Unlock()
	return rt, sv, s, logs
}

// checkBroken waits for s to be marked broken for the reason why (with
// the way out, removing it, in the mark) and for the panic's stack, in
// file, to be in logs.
func checkBroken(t *testing.T, s *session, logs *syncbuf.Buffer, why, file string) {
	t.Helper()
	var broken string
	testutil.WaitFor(t, 10*time.Second, "the session marked broken", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		broken = s.broken
		return broken != ""
	})
	if !strings.Contains(broken, why) || !strings.Contains(broken, "gondolin rm -f "+panicID) {
		t.Errorf("broken: %q", broken)
	}
	if l := logs.String(); !strings.Contains(l, file) {
		t.Errorf("no stack of the panic in the log:\n%s", l)
	}
}
