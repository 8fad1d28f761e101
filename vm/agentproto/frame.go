package agentproto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// FrameType says what a frame's payload is.
type FrameType uint8

const (
	FrameRequest  FrameType = 1 // JSON Request, host to guest
	FrameResponse FrameType = 2 // JSON Response, guest to host
	FrameStdout   FrameType = 3 // raw bytes
	FrameStderr   FrameType = 4 // raw bytes
	FrameExit     FrameType = 5 // JSON ExitStatus; the last frame of an exec stream
	FrameError    FrameType = 6 // JSON Response with Error set; the stream ends
	FrameOutput   FrameType = 7 // 8-byte big-endian offset, then PTY bytes (attach)
)

func (t FrameType) String() string {
	switch t {
	case FrameRequest:
		return "request"
	case FrameResponse:
		return "response"
	case FrameStdout:
		return "stdout"
	case FrameStderr:
		return "stderr"
	case FrameExit:
		return "exit"
	case FrameError:
		return "error"
	case FrameOutput:
		return "output"
	}
	return fmt.Sprintf("frame(%d)", uint8(t))
}

const (
	// MaxData is the most raw output one frame carries; writers split
	// larger chunks so one stream cannot hog the channel. A full frame
	// (header and MaxData bytes) is exactly 256 KiB: the guest's
	// virtio-serial driver cuts every write(2) at PortWrite bytes, so a
	// frame that is a multiple of that costs no short write at its end
	// (under emulation each write is a syscall, a buffer, a notification
	// of QEMU and an interrupt back, whatever its size).
	MaxData = 8*PortWrite - headerLen
	// PortWrite is the most one write(2) to a virtio-serial port takes
	// (the guest driver's limit).
	PortWrite = 32 << 10
	// MaxFrame bounds any frame a reader accepts (argv and env of an exec
	// request included).
	MaxFrame  = 1 << 20
	headerLen = 5
)

// Errors a frame reader returns for bytes that break the protocol.
var (
	ErrFrameTooLarge = errors.New("frame too large")
	ErrBadFrame      = errors.New("malformed frame")
)

// Frame is one decoded frame.
type Frame struct {
	Type    FrameType
	Payload []byte
}

// WriteFrame writes one frame in a single Write call, so that concurrent
// writers serialised by a mutex never interleave.
func WriteFrame(w io.Writer, t FrameType, payload []byte) error {
	if len(payload)+1 > MaxFrame {
		return ErrFrameTooLarge
	}
	bp := framePool.Get().(*[]byte)
	defer framePool.Put(bp)
	buf := append((*bp)[:0], 0, 0, 0, 0, byte(t))
	binary.BigEndian.PutUint32(buf, uint32(len(payload)+1))
	buf = append(buf, payload...)
	*bp = buf
	_, err := w.Write(buf)
	return err
}

// HeaderLen is the size of a frame's header (length and type).
const HeaderLen = headerLen

// WriteFrameInPlace writes a frame of type t whose payload is
// buf[HeaderLen:], filling in buf[:HeaderLen]: a writer that reads its
// payload into a buffer with that much room in front saves the copy
// WriteFrame makes (on an emulated CPU, bulk output pays for each one).
func WriteFrameInPlace(w io.Writer, t FrameType, buf []byte) error {
	if len(buf) < headerLen {
		return ErrBadFrame
	}
	n := len(buf) - headerLen
	if n+1 > MaxFrame {
		return ErrFrameTooLarge
	}
	binary.BigEndian.PutUint32(buf, uint32(n+1))
	buf[4] = byte(t)
	_, err := w.Write(buf)
	return err
}

// framePool recycles frame buffers: output streams write one frame per
// read, and under emulation every allocation and copy shows. A new
// buffer starts small (most frames are short JSON, and a full output
// frame is 256 KiB) and keeps whatever it grew to.
var framePool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// WriteJSON writes v as a frame of type t.
func WriteJSON(w io.Writer, t FrameType, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return WriteFrame(w, t, b)
}

// ReadFrame reads one frame of at most max bytes (type byte included). A
// frame over max is not read: the stream cannot be resynchronised after it
// and must be closed.
func ReadFrame(r io.Reader, max int) (Frame, error) {
	var hdr [headerLen]byte
	if _, err := io.ReadFull(r, hdr[:4]); err != nil {
		return Frame{}, err
	}
	n := binary.BigEndian.Uint32(hdr[:4])
	if n == 0 {
		return Frame{}, fmt.Errorf("%w: empty frame", ErrBadFrame)
	}
	if int64(n) > int64(max) {
		return Frame{}, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, max)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	return Frame{Type: FrameType(buf[0]), Payload: buf[1:]}, nil
}

// Decode unmarshals a JSON frame's payload strictly: unknown fields are
// errors, so a confused or hostile peer is noticed rather than half-read.
func (f Frame) Decode(v any) error {
	if err := decodeStrict(f.Payload, v); err != nil {
		return fmt.Errorf("%w: %s payload: %v", ErrBadFrame, f.Type, err)
	}
	return nil
}

// Expect reads one frame and checks its type; a FrameError becomes the
// error it carries.
func Expect(r io.Reader, t FrameType, v any) error {
	f, err := ReadFrame(r, MaxFrame)
	if err != nil {
		return err
	}
	switch f.Type {
	case t:
		if v == nil {
			return nil
		}
		return f.Decode(v)
	case FrameError:
		var resp Response
		if err := f.Decode(&resp); err != nil {
			return err
		}
		return resp.Err()
	}
	return fmt.Errorf("%w: got %s frame, want %s", ErrBadFrame, f.Type, t)
}

// Offset splits a FrameOutput payload.
func (f Frame) Offset() (uint64, []byte, error) {
	if f.Type != FrameOutput || len(f.Payload) < 8 {
		return 0, nil, fmt.Errorf("%w: short output frame", ErrBadFrame)
	}
	return binary.BigEndian.Uint64(f.Payload), f.Payload[8:], nil
}

// OutputPayload builds a FrameOutput payload.
func OutputPayload(offset uint64, data []byte) []byte {
	buf := make([]byte, 8+len(data))
	binary.BigEndian.PutUint64(buf, offset)
	copy(buf[8:], data)
	return buf
}
