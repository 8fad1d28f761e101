package fsproto

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"syscall"
)

// Decoding errors. A frame that fails to decode is answered with
// ErrnoOf(err) and the connection goes on.
var (
	ErrMalformed  = errors.New("malformed frame")
	ErrUnknownOp  = errors.New("unknown operation")
	ErrShortFrame = errors.New("frame shorter than its header")
	// ErrDesync means a size field no peer would send: the stream is not
	// at a frame boundary (a peer died mid-frame, or the other end is
	// resynchronising). The reader must go back to the handshake.
	ErrDesync = errors.New("stream out of frame sync")
)

// MaxSkip is the largest oversized frame a reader skips and answers;
// anything larger is ErrDesync. Resync padding (newlines, 0x0a0a0a0a
// read as a size) and handshake text are always larger.
const MaxSkip = 64 << 20

// TooLargeError reports a frame whose size exceeds the reader's limit.
// Tag and Op are the frame's, so the host can answer it.
type TooLargeError struct {
	Tag  uint64
	Op   Op
	Size uint32
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("frame of %d bytes exceeds the limit of %d", e.Size, MaxFrame)
}

// ErrnoOf maps a decoding error to the errno a reply carries.
func ErrnoOf(err error) syscall.Errno {
	var tl *TooLargeError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &tl):
		return syscall.EMSGSIZE
	case errors.Is(err, ErrUnknownOp):
		return syscall.ENOSYS
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return syscall.EPROTO
}

// FrameReader reads frames from a byte stream.
type FrameReader struct {
	r    *bufio.Reader
	max  uint32
	skip int64 // bytes of a refused frame still to discard
}

// NewFrameReader reads frames of at most max bytes (after the size
// field) from r.
func NewFrameReader(r *bufio.Reader, max int) *FrameReader {
	return &FrameReader{r: r, max: uint32(max)}
}

// Next returns the next frame (tag, op and body, without the size field),
// reusing buf when it is large enough. A frame larger than the limit is
// reported as *TooLargeError and one shorter than a header as
// ErrShortFrame; Next skips the rest of such a frame when called again.
// A size beyond MaxSkip is ErrDesync. Other errors come from the
// underlying reader.
func (fr *FrameReader) Next(buf []byte) ([]byte, error) {
	if fr.skip > 0 {
		if err := fr.Skip(); err != nil {
			return nil, err
		}
	}
	var hdr [4]byte
	if _, err := io.ReadFull(fr.r, hdr[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(hdr[:])
	if size > MaxSkip {
		return nil, ErrDesync
	}
	if size < frameHeader {
		fr.skip = int64(size)
		return nil, ErrShortFrame
	}
	if size > fr.max {
		var h [frameHeader]byte
		if _, err := io.ReadFull(fr.r, h[:]); err != nil {
			return nil, err
		}
		fr.skip = int64(size) - frameHeader
		return nil, &TooLargeError{Tag: binary.BigEndian.Uint64(h[:]), Op: Op(h[8]), Size: size}
	}
	if cap(buf) < int(size) {
		buf = make([]byte, size)
	}
	buf = buf[:size]
	if _, err := io.ReadFull(fr.r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf, nil
}

// Skip discards what is left of a frame Next refused.
func (fr *FrameReader) Skip() error {
	for fr.skip > 0 {
		n, err := fr.r.Discard(int(min(fr.skip, 1<<30)))
		fr.skip -= int64(n)
		if err != nil {
			return err
		}
	}
	return nil
}

// encoder appends fields to a frame.
type encoder struct{ b []byte }

func (e *encoder) u8(v uint8)   { e.b = append(e.b, v) }
func (e *encoder) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *encoder) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *encoder) str(s string) {
	e.b = binary.BigEndian.AppendUint16(e.b, uint16(len(s)))
	e.b = append(e.b, s...)
}
func (e *encoder) bytes(p []byte) {
	e.u32(uint32(len(p)))
	e.b = append(e.b, p...)
}
func (e *encoder) time(t Time) { e.u64(uint64(t.Sec)); e.u32(t.Nsec) }

func (e *encoder) attr(a *Attr) {
	e.u64(a.Ino)
	e.u64(a.Gen)
	e.u64(a.Size)
	e.u64(a.Blocks)
	e.time(a.Atime)
	e.time(a.Mtime)
	e.time(a.Ctime)
	e.u32(a.Mode)
	e.u32(a.Nlink)
	e.u32(a.Blksize)
	e.u32(a.Rdev)
}

// attrSize is the encoded size of an Attr.
const attrSize = 4*8 + 3*12 + 4*4

// decoder reads fields from a frame body; the first problem sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) take(n int, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b) < n {
		d.fail("%s: need %d bytes, have %d", what, n, len(d.b))
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) u8(what string) uint8 {
	if p := d.take(1, what); p != nil {
		return p[0]
	}
	return 0
}

