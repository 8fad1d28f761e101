package fsproto

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/vm/agentproto"
)

// Client is the guest end of the fs port. It keeps a connection to the
// host (reopening the port and resynchronising after every loss), sends
// requests from any number of goroutines at once, and matches each reply
// to its request by tag.
//
// A request that is on the wire when the connection is lost is sent again
// on the next connection if its op is idempotent; otherwise it fails with
// EIO, because the host may or may not have done it. While no host is
// connected, requests wait; a cancelled context (a FUSE interrupt: the
// process got a signal) ends the wait with EINTR, so that a process stuck
// on a dead mount can still be killed. Once a request is on the wire the
// client waits for its reply: returning early would leave the kernel
// guessing whether a write happened.
type Client struct {
	open func() (io.ReadWriteCloser, error)
	log  *log.Logger
	tags atomic.Uint64

	mu     sync.Mutex
	cur    *conn         // nil while disconnected
	up     chan struct{} // closed when cur is set
	closed bool
	done   chan struct{} // closed by Close
	exited chan struct{} // closed when run returns

	notices  chan Notice
	overflow atomic.Bool // a notice was dropped: see Notices
}

// Notice is what the host told the guest unasked (an OpNotify frame), or,
// with Mount "" and Kind NoticeAll, that the client connected to a host:
// whatever changed while none was connected went unreported.
type Notice struct {
	Mount, Path string
	Kind        uint32
}

// noticeQueue bounds the notices waiting for the guest filesystem; beyond
// it they are dropped and the next one received reads as NoticeAll.
const noticeQueue = 4096

// Polling while no host is connected: a virtio port then reads EOF at
// once. Poll fast for a while after a host left (a supervisor restart or
// a restored snapshot: the new host is usually waiting already).
const (
	fastPoll    = 5 * time.Millisecond
	fastPollFor = 5 * time.Second
	slowPoll    = 100 * time.Millisecond
	// refusedPause is how long to wait after a host refused the protocol
	// version, so a mismatched pair does not spin.
	refusedPause = time.Second
)

// NewClient starts a client that obtains connections from open: a fresh
// open of the fs port each time, so that a write left blocked by a host
// that went away is released.
func NewClient(open func() (io.ReadWriteCloser, error), logger *log.Logger) *Client {
	if logger == nil {
		logger = log.New(io.Discard, "", 0)
	}
	c := &Client{open: open, log: logger, up: make(chan struct{}), done: make(chan struct{}), exited: make(chan struct{}),
		notices: make(chan Notice, noticeQueue)}
	go c.run()
	return c
}

// Close drops the connection and fails waiting and future requests with
// ENOTCONN.
func (c *Client) Close() error {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		close(c.done)
		if c.cur != nil {
			c.cur.rw.Close()
		}
	}
	c.mu.Unlock()
	<-c.exited
	return nil
}

// Instance returns the host provider instance of the current connection
// (0 while disconnected).
func (c *Client) Instance() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return 0
	}
	return c.cur.instance
}

// Version returns the protocol version of the current connection (0 while
// disconnected): 2 and more mean the host sends notices.
func (c *Client) Version() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return 0
	}
	return c.cur.version
}

// Notices delivers the host's notices, in order. When the queue was full
// a notice was dropped: the receiver must then treat the notice it gets
// as NoticeAll for every mount, which Notice reports through Overflowed.
func (c *Client) Notices() <-chan Notice { return c.notices }

// Overflowed reports (once) that notices were dropped since the last
// call; call it after each receive from Notices.
func (c *Client) Overflowed() bool { return c.overflow.Swap(false) }

func (c *Client) notice(n Notice) {
	select {
	case c.notices <- n:
	default:
		c.overflow.Store(true)
	}
}

func (c *Client) run() {
	defer close(c.exited)
	lastHost := time.Now()
	lastErr := ""
	sleep := func(d time.Duration) bool {
		select {
		case <-c.done:
			return false
		case <-time.After(d):
			return true
		}
	}
	poll := func() bool {
		if time.Since(lastHost) < fastPollFor {
			return sleep(fastPoll)
		}
		return sleep(slowPoll)
	}
	for {
		select {
		case <-c.done:
			return
		default:
		}
		rw, err := c.open()
		if err != nil {
			if err.Error() != lastErr { // a missing port fails every poll
				c.log.Printf("fs port: %v", err)
				lastErr = err.Error()
			}
			if !sleep(slowPoll) {
				return
			}
			continue
		}
		// Close must be able to interrupt the handshake.
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			rw.Close()
			return
		}
		c.cur = &conn{rw: rw} // not published: up stays open
		c.mu.Unlock()
		// A host may be connected and in the middle of the previous
		// client's frames: make it resynchronise. (With no host
		// connected, this waits for one.)
		_, err = rw.Write(Breaker())
		var br *bufio.Reader
		if err == nil {
			br, err = GuestHandshake(rw)
		}
		if err != nil {
			rw.Close()
			c.setCur(nil)
			if !errors.Is(err, agentproto.ErrNoHandshake) {
				c.log.Printf("fs port handshake: %v", err)
			}
			if !poll() {
				return
			}
			continue
		}
		lastHost = time.Now()
		cn := newConn(rw)
		// Unpublish in the same step that marks the connection lost, so
		// that a retrying Call never picks a dead connection again.
		cn.onClose = func() { c.unpublish(cn) }
		go cn.readLoop(br, c.log, c.notice)
		rep, err := cn.roundTrip(&Request{Op: OpInit, Version: Version})
		if err == nil && rep.Errno == syscall.EPROTONOSUPPORT {
			// An older host: speak its version, without notices.
			rep, err = cn.roundTrip(&Request{Op: OpInit, Version: MinVersion})
		}
		if err == nil && rep.Errno != 0 {
			c.log.Printf("fs host refused protocol version %d: %v", Version, rep.Errno)
			cn.close()
			c.setCur(nil)
			if !sleep(refusedPause) {
				return
			}
			continue
		}
		if err != nil {
			cn.close()
			c.setCur(nil)
			continue
		}
		cn.instance, cn.version = rep.Instance, rep.Version
		if !c.publish(cn) {
			cn.close()
			return
		}
		c.notice(Notice{Kind: NoticeAll})
		<-cn.lost
		c.unpublish(cn) // in case it was lost before it was published
		lastHost = time.Now()
	}
}

