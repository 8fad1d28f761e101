package agent

import (
	"sync"
)

// ring keeps the most recent output of a persistent process, addressed by
// absolute byte offsets, so a host that reconnects can read what it missed.
// While a reader is attached the writer waits for it rather than overwrite
// bytes it has not read (backpressure reaches the process through its
// PTY); with no reader attached the oldest bytes are dropped.
type ring struct {
	mu      sync.Mutex
	cond    *sync.Cond
	buf     []byte
	end     uint64 // offset just past the newest byte
	closed  bool
	readers map[*ringReader]struct{}
}

type ringReader struct{ pos uint64 }

func newRing(size int) *ring {
	r := &ring{buf: make([]byte, size), readers: map[*ringReader]struct{}{}}
	r.cond = sync.NewCond(&r.mu)
	return r
}

func (r *ring) start() uint64 {
	if r.end < uint64(len(r.buf)) {
		return 0
	}
	return r.end - uint64(len(r.buf))
}

// Write appends p, waiting while an attached reader would lose bytes.
func (r *ring) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	size := uint64(len(r.buf))
	for len(p) > 0 {
		chunk := p
		if uint64(len(chunk)) > size/2 {
			chunk = chunk[:size/2]
		}
		// Wait until every reader has room for chunk.
		for !r.closed && r.slowest() != nil && r.end+uint64(len(chunk))-r.slowest().pos > size {
			r.cond.Wait()
		}
		at := int(r.end % size)
		if c := copy(r.buf[at:], chunk); c < len(chunk) {
			copy(r.buf, chunk[c:])
		}
		r.end += uint64(len(chunk))
		n += len(chunk)
		p = p[len(chunk):]
		r.cond.Broadcast()
	}
	return n, nil
}

func (r *ring) slowest() *ringReader {
	var min *ringReader
	for rd := range r.readers {
		if min == nil || rd.pos < min.pos {
			min = rd
		}
	}
	return min
}

// Close marks the end of output; readers drain what is left, then stop.
func (r *ring) Close() {
	r.mu.Lock()
	r.closed = true
	r.cond.Broadcast()
	r.mu.Unlock()
}

// End returns the offset just past the newest byte.
func (r *ring) End() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.end
}

// attach registers a reader at offset (clamped to what is still kept).
func (r *ring) attach(offset uint64) *ringReader {
	r.mu.Lock()
	defer r.mu.Unlock()
	if offset < r.start() {
		offset = r.start()
	}
	if offset > r.end {
		offset = r.end
	}
	rd := &ringReader{pos: offset}
	r.readers[rd] = struct{}{}
	return rd
}

func (r *ring) detach(rd *ringReader) {
	r.mu.Lock()
	delete(r.readers, rd)
	r.cond.Broadcast()
	r.mu.Unlock()
}

// next blocks until rd has unread bytes or the ring is closed, and returns
// up to max of them with their offset. ok is false once everything has
// been read and the ring is closed. cancel, when closed, wakes it early.
func (r *ring) next(rd *ringReader, max int, cancelled func() bool) (offset uint64, data []byte, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for rd.pos == r.end && !r.closed && !cancelled() {
		r.cond.Wait()
	}
	if rd.pos == r.end {
		return rd.pos, nil, false
	}
	if rd.pos < r.start() { // only possible for readers attached before a wrap
		rd.pos = r.start()
	}
	n := r.end - rd.pos
	if n > uint64(max) {
		n = uint64(max)
	}
	size := uint64(len(r.buf))
	data = make([]byte, n)
	at := int(rd.pos % size)
	if c := copy(data, r.buf[at:]); c < len(data) {
		copy(data[c:], r.buf)
	}
	offset = rd.pos
	rd.pos += n
	r.cond.Broadcast()
	return offset, data, true
}

// wake rouses readers so they can notice a cancellation.
func (r *ring) wake() {
	r.mu.Lock()
	r.cond.Broadcast()
	r.mu.Unlock()
}