func (d *decoder) u32(what string) uint32 {
	if p := d.take(4, what); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (d *decoder) u64(what string) uint64 {
	if p := d.take(8, what); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

// str reads a length-prefixed string of at most max bytes without NULs:
// no path or name the kernel hands a filesystem contains one.
func (d *decoder) str(what string, max int) string {
	p := d.take(2, what)
	if p == nil {
		return ""
	}
	n := int(binary.BigEndian.Uint16(p))
	if n > max {
		d.fail("%s: %d bytes, limit %d", what, n, max)
		return ""
	}
	s := d.take(n, what)
	if strings.IndexByte(string(s), 0) >= 0 {
		d.fail("%s: NUL byte", what)
		return ""
	}
	return string(s)
}

func (d *decoder) bytes(what string, max int) []byte {
	n := d.u32(what)
	if d.err == nil && n > uint32(max) {
		d.fail("%s: %d bytes, limit %d", what, n, max)
		return nil
	}
	return d.take(int(n), what)
}

func (d *decoder) time(what string) Time {
	t := Time{Sec: int64(d.u64(what)), Nsec: d.u32(what)}
	if t.Nsec >= 1e9 {
		d.fail("%s: %d nanoseconds", what, t.Nsec)
	}
	return t
}

func (d *decoder) attr() Attr {
	return Attr{
		Ino: d.u64("ino"), Gen: d.u64("gen"), Size: d.u64("size"), Blocks: d.u64("blocks"),
		Atime: d.time("atime"), Mtime: d.time("mtime"), Ctime: d.time("ctime"),
		Mode: d.u32("mode"), Nlink: d.u32("nlink"), Blksize: d.u32("blksize"), Rdev: d.u32("rdev"),
	}
}

func (d *decoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	return d.err
}

// beginFrame starts a frame in buf: a size placeholder, tag and op.
func beginFrame(buf []byte, tag uint64, op byte) encoder {
	e := encoder{b: buf[:0]}
	e.u32(0)
	e.u64(tag)
	e.u8(op)
	return e
}

func (e *encoder) finish() ([]byte, error) {
	size := len(e.b) - 4
	if size > MaxFrame {
		return nil, &TooLargeError{Size: uint32(min(size, math.MaxUint32))}
	}
	binary.BigEndian.PutUint32(e.b, uint32(size))
	return e.b, nil
}

// AppendRequest encodes r as a complete frame (size field included) into
// buf[:0] and returns it.
func AppendRequest(buf []byte, r *Request) ([]byte, error) {
	if !r.Op.Valid() {
		return nil, ErrUnknownOp
	}
	switch {
	case len(r.Mount) > MaxMountID, len(r.Path) > MaxPath, len(r.Path2) > MaxPath:
		return nil, fmt.Errorf("%s: %w: name too long", r.Op, ErrMalformed)
	case len(r.Data) > MaxData:
		return nil, &TooLargeError{Tag: r.Tag, Op: r.Op, Size: uint32(min(len(r.Data), math.MaxUint32))}
	}
	e := beginFrame(buf, r.Tag, byte(r.Op))
	r.fields(codec{enc: &e})
	return e.finish()
}

// DecodeRequest decodes a frame as returned by FrameReader.Next. When the
// frame has a header, the returned request carries its Tag and Op even if
// the body fails to decode, so that the error can be answered. Data
// aliases frame.
func DecodeRequest(frame []byte) (*Request, error) {
	if len(frame) < frameHeader {
		return nil, ErrShortFrame
	}
	r := &Request{Tag: binary.BigEndian.Uint64(frame), Op: Op(frame[8])}
	if !r.Op.Valid() || r.Op == OpNotify {
		return r, fmt.Errorf("%w %d", ErrUnknownOp, frame[8])
	}
	d := decoder{b: frame[frameHeader:]}
	r.fields(codec{dec: &d})
	if err := d.end(); err != nil {
		return r, fmt.Errorf("%s: %w", r.Op, err)
	}
	return r, nil
}

// AppendReply encodes rep as a complete frame into buf[:0]. A reply with
// a non-zero Errno carries nothing else.
func AppendReply(buf []byte, rep *Reply) ([]byte, error) {
	e := beginFrame(buf, rep.Tag, byte(rep.Op)|ReplyBit)
	e.u32(uint32(rep.Errno))
	if rep.Errno != 0 || !rep.Op.Valid() {
		return e.finish()
	}
	f := replyFields[rep.Op]
	if len(rep.Mount) > MaxMountID || len(rep.Path) > MaxPath {
		return nil, fmt.Errorf("%s reply: %w: name too long", rep.Op, ErrMalformed)
	}
	if f&fData != 0 && len(rep.Data) > MaxData {
		return nil, &TooLargeError{Tag: rep.Tag, Op: rep.Op}
	}
	if f&fEntries != 0 {
		if len(rep.Entries) > MaxEntries {
			return nil, &TooLargeError{Tag: rep.Tag, Op: rep.Op}
		}
		for i := range rep.Entries {
			if n := len(rep.Entries[i].Name); n > MaxName {
				return nil, fmt.Errorf("%w: entry name of %d bytes", ErrMalformed, n)
			}
		}
	}
	rep.fields(codec{enc: &e})
	return e.finish()
}

// EntrySize is the encoded size of a directory entry with a name of n
// bytes; the host fills readdir pages up to MaxData with it.
func EntrySize(n int) int { return 2 + n + 8 + attrSize }

// DecodeReply decodes a reply frame as returned by FrameReader.Next. Data
// aliases frame.
func DecodeReply(frame []byte) (*Reply, error) {
	if len(frame) < frameHeader+4 {
		return nil, ErrShortFrame
	}
	rep := &Reply{Tag: binary.BigEndian.Uint64(frame), Op: Op(frame[8] &^ ReplyBit)}
	if frame[8]&ReplyBit == 0 {
		return rep, fmt.Errorf("%w: request where a reply was expected", ErrMalformed)
	}
	d := decoder{b: frame[frameHeader:]}
	rep.Errno = syscall.Errno(d.u32("errno"))
	if rep.Errno != 0 || !rep.Op.Valid() {
		return rep, d.end()
	}
	rep.fields(codec{dec: &d})
	if err := d.end(); err != nil {
		return rep, fmt.Errorf("%s reply: %w", rep.Op, err)
	}
	return rep, nil
}

// codec is an encoder or a decoder, whichever is not nil. A message's
// fields method walks its fields through one, so that encoding and
// decoding go through the same fields in the same order. Encoding writes
// what each pointer holds and ignores the names and limits, which the
// Append functions check first; decoding stores what it reads there.
type codec struct {
	enc *encoder
	dec *decoder
}

func (c codec) u32(p *uint32, what string) {
	if c.enc != nil {
		c.enc.u32(*p)
	} else {
		*p = c.dec.u32(what)
	}
}

func (c codec) u64(p *uint64, what string) {
	if c.enc != nil {
		c.enc.u64(*p)
	} else {
		*p = c.dec.u64(what)
	}
}

func (c codec) str(p *string, what string, max int) {
	if c.enc != nil {
		c.enc.str(*p)
	} else {
		*p = c.dec.str(what, max)
	}
}

func (c codec) bytes(p *[]byte, what string, max int) {
	if c.enc != nil {
		c.enc.bytes(*p)
	} else {
		*p = c.dec.bytes(what, max)
	}
}

func (c codec) time(p *Time, what string) {
	if c.enc != nil {
		c.enc.time(*p)
	} else {
		*p = c.dec.time(what)
	}
}

func (c codec) attr(p *Attr) {
	if c.enc != nil {
		c.enc.attr(p)
	} else {
		*p = c.dec.attr()
	}
}

// fields walks the body of a request, after its tag and op.
func (r *Request) fields(c codec) {
	f := requestFields[r.Op]
	if f&fMount != 0 {
		c.str(&r.Mount, "mount", MaxMountID)
	}
	if f&fPath != 0 {
		c.str(&r.Path, "path", MaxPath)
	}
	if f&fPath2 != 0 {
		c.str(&r.Path2, "path2", MaxPath)
	}
	if f&fHandle != 0 {
		c.u64(&r.Handle, "handle")
	}
	if f&fFlags != 0 {
		c.u32(&r.Flags, "flags")
	}
	if f&fMode != 0 {
		c.u32(&r.Mode, "mode")
	}
	if f&fDev != 0 {
		c.u32(&r.Dev, "dev")
	}
	if f&fOffset != 0 {
		c.u64(&r.Offset, "offset")
	}
	if f&fSize != 0 {
		c.u64(&r.Size, "size")
	}
	if f&fData != 0 {
		max := MaxData
		if r.Op == OpSymlink {
			max = MaxPath
		}
		c.bytes(&r.Data, "data", max)
	}
	if f&fTimes != 0 {
		c.time(&r.Atime, "atime")
		c.time(&r.Mtime, "mtime")
	}
	if f&fVersion != 0 {
		c.u32(&r.Version, "version")
	}
}

// fields walks the result fields of a reply whose errno is 0.
func (rep *Reply) fields(c codec) {
	f := replyFields[rep.Op]
	if f&fMount != 0 {
		c.str(&rep.Mount, "mount", MaxMountID)
	}
	if f&fPath != 0 {
		c.str(&rep.Path, "path", MaxPath)
	}
	if f&fFlags != 0 {
		c.u32(&rep.Flags, "flags")
	}
	if f&fVersion != 0 {
		c.u32(&rep.Version, "version")
	}
	if f&fInstance != 0 {
		c.u64(&rep.Instance, "instance")
	}
	if f&fHandle != 0 {
		c.u64(&rep.Handle, "handle")
	}
	if f&fAttr != 0 {
		c.attr(&rep.Attr)
	}
	if f&fData != 0 {
		c.bytes(&rep.Data, "data", MaxData)
	}
	if f&fSize != 0 {
		c.u64(&rep.Size, "size")
	}
	if f&fOffset != 0 {
		c.u64(&rep.Offset, "offset")
	}
	if f&fEntries != 0 {
		if c.enc != nil {
			c.enc.entries(rep.Entries, rep.EOF)
		} else {
			rep.Entries, rep.EOF = c.dec.entries()
		}
	}
	if f&fStatfs != 0 {
		s := &rep.Statfs
		for _, p := range []*uint64{&s.Blocks, &s.Bfree, &s.Bavail, &s.Files, &s.Ffree} {
			c.u64(p, "statfs")
		}
		for _, p := range []*uint32{&s.Bsize, &s.Namelen, &s.Frsize} {
			c.u32(p, "statfs")
		}
	}
}

// entries writes a readdir page: the count, the entries and the EOF flag.
func (e *encoder) entries(des []DirEntry, eof bool) {
	e.u32(uint32(len(des)))
	for i := range des {
		de := &des[i]
		e.str(de.Name)
		e.u64(de.Next)
		e.attr(&de.Attr)
	}
	flag := uint8(0)
	if eof {
		flag = 1
	}
	e.u8(flag)
}

// entries reads a readdir page, refusing names a directory cannot hold.
func (d *decoder) entries() ([]DirEntry, bool) {
	var des []DirEntry
	n := d.u32("entries")
	if n > MaxEntries {
		d.fail("%d entries, limit %d", n, MaxEntries)
	}
	if d.err == nil {
		des = make([]DirEntry, 0, min(int(n), len(d.b)/EntrySize(1)+1))
	}
	for i := uint32(0); i < n && d.err == nil; i++ {
		de := DirEntry{Name: d.str("name", MaxName), Next: d.u64("next"), Attr: d.attr()}
		if d.err == nil && (de.Name == "" || de.Name == "." || de.Name == ".." || strings.IndexByte(de.Name, '/') >= 0) {
			d.fail("bad entry name %q", de.Name)
		}
		des = append(des, de)
	}
	return des, d.u8("eof") != 0
}
