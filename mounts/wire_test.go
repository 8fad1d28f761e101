package mounts

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gondolin/gondolin/mounts/fsproto"
	"golang.org/x/sys/unix"
)

// rawGuest is a guest that speaks the wire format by hand.
type rawGuest struct {
	t    *testing.T
	conn net.Conn
	fr   *fsproto.FrameReader
}

func newRawGuest(t *testing.T, s *Server) *rawGuest {
	g, fr, served := connectGuest(t, s)
	t.Cleanup(func() { g.Close(); <-served })
	return &rawGuest{t: t, conn: g, fr: fr}
}

func (g *rawGuest) send(b []byte) {
	g.t.Helper()
	if _, err := g.conn.Write(b); err != nil {
		g.t.Fatal(err)
	}
}

func (g *rawGuest) reply() *fsproto.Reply {
	g.t.Helper()
	frame, err := g.fr.Next(nil)
	if err != nil {
		g.t.Fatal(err)
	}
	rep, err := fsproto.DecodeReply(frame)
	if err != nil {
		g.t.Fatal(err)
	}
	return rep
}

func rawFrame(size uint32, tag uint64, op byte, body []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, size)
	b = binary.BigEndian.AppendUint64(b, tag)
	b = append(b, op)
	return append(b, body...)
}

