package fsproto

import (
	"bufio"
	"bytes"
	"errors"
	"reflect"
	"syscall"
	"testing"
)

// sampleRequests has one request of every op, with every field its op
// carries set.
func sampleRequests() []*Request {
	var reqs []*Request
	for op := OpInit; op < opEnd; op++ {
		if op == OpNotify {
			continue // the host's alone: see TestNotifyIsNoRequest
		}
		reqs = append(reqs, &Request{
			Tag: uint64(op) * 1000, Op: op, Mount: "m0123456789ab", Path: "dir/file", Path2: "dir/other",
			Handle: 7<<32 | 3, Flags: 0o101, Mode: 0o100644, Dev: 5, Offset: 5 << 30, Size: 4096,
			Data: []byte("data"), Atime: Time{1, 2}, Mtime: Time{3, 4}, Version: Version,
		})
	}
	return reqs
}

// requestCopies copies each field of a request that a flag names.
var requestCopies = []struct {
	f    fields
	copy func(dst, src *Request)
}{
	{fMount, func(d, s *Request) { d.Mount = s.Mount }},
	{fPath, func(d, s *Request) { d.Path = s.Path }},
	{fPath2, func(d, s *Request) { d.Path2 = s.Path2 }},
	{fHandle, func(d, s *Request) { d.Handle = s.Handle }},
	{fFlags, func(d, s *Request) { d.Flags = s.Flags }},
	{fMode, func(d, s *Request) { d.Mode = s.Mode }},
	{fDev, func(d, s *Request) { d.Dev = s.Dev }},
	{fOffset, func(d, s *Request) { d.Offset = s.Offset }},
	{fSize, func(d, s *Request) { d.Size = s.Size }},
	{fData, func(d, s *Request) { d.Data = s.Data }},
	{fTimes, func(d, s *Request) { d.Atime, d.Mtime = s.Atime, s.Mtime }},
	{fVersion, func(d, s *Request) { d.Version = s.Version }},
}

// only keeps the fields op carries, as a decoder returns them.
func only(r *Request) *Request {
	out := &Request{Tag: r.Tag, Op: r.Op}
	for _, c := range requestCopies {
		if requestFields[r.Op]&c.f != 0 {
			c.copy(out, r)
		}
	}
	return out
}

// TestFieldTablesCover checks that requestCopies and replySets know
// every field an op carries: a field they missed would round-trip as its
// zero value, untested.
func TestFieldTablesCover(t *testing.T) {
	var reqKnown, repKnown, reqUsed, repUsed fields
	for _, c := range requestCopies {
		reqKnown |= c.f
	}
	for _, s := range replySets {
		repKnown |= s.f
	}
	for op := OpInit; op < opEnd; op++ {
		reqUsed |= requestFields[op]
		repUsed |= replyFields[op]
	}
	if missing := reqUsed &^ reqKnown; missing != 0 {
		t.Errorf("request fields %#x not in requestCopies", missing)
	}
	if missing := repUsed &^ repKnown; missing != 0 {
		t.Errorf("reply fields %#x not in replySets", missing)
	}
}

func TestRequestRoundTrip(t *testing.T) {
	for _, r := range sampleRequests() {
		b, err := AppendRequest(nil, r)
		if err != nil {
			t.Fatalf("%s: %v", r.Op, err)
		}
		fr := NewFrameReader(bufio.NewReader(bytes.NewReader(b)), MaxFrame)
		frame, err := fr.Next(nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeRequest(frame)
		if err != nil {
			t.Fatalf("%s: %v", r.Op, err)
		}
		if want := only(r); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: decoded %+v, want %+v", r.Op, got, want)
		}
	}
}

