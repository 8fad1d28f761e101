package ui

import (
	"time"

	"github.com/gondolin/gondolin/sessions"
)

// DefaultHost is the name of the one host of a dashboard made with New:
// the contexts' name for this machine.
const DefaultHost = "default"

// Host is one supervisor the dashboard shows: this machine's, or one
// reached over SSH (a context, `gondolin context`).
type Host struct {
	// Name is what the HOST column and the new-session form call it.
	Name    string
	Backend Backend
	// Attach joins the user's terminal to one of this host's
	// terminals; nil: Enter says attaching is not available.
	Attach AttachFunc
	// Elsewhere: the host is another machine, whose supervisor checks
	// the new-session form's mount directories (here only their syntax
	// is).
	Elsewhere bool
}

// host is a Host and what the dashboard knows of it. Each host has its
// own list request, event stream and backoff, so that one that is slow
// or gone holds up no other.
type host struct {
	Host
	multi bool // the dashboard shows more than one host

	list   []sessions.Session // as last listed; kept while unreachable
	loaded bool               // a list has come in
	err    error              // the last list failed

	// One list request at a time; events that arrive meanwhile set
	// listAgain so that one more follows, however many arrived.
	// retrying: a list after a failed one is scheduled.
	listing, listAgain, retrying bool

	events     <-chan sessions.Event
	eventsUp   bool
	eventsNote string // why the event stream is down
	backoff    time.Duration
}

// unreachable says why h cannot be reached (its list failed, or its
// event stream is down), or "" when it answers. The reason may quote the
// far side's output (ssh's, a shell's): it is made safe to print.
func (h *host) unreachable() string {
	switch {
	case h.err != nil:
		return oneLine(h.err.Error())
	case !h.eventsUp && h.eventsNote != "":
		return h.eventsNote
	}
	return ""
}

// hostNamed returns the host called name, or nil.
func (m *Model) hostNamed(name string) *host {
	for _, h := range m.hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// hostNames lists the hosts' names, the default first.
func (m *Model) hostNames() []string {
	names := make([]string, len(m.hosts))
	for i, h := range m.hosts {
		names[i] = h.Name
	}
	return names
}

// row is one line of the table: a session and its host. down, when set,
// says the host cannot be reached: the session is as last listed, or
// (with no ID) the row only stands for the host.
type row struct {
	sessions.Session
	host *host
	down string
}

// key names a row across hosts (two contexts may even reach the same
// supervisor, and list the same IDs).
func (r row) key() string { return rowKey(r.host, r.ID) }

func rowKey(h *host, id string) string {
	if h == nil {
		return id
	}
	return h.Name + "/" + id
}

// placeholder reports whether r stands for a host that has no session
// to show (not listed yet, or unreachable before it ever was).
func (r row) placeholder() bool { return r.ID == "" }

// rank orders rows: live (and being made) first, then stale, then
// stopped, then unreachable hosts'.
func (r row) rank() int {
	if r.down != "" || r.placeholder() {
		return 3
	}
	switch r.State {
	case sessions.Live, sessions.Creating:
		return 0
	case sessions.Stale:
		return 1
	}
	return 2
}

// multi says whether the dashboard shows more than one host (and so
// names each row's).
func (m *Model) multi() bool { return len(m.hosts) > 1 }
