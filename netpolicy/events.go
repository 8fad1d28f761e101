package netpolicy

import (
	"context"
	"sync"
	"time"
)

// Event is one policy decision. It names secrets but never holds a value:
// everything in it comes from the guest's side of the request (which only
// ever has placeholders) or from the policy's names and patterns.
type Event struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Action Action    `json:"action"`
	// Proto is http, https, ws, wss, tcp (a raw or mapped flow), ssh
	// or dns.
	Proto string `json:"proto"`
	// Method is the HTTP method, for SSH what the guest asked for
	// (connect, exec, shell, pty-req, subsystem, direct-tcpip, ...), for
	// a DNS name the policy refused the query type (A, TXT, ...).
	Method string `json:"method,omitempty"`
	Host   string `json:"host,omitempty"`
	Port   uint16 `json:"port,omitempty"`
	// Path is the request path without its query, cut to 256 bytes.
	Path string `json:"path,omitempty"`
	// User is the SSH login name upstream, the host's choice (a guest
	// that asked for another is refused, and its name, quoted, is in
	// Reason).
	User string `json:"user,omitempty"`
	// Command is an SSH exec command (as sent upstream, or for a refused
	// one as the guest sent it: guest bytes) or the subsystem name, cut
	// to 256 bytes.
	Command string `json:"command,omitempty"`
	// Rule is the policy entry that decided ("allow *.github.com",
	// "tcp-map db:5432=127.0.0.1:5432", ...).
	Rule string `json:"rule,omitempty"`
	// Secrets names the secrets substituted into the request (or, for a
	// blocked request, the ones that caused the block).
	Secrets []string `json:"secrets,omitempty"`
	Reason  string   `json:"reason,omitempty"`
	// Status is the HTTP status the guest got when the host answered
	// itself (blocked requests, upstream errors).
	Status int `json:"status,omitempty"`
}

// Action is what happened to a request or flow.
type Action string

const (
	Allowed Action = "allow" // forwarded upstream
	Blocked Action = "block" // refused by policy or limits
	Failed  Action = "error" // allowed, but the upstream could not be reached
)

// eventLog keeps the last events in a ring and fans new ones out to
// subscribers. A slow subscriber loses events rather than slowing the
// network: sends never block.
type eventLog struct {
	mu     sync.Mutex
	ring   []Event
	next   int
	full   bool
	seq    uint64
	subs   map[chan Event]struct{}
	closed bool
	done   chan struct{} // closed by close, ends subscribers' watchers
}

func newEventLog(size int) *eventLog {
	return &eventLog{ring: make([]Event, size), subs: map[chan Event]struct{}{}, done: make(chan struct{})}
}

func (l *eventLog) add(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	if len(e.Path) > 256 {
		e.Path = e.Path[:256]
	}
	if len(e.Command) > 256 {
		e.Command = e.Command[:256]
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	e.Seq = l.seq
	l.ring[l.next] = e
	l.next = (l.next + 1) % len(l.ring)
	if l.next == 0 {
		l.full = true
	}
	for ch := range l.subs {
		select {
		case ch <- e:
		default:
		}
	}
}

// snapshotLocked returns the ring's events, oldest first.
func (l *eventLog) snapshotLocked() []Event {
	var out []Event
	if l.full {
		out = append(out, l.ring[l.next:]...)
	}
	return append(out, l.ring[:l.next]...)
}

func (l *eventLog) events() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.snapshotLocked()
}

// subscribe returns the backlog and a channel of the events after it,
// atomically, so a follower sees every event exactly once. The channel is
// closed when ctx ends or the log closes.
func (l *eventLog) subscribe(ctx context.Context) ([]Event, <-chan Event) {
	ch := make(chan Event, 256)
	l.mu.Lock()
	backlog := l.snapshotLocked()
	if l.closed {
		l.mu.Unlock()
		close(ch)
		return backlog, ch
	}
	l.subs[ch] = struct{}{}
	l.mu.Unlock()
	go func() {
		select {
		case <-ctx.Done():
			l.unsubscribe(ch)
		case <-l.done:
		}
	}()
	return backlog, ch
}

func (l *eventLog) unsubscribe(ch chan Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.subs[ch]; ok {
		delete(l.subs, ch)
		close(ch)
	}
}

func (l *eventLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	close(l.done)
	for ch := range l.subs {
		delete(l.subs, ch)
		close(ch)
	}
}