// replySets sets each field of a reply that a flag names, to a value
// that is not its zero.
var replySets = []struct {
	f   fields
	set func(rep *Reply, attr Attr)
}{
	{fAttr, func(rep *Reply, attr Attr) { rep.Attr = attr }},
	{fHandle, func(rep *Reply, _ Attr) { rep.Handle = 77 }},
	{fData, func(rep *Reply, _ Attr) { rep.Data = []byte("payload") }},
	{fEntries, func(rep *Reply, attr Attr) {
		rep.Entries = []DirEntry{{Name: "a", Next: 1, Attr: attr}, {Name: "b", Next: 2, Attr: attr}}
		rep.EOF = true
	}},
	{fSize, func(rep *Reply, _ Attr) { rep.Size = 12 }},
	{fOffset, func(rep *Reply, _ Attr) { rep.Offset = 1 << 40 }},
	{fStatfs, func(rep *Reply, _ Attr) { rep.Statfs = Statfs{1, 2, 3, 4, 5, 6, 7, 8} }},
	{fVersion, func(rep *Reply, _ Attr) { rep.Version = Version }},
	{fInstance, func(rep *Reply, _ Attr) { rep.Instance = 42 }},
	{fMount, func(rep *Reply, _ Attr) { rep.Mount = "m0123" }},
	{fPath, func(rep *Reply, _ Attr) { rep.Path = "dir/file" }},
	{fFlags, func(rep *Reply, _ Attr) { rep.Flags = NoticeInode }},
}

// TestNotifyIsNoRequest checks that the host refuses a notice a guest
// sends as a request: it is the host's frame alone.
func TestNotifyIsNoRequest(t *testing.T) {
	frame := []byte{0, 0, 0, 0, 0, 0, 0, 1, byte(OpNotify), 0, 1, 'm', 0, 0, 0, 0, 0, 1}
	req, err := DecodeRequest(frame)
	if !errors.Is(err, ErrUnknownOp) || req.Tag != 1 {
		t.Errorf("DecodeRequest(notify) = %+v, %v; want ErrUnknownOp with the tag", req, err)
	}
}

func TestReplyRoundTrip(t *testing.T) {
	attr := Attr{Ino: 1, Gen: 2, Size: 3, Blocks: 4, Atime: Time{5, 6}, Mtime: Time{7, 8}, Ctime: Time{9, 10}, Mode: 0o100644, Nlink: 1, Blksize: 4096, Rdev: 0x0103}
	for op := OpInit; op < opEnd; op++ {
		rep := &Reply{Tag: 9, Op: op}
		for _, set := range replySets {
			if replyFields[op]&set.f != 0 {
				set.set(rep, attr)
			}
		}
		b, err := AppendReply(nil, rep)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeReply(b[4:])
		if err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		if !reflect.DeepEqual(got, rep) {
			t.Errorf("%s: decoded %+v, want %+v", op, got, rep)
		}
		b, _ = AppendReply(nil, &Reply{Tag: 1, Op: op, Errno: syscall.ENOENT})
		if got, err := DecodeReply(b[4:]); err != nil || got.Errno != syscall.ENOENT {
			t.Errorf("%s error reply: %+v, %v", op, got, err)
		}
	}
}

func TestEncodeLimits(t *testing.T) {
	if _, err := AppendRequest(nil, &Request{Op: OpWrite, Data: make([]byte, MaxData+1)}); err == nil {
		t.Error("oversized write encoded")
	}
	if _, err := AppendRequest(nil, &Request{Op: OpStat, Path: string(make([]byte, MaxPath+1))}); err == nil {
		t.Error("oversized path encoded")
	}
	if _, err := AppendRequest(nil, &Request{Op: 0}); !errors.Is(err, ErrUnknownOp) {
		t.Errorf("op 0: %v", err)
	}
	// The largest legal request fits a frame.
	if _, err := AppendRequest(nil, &Request{Op: OpRename, Path: string(bytes.Repeat([]byte{'a'}, MaxPath)), Path2: string(bytes.Repeat([]byte{'b'}, MaxPath))}); err != nil {
		t.Error(err)
	}
	if _, err := AppendRequest(nil, &Request{Op: OpWrite, Mount: string(bytes.Repeat([]byte{'m'}, MaxMountID)), Data: make([]byte, MaxData)}); err != nil {
		t.Error(err)
	}
}

