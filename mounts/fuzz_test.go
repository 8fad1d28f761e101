package mounts

import (
	"errors"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/gondolin/gondolin/mounts/fsproto"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// FuzzServe feeds a Server arbitrary bytes after the handshake, as a
// hostile guest can: frames of any size, op and body, against a
// read-only mount. The server must answer with well-formed replies, end
// when the stream ends, and leave the tree unchanged.
func FuzzServe(f *testing.F) {
	dir := f.TempDir()
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	os.WriteFile(filepath.Join(dir, "d", "f"), []byte("data"), 0o644)
	os.Symlink("/etc/passwd", filepath.Join(dir, "link"))
	spec, err := ParseHostFS(dir + ":/w:ro")
	if err != nil {
		f.Fatal(err)
	}
	before := treeHash(f, dir)
	s, err := NewServer([]Spec{spec}, log.New(io.Discard, "", 0))
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()

	var seed []byte
	for i, r := range []fsproto.Request{
		{Op: fsproto.OpInit, Version: fsproto.Version},
		{Op: fsproto.OpStat, Path: "d/f"},
		{Op: fsproto.OpOpen, Path: "d/f"},
		{Op: fsproto.OpRead, Handle: uint64(s.instance)<<32 | 1, Size: 10},
		{Op: fsproto.OpOpendir, Path: "d"},
		{Op: fsproto.OpReaddir, Handle: uint64(s.instance)<<32 | 2, Size: 10},
		{Op: fsproto.OpReadlink, Path: "link"},
		{Op: fsproto.OpOpen, Path: "link/../x"},
		{Op: fsproto.OpCreate, Path: "new", Flags: 0o101},
		{Op: fsproto.OpStatfs},
	} {
		r.Tag, r.Mount = uint64(i), spec.ID
		b, err := fsproto.AppendRequest(nil, &r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		seed = append(seed, b...)
	}
	f.Add(seed)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1, 3})

	f.Fuzz(func(t *testing.T, stream []byte) {
		g, fr, served := connectGuest(t, s)
		go func() {
			g.Write(stream)
			g.(*net.UnixConn).CloseWrite()
		}()
		for {
			frame, err := fr.Next(nil)
			if errors.Is(err, fsproto.ErrDesync) {
				// The stream had a size no guest sends: the host went back
				// to the handshake, and this guest does not answer it.
				g.Close()
				break
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("reading replies: %v", err)
				}
				break
			}
			if _, err := fsproto.DecodeReply(frame); err != nil {
				t.Fatalf("malformed reply: %v", err)
			}
		}
		if err := <-served; err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, agentproto.ErrNoHandshake) {
			t.Fatalf("Serve: %v", err)
		}
		if after := treeHash(t, dir); after != before {
			t.Fatal("the read-only tree changed")
		}
	})
}
