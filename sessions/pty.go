package sessions

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/charmbracelet/x/vt"
)

// clientBuffer is how many output chunks an attached client may fall
// behind before it is skipped ahead to a repaint of the current screen:
// one slow client must never hold up the guest or the other clients.
const clientBuffer = 512

// pty is the supervisor's side of one guest terminal: it keeps a terminal
// emulator fed with everything the guest printed (so a client that
// attaches later sees the current screen, not a blank one) and fans the
// output out to every attached client.
type pty struct {
	id      uint64
	argv    []string
	created time.Time
	main    bool

	// emuMu serialises everything that touches the emulator (feeding
	// it, repaints, resizes) and is taken before mu; mu guards the rest
	// and is never held while the emulator works, so that listing a
	// session never waits for its terminal.
	emuMu sync.Mutex
	emu   *vt.Emulator
	clamp ctlClamp
	// drained is closed when the goroutine that drains the emulator's
	// answers returns; closed is set (under emuMu) once close has run.
	drained chan struct{}
	closed  bool

	mu      sync.Mutex
	rows    uint16
	cols    uint16
	offset  uint64 // output bytes consumed so far (the agent's ring offset)
	running bool
	exit    *int
	clients map[*ptyClient]struct{}
	stdin   io.WriteCloser // the agent stdin stream, opened on first input
	changed func()         // called (rate limited by the caller) on new output
}

type ptyClient struct {
	out    chan []byte
	lagged bool
	exited chan struct{} // closed when the terminal's process exits
}

func newPTY(id uint64, argv []string, created time.Time, main bool, rows, cols uint16) *pty {
	if rows == 0 || cols == 0 {
		rows, cols = 24, 80
	}
	p := &pty{id: id, argv: argv, created: created, main: main, rows: rows, cols: cols, running: true,
		clients: map[*ptyClient]struct{}{}}
	p.emu, p.drained = newEmulator(rows, cols)
	return p
}

// newEmulator returns an emulator and a channel closed when the goroutine
// draining it has returned (see closeEmulator).
func newEmulator(rows, cols uint16) (*vt.Emulator, chan struct{}) {
	emu := vt.NewEmulator(int(cols), int(rows))
	drained := make(chan struct{})
	// The emulator answers terminal queries on its input pipe; the real
	// terminals of attached clients answer the guest, so drop these. The
	// pipe is synchronous: without a reader, a query would block output.
	go func() {
		defer close(drained)
		io.Copy(io.Discard, emu)
	}()
	return emu, drained
}

// closeEmulator ends the draining goroutine and closes emu. The pipe is
// closed first and the goroutine waited for, because emu.Close sets a
// flag that emu.Read reads without a lock (x/vt v0.1.0): closing it
// while the goroutine may be in Read is a data race.
func closeEmulator(emu *vt.Emulator, drained <-chan struct{}) {
	if c, ok := emu.InputPipe().(io.Closer); ok {
		c.Close()
		<-drained
	}
	emu.Close()
}

// close releases the emulator and its goroutine when the terminal's
// session goes (removed, or the supervisor closing): the screen is not
// needed any more. Output that arrives later is dropped.
func (p *pty) close() {
	p.emuMu.Lock()
	defer p.emuMu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	closeEmulator(p.emu, p.drained)
}

// output feeds bytes that start at offset in the guest's output ring.
// After a reattach the agent may replay bytes already seen: skip them.
// Control sequences are clamped (see ctlClamp) for the emulator and for
// every attached client's real terminal alike.
func (p *pty) output(offset uint64, data []byte) {
	p.emuMu.Lock()
	defer p.emuMu.Unlock()
	if p.closed {
		return
	}
	p.mu.Lock()
	end := offset + uint64(len(data))
	if end <= p.offset {
		p.mu.Unlock()
		return
	}
	if offset < p.offset {
		data = data[p.offset-offset:]
	}
	p.offset = end
	rows, cols := int(p.rows), int(p.cols)
	p.mu.Unlock()
	data = p.clamp.filter(data, rows, cols)
	p.emu.Write(data)
	chunk := append([]byte(nil), data...)
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.clients {
		if c.lagged {
			continue
		}
		select {
		case c.out <- chunk:
		default:
			c.lagged = true
		}
	}
	if p.changed != nil {
		p.changed()
	}
}

// exited marks the terminal's process as gone.
func (p *pty) exited(code int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running {
		return
	}
	p.running = false
	p.exit = &code
	for c := range p.clients {
		close(c.exited)
	}
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
}

// attach registers a client and returns the repaint that brings its
// terminal to the current screen.
func (p *pty) attach() (*ptyClient, []byte) {
	p.emuMu.Lock()
	defer p.emuMu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	c := &ptyClient{out: make(chan []byte, clientBuffer), exited: make(chan struct{})}
	if !p.running {
		close(c.exited)
	}
	p.clients[c] = struct{}{}
	return c, p.repaintLocked()
}

func (p *pty) detach(c *ptyClient) {
	p.mu.Lock()
	delete(p.clients, c)
	p.mu.Unlock()
}

// catchUp is called by a client's writer when its queue is empty: a
// client that lagged gets a repaint and rejoins the live stream.
func (p *pty) catchUp(c *ptyClient) []byte {
	p.emuMu.Lock()
	defer p.emuMu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if !c.lagged {
		return nil
	}
	c.lagged = false
	return p.repaintLocked()
}

// repaintLocked needs emuMu and mu.
func (p *pty) repaintLocked() []byte {
	pos := p.emu.CursorPosition()
	return []byte("\x1b[H\x1b[2J" + strings.ReplaceAll(p.emu.Render(), "\n", "\r\n") +
		fmt.Sprintf("\x1b[%d;%dH", pos.Y+1, pos.X+1))
}

// resize changes the emulator's size (the caller resizes the guest's).
func (p *pty) resize(rows, cols uint16) {
	p.emuMu.Lock()
	defer p.emuMu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rows, p.cols = rows, cols
	p.emu.Resize(int(cols), int(rows))
}

// screen renders the current contents.
func (p *pty) screen() Screen {
	p.emuMu.Lock()
	defer p.emuMu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	pos := p.emu.CursorPosition()
	return Screen{Rows: int(p.rows), Cols: int(p.cols), Text: p.emu.String(), ANSI: p.emu.Render(),
		Cursor: [2]int{pos.Y, pos.X}, Offset: p.offset}
}

func (p *pty) info() PTY {
	p.mu.Lock()
	defer p.mu.Unlock()
	return PTY{ID: p.id, Argv: p.argv, Created: p.created, Main: p.main, Running: p.running,
		ExitCode: p.exit, Rows: p.rows, Cols: p.cols, Clients: len(p.clients)}
}

func (p *pty) record() PTYRecord {
	return PTYRecord{ID: p.id, Argv: p.argv, Created: p.created, Main: p.main}
}