// FuzzDecodeRequest feeds the host's decoder arbitrary frames. It must
// never panic, and whatever it accepts must encode back to the same
// bytes (so nothing it accepts is ambiguous).
func FuzzDecodeRequest(f *testing.F) {
	for _, r := range sampleRequests() {
		b, _ := AppendRequest(nil, r)
		f.Add(b[4:])
	}
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 1, byte(OpStat), 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, frame []byte) {
		r, err := DecodeRequest(frame)
		if err != nil {
			if len(frame) >= frameHeader && r == nil {
				t.Fatal("no tag to answer a frame with a header")
			}
			if errno := ErrnoOf(err); errno == 0 {
				t.Fatal("an error maps to errno 0")
			}
			return
		}
		if len(r.Path) > MaxPath || len(r.Path2) > MaxPath || len(r.Mount) > MaxMountID || len(r.Data) > MaxData {
			t.Fatalf("limits not enforced: %d %d %d %d", len(r.Path), len(r.Path2), len(r.Mount), len(r.Data))
		}
		b, err := AppendRequest(nil, r)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", r, err)
		}
		if !bytes.Equal(b[4:], frame) {
			t.Fatalf("re-encoded differently:\n%x\n%x", b[4:], frame)
		}
	})
}

// FuzzFrameStream feeds the frame reader an arbitrary byte stream, as a
// hostile guest can, with a small limit so that oversized frames are
// common. Reading must end at the end of the stream, without panics and
// without allocating for sizes it refused.
func FuzzFrameStream(f *testing.F) {
	var seed []byte
	for _, r := range sampleRequests() {
		b, _ := AppendRequest(nil, r)
		seed = append(seed, b...)
	}
	f.Add(seed)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3})
	f.Add([]byte{0, 0, 0, 2, 1, 2, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, 2})
	f.Fuzz(func(t *testing.T, stream []byte) {
		fr := NewFrameReader(bufio.NewReader(bytes.NewReader(stream)), 64)
		for i := 0; i <= len(stream); i++ {
			frame, err := fr.Next(nil)
			var tl *TooLargeError
			switch {
			case err == nil:
				if len(frame) > 64 || len(frame) < frameHeader {
					t.Fatalf("frame of %d bytes", len(frame))
				}
				DecodeRequest(frame)
			case errors.As(err, &tl), errors.Is(err, ErrShortFrame):
			case errors.Is(err, ErrDesync):
				return
			default:
				return // end of stream
			}
		}
		t.Fatal("more frames than bytes")
	})
}

// FuzzDecodeReply covers the guest's decoder: the host is trusted, but
// stale bytes after a reconnect are not.
func FuzzDecodeReply(f *testing.F) {
	b, _ := AppendReply(nil, &Reply{Tag: 1, Op: OpReaddir, Entries: []DirEntry{{Name: "x", Next: 1}}, EOF: true})
	f.Add(b[4:])
	b, _ = AppendReply(nil, &Reply{Tag: 2, Op: OpRead, Data: []byte("abc")})
	f.Add(b[4:])
	b, _ = AppendReply(nil, &Reply{Op: OpNotify, Mount: "m1", Path: "dir/file", Flags: NoticeEntry})
	f.Add(b[4:])
	f.Fuzz(func(t *testing.T, frame []byte) {
		rep, err := DecodeReply(frame)
		if err == nil && rep.Errno == 0 && (len(rep.Mount) > MaxMountID || len(rep.Path) > MaxPath) {
			t.Fatalf("notice beyond the limits accepted: %d-byte mount, %d-byte path", len(rep.Mount), len(rep.Path))
		}
		if err == nil && rep.Errno == 0 {
			for _, e := range rep.Entries {
				if e.Name == "" || e.Name == "." || e.Name == ".." || bytes.ContainsAny([]byte(e.Name), "/\x00") {
					t.Fatalf("bad entry name accepted: %q", e.Name)
				}
			}
		}
	})
}
