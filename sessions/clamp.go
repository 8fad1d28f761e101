package sessions

import "strconv"

// The terminal emulator (x/vt) runs some counted control sequences in
// loops as long as their count: `printf 'A\033[999999999b'` (repeat the
// last character a billion times) kept the supervisor busy for minutes,
// and with it everyone's `gondolin list`. A ctlClamp sits in front of the
// emulator and rewrites every CSI sequence with its numbers clamped: a
// count to the screen's size (nothing beyond it can show), any other
// number to maxParam (private modes such as ?1049 keep their four digits).
// Everything else passes through unchanged.

const (
	maxParam  = 9999
	maxParams = 32 // more than any sequence has; the rest are dropped
	esc       = 0x1b
	csi8      = 0x9b // the 8-bit CSI
)

// countFinals are the CSI finals whose first parameter is a count the
// emulator loops over: REP, ECH, CHT, CBT, ICH, DCH, IL, DL, SU, SD and
// the cursor moves.
var countFinals = [256]bool{'b': true, 'X': true, 'I': true, 'Z': true, '@': true, 'P': true, 'L': true,
	'M': true, 'S': true, 'T': true, 'A': true, 'B': true, 'C': true, 'D': true, 'E': true, 'F': true,
	'a': true, 'e': true, '`': true, 'G': true, 'd': true}

type clampState uint8

const (
	ground clampState = iota
	escape
	inCSI
)

// ctlClamp is the streaming rewriter; its state spans writes, so a
// sequence split across two reads is still rewritten.
type ctlClamp struct {
	state   clampState
	intro   []byte // "\x1b[" or "\x9b"
	private []byte // '<' '=' '>' '?' markers
	params  []int
	seps    []byte // the separator after each parameter (';' or ':')
	num     int
	digits  bool
	inter   []byte // intermediate bytes
	out     []byte
}

// filter returns p with every CSI sequence's numbers clamped for a screen
// of rows x cols. The result is valid until the next call.
func (c *ctlClamp) filter(p []byte, rows, cols int) []byte {
	if c.state == ground && !hasIntroducer(p) {
		return p
	}
	c.out = c.out[:0]
	for _, b := range p {
		switch c.state {
		case ground:
			switch b {
			case esc:
				c.state = escape
			case csi8:
				c.begin([]byte{csi8})
			default:
				c.out = append(c.out, b)
			}
		case escape:
			if b == '[' {
				c.begin([]byte{esc, '['})
				continue
			}
			c.state = ground
			c.out = append(c.out, esc)
			if b == esc {
				c.state = escape
				continue
			}
			c.out = append(c.out, b)
		case inCSI:
			c.csiByte(b, rows, cols)
		}
	}
	return c.out
}

func hasIntroducer(p []byte) bool {
	for _, b := range p {
		if b == esc || b == csi8 {
			return true
		}
	}
	return false
}

func (c *ctlClamp) begin(intro []byte) {
	c.state = inCSI
	c.intro = append(c.intro[:0], intro...)
	c.private, c.params, c.seps, c.inter = c.private[:0], c.params[:0], c.seps[:0], c.inter[:0]
	c.num, c.digits = 0, false
}

// csiByte takes one byte of a CSI sequence, as a terminal's parser does:
// controls inside it are executed (passed through) without ending it; ESC
// starts a new escape and CAN/SUB abandon it.
func (c *ctlClamp) csiByte(b byte, rows, cols int) {
	switch {
	case b >= '0' && b <= '9':
		c.num = min(c.num*10+int(b-'0'), 1<<30)
		c.digits = true
	case b == ';' || b == ':':
		c.param(b)
	case b >= '<' && b <= '?':
		c.private = append(c.private, b)
	case b >= 0x20 && b <= 0x2f:
		c.inter = append(c.inter, b)
	case b >= 0x40 && b <= 0x7e:
		if c.digits || len(c.params) > 0 {
			c.param(0)
		}
		c.emit(b, rows, cols)
		c.state = ground
	case b == esc:
		c.state = escape // the partial sequence is dropped, as a terminal drops it
	case b == 0x18 || b == 0x1a:
		c.state = ground
		c.out = append(c.out, b)
	case b < 0x20 || b == 0x7f:
		c.out = append(c.out, b)
	default: // not part of any sequence: abandon it, keep the byte
		c.state = ground
		c.out = append(c.out, b)
	}
}

func (c *ctlClamp) param(sep byte) {
	if len(c.params) < maxParams {
		n := c.num
		if !c.digits {
			n = -1 // an empty parameter keeps its default
		}
		c.params = append(c.params, n)
		c.seps = append(c.seps, sep)
	}
	c.num, c.digits = 0, false
}

func (c *ctlClamp) emit(final byte, rows, cols int) {
	limit := maxParam
	if countFinals[final] && len(c.private) == 0 {
		limit = max(rows*cols, 1)
	}
	c.out = append(c.out, c.intro...)
	c.out = append(c.out, c.private...)
	for i, n := range c.params {
		if n >= 0 {
			c.out = strconv.AppendInt(c.out, int64(min(n, limit)), 10)
		}
		if i < len(c.params)-1 {
			c.out = append(c.out, c.seps[i])
		}
	}
	c.out = append(c.out, c.inter...)
	c.out = append(c.out, final)
}
