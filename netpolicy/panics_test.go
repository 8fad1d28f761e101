package netpolicy

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/contain"
	"github.com/gondolin/gondolin/internal/syncbuf"
	"github.com/gondolin/gondolin/netpolicy/netpolicytest"
	"github.com/miekg/dns"
)

// panicEvent returns the Failed event of a contained panic, if any.
func panicEvent(n *Network, proto string) (Event, bool) {
	for _, e := range n.Events() {
		if e.Proto == proto && e.Action == Failed && strings.Contains(e.Reason, "internal error") {
			return e, true
		}
	}
	return Event{}, false
}

// TestFlowPanic makes code serving one guest connection panic, on each
// kind of goroutine that serves one: the flow's own, the HTTP handler's,
// http.Transport's dial, a DNS query's. Each must cost that connection
// only (closed, logged with its stack, an event); the network and the
// process go on. Without containment the flow, dial and DNS cases crash
// the test binary.
func TestFlowPanic(t *testing.T) {
	var dnsPanics atomic.Int32
	testHookDNSQuery = func(m *dns.Msg) {
		if len(m.Question) > 0 && m.Question[0].Name == "boom-dns.test." && dnsPanics.Add(1) == 1 {
			panic("test: a query the parser chokes on")
		}
	}
	t.Cleanup(func() { testHookDNSQuery = nil }) // after the network's Close
	up := newUpstream(t, false, nil)
	var dialLookups atomic.Int32
	logs := &syncbuf.Buffer{}
	p := localPolicy("api.test", "boom-http.test", "boom-dial.test")
	p.TCPMaps = []TCPMap{{GuestHost: "db.test", GuestPort: 5432, Upstream: "boom-map.test:5432"}}
	n := newTestNetwork(t, p, func(o *Options) {
		o.Logger = slog.New(slog.NewTextHandler(logs, nil))
		o.OnPanic = func(pe *contain.PanicError) { t.Errorf("a flow's panic stopped the network: %v", pe) }
		o.LookupHost = func(ctx context.Context, host string) ([]netip.Addr, error) {
			switch host {
			case "boom-dial.test":
				if dialLookups.Add(1) == 1 { // the request's check; the dial panics
					return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
				}
				panic("test: a resolver answer the dialler chokes on")
			case "boom-http.test", "boom-map.test":
				panic("test: a name the resolver chokes on")
			}
			return nil, net.UnknownNetworkError("test resolver")
		}
	})
	g := newTestGuest(t, n)
	c := g.Client()
	c.Timeout = 10 * time.Second

	for _, tc := range []struct {
		name, proto string
		run         func(t *testing.T)
	}{
		{"TCP flow", "tcp", func(t *testing.T) {
			conn, err := g.Dial(context.Background(), "db.test:5432")
			if err != nil {
				return // reset before the guest's connect returned: closed too
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := conn.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "timeout") {
				t.Fatalf("flow not closed: %v", err)
			}
		}},
		{"HTTP handler", "http", func(t *testing.T) {
			resp, err := c.Get("http://boom-http.test/")
			if err == nil {
				resp.Body.Close()
				t.Fatalf("got %s, want the connection closed", resp.Status)
			}
		}},
		{"upstream dial", "http", func(t *testing.T) {
			status, _ := get(t, c, "http://boom-dial.test:"+up.port()+"/", nil)
			if status != http.StatusBadGateway {
				t.Fatalf("status %d, want 502", status)
			}
		}},
		{"DNS query", "dns", func(t *testing.T) {
			// The first try is dropped; the guest's retry is answered.
			if a, err := g.Lookup("boom-dns.test"); err != nil || !SyntheticPrefix.Contains(a) {
				t.Fatalf("%v %v", a, err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t)
			// The guest may see the close before the event is recorded
			// (the flow's deferred Close runs before its recover).
			deadline := time.Now().Add(5 * time.Second)
			for _, ok := panicEvent(n, tc.proto); !ok; _, ok = panicEvent(n, tc.proto) {
				if time.Now().After(deadline) {
					t.Fatalf("no %s event for the panic in %+v", tc.proto, n.Events())
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	if s := logs.String(); strings.Count(s, "level=ERROR") < 4 || !strings.Contains(s, "panics_test.go") {
		t.Errorf("panics not logged with their stacks:\n%s", s)
	}
	// The network serves on.
	if status, body := get(t, c, "http://api.test:"+up.port()+"/", nil); status != 200 || !strings.Contains(body, "hello") {
		t.Fatalf("after the panics: %d %q", status, body)
	}
}

// panicConn stands for a QEMU stream on which reading or writing a frame
// panics, as a parser bug hit by a guest's frame would.
type panicConn struct {
	net.Conn
	read, write bool
}

func (c *panicConn) Read(b []byte) (int, error) {
	if c.read {
		panic("test: a frame the stack chokes on")
	}
	return c.Conn.Read(b)
}

func (c *panicConn) Write(b []byte) (int, error) {
	if c.write {
		panic("test: a frame the writer chokes on")
	}
	return c.Conn.Write(b)
}

// TestLoopPanic makes a loop that serves the whole VM panic: the network
// must stop, its owner hear of it (OnPanic, which sessions turns into a
// broken session), and another VM's network go on.
func TestLoopPanic(t *testing.T) {
	for _, tc := range []struct {
		name  string
		where string
		conn  func(net.Conn) io.ReadWriteCloser
		poke  func(n *Network)
	}{
		{"frames from the guest", "the guest's frames",
			func(c net.Conn) io.ReadWriteCloser { return &panicConn{Conn: c, read: true} },
			func(*Network) {}},
		{"frames to the guest", "the frames to the guest",
			func(c net.Conn) io.ReadWriteCloser { return &panicConn{Conn: c, write: true} },
			func(n *Network) {
				// A SYN toward the guest makes the stack send a frame.
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				n.DialGuest(ctx, 80)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			panics := make(chan *contain.PanicError, 4)
			n := newTestNetwork(t, DefaultPolicy(), func(o *Options) {
				o.OnPanic = func(pe *contain.PanicError) { panics <- pe }
			})
			_, hc := netpolicytest.SocketPair(t)
			if err := n.Attach(tc.conn(hc)); err != nil {
				t.Fatal(err)
			}
			go tc.poke(n)
			select {
			case pe := <-panics:
				if pe.Where != tc.where || !strings.Contains(pe.Error(), "chokes") || len(pe.Stack) == 0 {
					t.Errorf("OnPanic got %q (%v)", pe.Where, pe)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("OnPanic not called")
			}
			deadline := time.Now().Add(5 * time.Second)
			for n.ctx.Err() == nil {
				if time.Now().After(deadline) {
					t.Fatal("the network was not closed")
				}
				time.Sleep(10 * time.Millisecond)
			}
			if _, hc2 := netpolicytest.SocketPair(t); n.Attach(hc2) == nil {
				t.Error("Attach works on the stopped network")
			}
			// Another VM's network is untouched.
			other := newTestNetwork(t, DefaultPolicy())
			g := newTestGuest(t, other)
			if a, err := g.Lookup("still.works.test"); err != nil || !SyntheticPrefix.Contains(a) {
				t.Fatalf("the other network: %v %v", a, err)
			}
		})
	}
}

// TestGoFlow covers the goroutines a flow starts (an SSH session, a
// mapped flow's copy): a panic closes what it is given and is an event.
func TestGoFlow(t *testing.T) {
	n := newTestNetwork(t, DefaultPolicy())
	c1, c2 := net.Pipe()
	defer c2.Close()
	n.goFlow("an SSH session", Event{Proto: "ssh", Host: "git.test"}, c1, func() { panic("test: a channel request") })
	c2.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c2.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read %v, want EOF (closed)", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if e, ok := panicEvent(n, "ssh"); ok {
			if e.Host != "git.test" || !strings.Contains(e.Reason, "a channel request") {
				t.Errorf("event %+v", e)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no event")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
