package termio

import (
	"fmt"
	"strings"
)

// DefaultDetachKeys is Ctrl-], as in telnet and gondolin's reference CLI.
const DefaultDetachKeys = "ctrl-]"

// ParseDetachKeys reads docker's spelling of a key sequence: keys joined
// by commas, each a single character or ctrl-<c> ("ctrl-p,ctrl-q").
func ParseDetachKeys(s string) ([]byte, error) {
	if s == "" {
		return nil, fmt.Errorf("--detach-keys: empty key sequence")
	}
	var seq []byte
	for _, key := range strings.Split(s, ",") {
		switch {
		case len(key) == 1 && key[0] >= 0x20 && key[0] < 0x7f:
			seq = append(seq, key[0])
		case strings.HasPrefix(key, "ctrl-") && len(key) == len("ctrl-")+1:
			c := key[len(key)-1]
			switch {
			case c >= 'a' && c <= 'z':
				seq = append(seq, c-'a'+1)
			case c >= '@' && c <= '_': // @, A-Z, [, \, ], ^, _
				seq = append(seq, c-'@')
			default:
				return nil, fmt.Errorf("--detach-keys: unknown key %q", key)
			}
		default:
			return nil, fmt.Errorf("--detach-keys: unknown key %q (use a character or ctrl-<c>, joined by commas)", key)
		}
	}
	return seq, nil
}

// DetachMatcher watches keystrokes for a detach sequence. Bytes that
// start the sequence are held back until it is clear whether they
// complete it; if not, they pass through.
type DetachMatcher struct {
	seq  []byte
	held []byte
}

// NewDetachMatcher returns a matcher for seq.
func NewDetachMatcher(seq []byte) *DetachMatcher { return &DetachMatcher{seq: seq} }

// Feed returns the bytes of p to forward and whether the sequence was
// typed (bytes after it are dropped: the client is leaving).
func (m *DetachMatcher) Feed(p []byte) (forward []byte, detach bool) {
	for _, b := range p {
		if b == m.seq[len(m.held)] {
			m.held = append(m.held, b)
			if len(m.held) == len(m.seq) {
				m.held = m.held[:0]
				return forward, true
			}
			continue
		}
		if len(m.held) > 0 {
			forward = append(forward, m.held...)
			m.held = m.held[:0]
			if b == m.seq[0] {
				m.held = append(m.held, b)
				continue
			}
		}
		forward = append(forward, b)
	}
	return forward, false
}
