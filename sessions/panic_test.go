package sessions

import (
	"log"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/syncbuf"
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
	home := layout.Home(t.TempDir())
	rt, err := NewRuntime(home)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncbuf.Buffer{}
	sv := NewSupervisor(rt, log.New(logs, "", 0))
	defer sv.Close()
	const id = "0123456789ab"
	s := &session{sv: sv, rec: Record{ID: id}}
	sv.mu.Lock()
	sv.sessions[id] = s
	sv.mu.Unlock()

	n, err := rt.NewNetwork(netpolicy.DefaultPolicy(), sv.reg.dir(id))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	c1, c2 := net.Pipe()
	defer c2.Close()
	if err := n.Attach(chokingStream{c1}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		broken := s.broken
		s.mu.Unlock()
		if broken != "" {
			if !strings.Contains(broken, "internal error in the guest's frames") || !strings.Contains(broken, "gondolin rm -f "+id) {
				t.Errorf("broken: %q", broken)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the session was not marked broken")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if l := logs.String(); !strings.Contains(l, "panic_test.go") {
		t.Errorf("no stack in the log:\n%s", l)
	}
	// The network is stopped: the next stream is refused.
	for {
		a, b := net.Pipe()
		err := n.Attach(a)
		a.Close()
		b.Close()
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the network was not closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