// TestMalformedFrames sends frames a hostile guest could send: each gets
// an error reply (when it has a tag to answer) and the connection keeps
// serving.
func TestMalformedFrames(t *testing.T) {
	_, spec := oneFileDir(t)
	s := startServer(t, spec)
	g := newRawGuest(t, s)

	stat := func(tag uint64) []byte {
		b, err := fsproto.AppendRequest(nil, &fsproto.Request{Tag: tag, Op: fsproto.OpStat, Mount: spec.ID, Path: "f"})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	valid := func(tag uint64) {
		t.Helper()
		g.send(stat(tag))
		rep := g.reply()
		if rep.Tag != tag || rep.Errno != 0 || rep.Attr.Size != 1 {
			t.Fatalf("valid request after garbage: %+v", rep)
		}
	}
	valid(1)

	// Shorter than a header: skipped, nothing to answer.
	g.send([]byte{0, 0, 0, 3, 'a', 'b', 'c'})
	g.send([]byte{0, 0, 0, 0})
	valid(2)

	// Larger than the limit: skipped and answered.
	big := fsproto.MaxFrame + 100
	g.send(rawFrame(uint32(big), 3, byte(fsproto.OpWrite), make([]byte, big-9)))
	if rep := g.reply(); rep.Tag != 3 || rep.Errno != syscall.EMSGSIZE {
		t.Fatalf("oversized frame: %+v", rep)
	}
	valid(4)

	cases := []struct {
		name  string
		frame []byte
		errno syscall.Errno
	}{
		{"unknown op", rawFrame(9, 5, 200, nil), syscall.ENOSYS},
		{"op zero", rawFrame(9, 6, 0, nil), syscall.ENOSYS},
		{"reply bit", rawFrame(9, 7, byte(fsproto.OpStat)|fsproto.ReplyBit, nil), syscall.ENOSYS},
		{"truncated body", rawFrame(11, 8, byte(fsproto.OpStat), []byte{0, 5}), syscall.EPROTO},
		{"trailing bytes", append(stat(9)[:0:0], func() []byte {
			b := stat(9)
			binary.BigEndian.PutUint32(b, binary.BigEndian.Uint32(b)+2)
			return append(b, 1, 2)
		}()...), syscall.EPROTO},
		{"string longer than its limit", rawFrame(9+2+100, 10, byte(fsproto.OpStat), append([]byte{0, 100}, bytes.Repeat([]byte{'m'}, 100)...)), syscall.EPROTO},
		{"NUL in path", func() []byte {
			b, _ := fsproto.AppendRequest(nil, &fsproto.Request{Tag: 11, Op: fsproto.OpStat, Mount: spec.ID, Path: "fxx"})
			b[len(b)-2] = 0
			return b
		}(), syscall.EPROTO},
		{"data length beyond frame", rawFrame(9+2+8+8+4, 12, byte(fsproto.OpWrite), append(append([]byte{0, 0}, make([]byte, 16)...), 0xff, 0xff, 0xff, 0xff)), syscall.EPROTO},
		{"nanoseconds out of range", func() []byte {
			b, _ := fsproto.AppendRequest(nil, &fsproto.Request{Tag: 13, Op: fsproto.OpSetattr, Mount: spec.ID, Path: "f", Flags: fsproto.SetMtime})
			binary.BigEndian.PutUint32(b[len(b)-4:], 2e9)
			return b
		}(), syscall.EPROTO},
	}
	for i, tc := range cases {
		g.send(tc.frame)
		rep := g.reply()
		tag := binary.BigEndian.Uint64(tc.frame[4:])
		if rep.Tag != tag || rep.Errno != tc.errno {
			t.Errorf("%s: reply tag %d errno %v, want tag %d errno %v", tc.name, rep.Tag, rep.Errno, tag, tc.errno)
		}
		valid(uint64(100 + i))
	}

	// A valid frame with a path the provider refuses.
	b, _ := fsproto.AppendRequest(nil, &fsproto.Request{Tag: 200, Op: fsproto.OpStat, Mount: spec.ID, Path: "../etc"})
	g.send(b)
	if rep := g.reply(); rep.Errno != syscall.EINVAL {
		t.Errorf("dot-dot path: %+v", rep)
	}
	valid(201)
}

// TestReconnect cuts the connection under a client: idempotent requests
// go through on the next connection, and handles survive when the host
// is the same Server. A new Server (a restarted supervisor) answers old
// handles with ESTALE, and the guest reopens them by path.
func TestReconnect(t *testing.T) {
	dir, spec := hostDir(t, "/w", false)
	os.WriteFile(filepath.Join(dir, "f"), []byte("contents"), 0o644)
	l, c := serve(t, spec)
	m := fsproto.Mount{C: c, ID: spec.ID}
	ctx := ctxT(t)
	h, _, errno := m.Open(ctx, "f", unix.O_RDONLY)
	mustOK(t, "open", errno)
	inst := c.Instance()

	for i := range 5 {
		l.cut()
		data, errno := m.Read(ctx, h, 0, 100)
		if errno != 0 || string(data) != "contents" {
			t.Fatalf("read after cut %d: %q, %v", i, data, errno)
		}
		if c.Instance() != inst {
			t.Fatalf("instance changed without a new server")
		}
	}

	s2, err := NewServer([]Spec{spec}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	l.replace(s2)
	_, errno = m.Read(ctx, h, 0, 100)
	wantErrno(t, "old handle on a new server", errno, syscall.ESTALE)
	if c.Instance() == inst {
		t.Errorf("a new server kept the instance")
	}
	h2, _, errno := m.Open(ctx, "f", unix.O_RDONLY)
	mustOK(t, "reopen", errno)
	if data, _ := m.Read(ctx, h2, 0, 3); string(data) != "con" {
		t.Errorf("read %q", data)
	}
}

// port plays a virtio-serial port: one byte stream that outlives the
// guest's opens of it. Closing an open unblocks its reader; what it
// already buffered is lost, as with a real reopen.
type port struct {
	c   net.Conn
	rmu sync.Mutex
}

type portFD struct {
	p      *port
	closed atomic.Bool
}

func (p *port) open() (io.ReadWriteCloser, error) {
	p.rmu.Lock()
	p.c.SetReadDeadline(time.Time{})
	p.rmu.Unlock()
	return &portFD{p: p}, nil
}

func (f *portFD) Read(b []byte) (int, error) {
	f.p.rmu.Lock()
	defer f.p.rmu.Unlock()
	if f.closed.Load() {
		return 0, os.ErrClosed
	}
	return f.p.c.Read(b)
}

func (f *portFD) Write(b []byte) (int, error) {
	if f.closed.Load() {
		return 0, os.ErrClosed
	}
	return f.p.c.Write(b)
}

func (f *portFD) Close() error {
	if !f.closed.Swap(true) {
		f.p.c.SetReadDeadline(time.Now())
	}
	return nil
}

// TestStaleBytes resynchronises a guest that never noticed its host go:
// it is in the middle of reading a reply frame when a new host starts the
// handshake. The new host's padding must complete that frame and push
// the guest back to the handshake, and the request the dead host never
// answered must be answered by the new one.
func TestStaleBytes(t *testing.T) {
	_, spec := oneFileDir(t)
	guestEnd, hostEnd := socketPair(t)
	defer guestEnd.Close()
	p := &port{c: guestEnd}
	c := fsproto.NewClient(p.open, testLogger(t))
	defer c.Close()

	// The first host: handshake, take the guest's init and then a stat,
	// answer the init, and die halfway through the stat's reply.
	br := fsproto.NewReader(hostEnd)
	if err := fsproto.HostHandshake(hostEnd, br); err != nil {
		t.Fatal(err)
	}
	fr := fsproto.NewFrameReader(br, fsproto.MaxFrame)
	frame, _ := fr.Next(nil)
	req, err := fsproto.DecodeRequest(frame)
	if err != nil || req.Op != fsproto.OpInit {
		t.Fatalf("first request %+v, %v", req, err)
	}
	b, _ := fsproto.AppendReply(nil, &fsproto.Reply{Tag: req.Tag, Op: req.Op, Version: fsproto.Version, Instance: 1})
	hostEnd.Write(b)

	type result struct {
		a     fsproto.Attr
		errno syscall.Errno
	}
	done := make(chan result, 1)
	go func() {
		a, errno := fsproto.Mount{C: c, ID: spec.ID}.Stat(context.Background(), "f")
		done <- result{a, errno}
	}()
	frame, _ = fr.Next(nil)
	req, _ = fsproto.DecodeRequest(frame)
	if req.Op != fsproto.OpStat {
		t.Fatalf("second request %+v", req)
	}
	hostEnd.Write(rawFrame(64<<10, req.Tag, byte(fsproto.OpStat)|fsproto.ReplyBit, make([]byte, 10)))

	// The new host takes over the same stream.
	s := startServer(t, spec)
	go s.Serve(hostEnd)
	select {
	case r := <-done:
		if r.errno != 0 || r.a.Size != 1 {
			t.Fatalf("stat across the resync: %+v", r)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the guest did not resynchronise")
	}
	if c.Instance() == 1 {
		t.Error("still on the old host's instance")
	}
}

// TestGuestResync replaces the guest's client while the host is serving
// the old one, which died in the middle of sending a request: the new
// client's Breaker must bring the host back to the handshake on the same
// connection.
func TestGuestResync(t *testing.T) {
	_, spec := oneFileDir(t)
	s := startServer(t, spec)
	guestEnd, hostEnd := socketPair(t)
	defer guestEnd.Close()
	served := make(chan error, 1)
	go func() { served <- s.Serve(hostEnd) }()
	p := &port{c: guestEnd}
	ctx := ctxT(t)

	for round := range 3 {
		c := fsproto.NewClient(p.open, testLogger(t))
		m := fsproto.Mount{C: c, ID: spec.ID}
		if a, errno := m.Stat(ctx, "f"); errno != 0 || a.Size != 1 {
			t.Fatalf("round %d: stat %+v %v", round, a, errno)
		}
		h, _, errno := m.Open(ctx, "f", 0)
		mustOK(t, "open", errno)
		c.Close()
		// The dying client's last words: half of a 1000-byte write.
		guestEnd.Write(rawFrame(1000, 99, byte(fsproto.OpWrite), append(binary.BigEndian.AppendUint16(nil, uint16(len(spec.ID))), spec.ID...)))
		_ = h
	}
	select {
	case err := <-served:
		t.Fatalf("Serve returned: %v", err)
	default:
	}
}