func (c *Client) setCur(cn *conn) {
	c.mu.Lock()
	c.cur = cn
	c.mu.Unlock()
}

func (c *Client) publish(cn *conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	select {
	case <-cn.lost:
		return true // lost already: run moves on to the next connection
	default:
	}
	c.cur = cn
	close(c.up)
	return true
}

func (c *Client) unpublish(cn *conn) {
	c.mu.Lock()
	if c.cur == cn {
		c.cur = nil
		select {
		case <-c.up:
			c.up = make(chan struct{})
		default: // never published
		}
	}
	c.mu.Unlock()
}

// wait returns the current connection, waiting for one.
func (c *Client) wait(ctx context.Context) (*conn, syscall.Errno) {
	for {
		c.mu.Lock()
		up, closed := c.up, c.closed
		var cn *conn
		select {
		case <-up:
			cn = c.cur
		default:
		}
		c.mu.Unlock()
		if closed {
			return nil, syscall.ENOTCONN
		}
		if cn != nil {
			return cn, 0
		}
		select {
		case <-up:
		case <-c.done:
		case <-ctx.Done():
			return nil, syscall.EINTR
		}
	}
}

// Call sends req (its Tag is set here) and returns the reply. The errno
// is the reply's, or EIO/EINTR/ENOTCONN when no reply could be had; the
// reply is nil then.
func (c *Client) Call(ctx context.Context, req *Request) (*Reply, syscall.Errno) {
	for {
		cn, errno := c.wait(ctx)
		if errno != 0 {
			return nil, errno
		}
		req.Tag = c.tags.Add(1)
		rep, err := cn.roundTrip(req)
		if err == nil {
			return rep, rep.Errno
		}
		if errors.Is(err, errEncode) {
			return nil, syscall.EINVAL
		}
		if !req.Op.Idempotent() {
			return nil, syscall.EIO
		}
	}
}

var (
	errLost   = errors.New("fs connection lost")
	errEncode = errors.New("cannot encode request")
)

// conn is one resynchronised connection.
type conn struct {
	rw       io.ReadWriteCloser
	instance uint64
	version  uint32
	wmu      sync.Mutex
	lost     chan struct{}
	once     sync.Once
	onClose  func()

	mu      sync.Mutex
	pending map[uint64]chan *Reply
}

func newConn(rw io.ReadWriteCloser) *conn {
	return &conn{rw: rw, lost: make(chan struct{}), pending: map[uint64]chan *Reply{}}
}

func (cn *conn) close() {
	cn.once.Do(func() {
		if cn.onClose != nil {
			cn.onClose()
		}
		cn.rw.Close()
		close(cn.lost)
	})
}

var framePool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func (cn *conn) roundTrip(req *Request) (*Reply, error) {
	ch := make(chan *Reply, 1)
	cn.mu.Lock()
	cn.pending[req.Tag] = ch
	cn.mu.Unlock()
	defer func() {
		cn.mu.Lock()
		delete(cn.pending, req.Tag)
		cn.mu.Unlock()
	}()

	bp := framePool.Get().(*[]byte)
	frame, err := AppendRequest(*bp, req)
	if err != nil {
		framePool.Put(bp)
		return nil, errors.Join(errEncode, err)
	}
	cn.wmu.Lock()
	_, err = cn.rw.Write(frame)
	cn.wmu.Unlock()
	if cap(frame) <= 2*MaxFrame {
		*bp = frame[:0]
		framePool.Put(bp)
	}
	if err != nil {
		cn.close()
		return nil, errLost
	}
	select {
	case rep := <-ch:
		return rep, nil
	case <-cn.lost:
		// A reply may have raced the loss.
		select {
		case rep := <-ch:
			return rep, nil
		default:
		}
		return nil, errLost
	}
}

// readLoop delivers replies (and notices, to notice) until the connection
// fails or the stream stops making sense; either way the connection is
// closed, and the client resynchronises on a new one.
func (cn *conn) readLoop(br *bufio.Reader, logger *log.Logger, notice func(Notice)) {
	defer cn.close()
	fr := NewFrameReader(br, MaxFrame)
	for {
		frame, err := fr.Next(nil)
		if err != nil {
			if !closedErr(err) {
				logger.Printf("fs port: %v; resynchronising", err)
			}
			return
		}
		rep, err := DecodeReply(frame)
		if err != nil {
			logger.Printf("fs port: %v; resynchronising", err)
			return
		}
		if rep.Op == OpNotify {
			if rep.Tag == 0 && rep.Errno == 0 {
				notice(Notice{Mount: rep.Mount, Path: rep.Path, Kind: rep.Flags})
			}
			continue
		}
		cn.mu.Lock()
		ch := cn.pending[rep.Tag]
		cn.mu.Unlock()
		if ch != nil {
			select {
			case ch <- rep:
			default: // a second reply for one tag: ignore it
			}
		}
	}
}

// closedErr reports errors that only say the connection ended.
func closedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed)
}
