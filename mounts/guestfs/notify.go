package guestfs

import (
	"strings"
	"sync"

	"github.com/gondolin/gondolin/mounts/fsproto"
	"github.com/hanwen/go-fuse/v2/fs"
)

// The host reports what changes on its side (fsproto.OpNotify), and the
// guest drops what it cached of it, through the kernel's FUSE
// invalidation: the next access asks the host again. A notice names a
// path; the inode tree go-fuse keeps (the names the kernel looked up)
// finds what the kernel may cache under it. What was never looked up is
// not cached, and needs nothing.
//
// Notices are applied by a goroutine of their own, never by the one that
// reads replies: an invalidation waits for the kernel's lock on the
// directory, which an operation in progress may hold while it waits for
// its reply.

// router applies the notices of one client to its mounts.
type router struct {
	c    *fsproto.Client
	done chan struct{}
	exit chan struct{}

	mu   sync.Mutex
	byID map[string][]*Mounted
}

func newRouter(c *fsproto.Client) *router {
	r := &router{c: c, done: make(chan struct{}), exit: make(chan struct{}), byID: map[string][]*Mounted{}}
	go r.run()
	return r
}

func (r *router) add(m *Mounted) {
	r.mu.Lock()
	r.byID[m.st.m.ID] = append(r.byID[m.st.m.ID], m)
	r.mu.Unlock()
}

// stop ends the router and waits for it.
func (r *router) stop() {
	close(r.done)
	<-r.exit
}

func (r *router) mounts(id string) []*Mounted {
	r.mu.Lock()
	defer r.mu.Unlock()
	if id == "" {
		var all []*Mounted
		for _, ms := range r.byID {
			all = append(all, ms...)
		}
		return all
	}
	return append([]*Mounted(nil), r.byID[id]...)
}

func (r *router) run() {
	defer close(r.exit)
	for {
		var n fsproto.Notice
		select {
		case <-r.done:
			return
		case n = <-r.c.Notices():
		}
		if r.c.Overflowed() {
			n = fsproto.Notice{Kind: fsproto.NoticeAll} // some were lost
		}
		for _, m := range r.mounts(n.Mount) {
			m.st.apply(n)
		}
	}
}

// apply drops what n says changed.
func (st *state) apply(n fsproto.Notice) {
	st.noticed.Add(1)
	switch n.Kind {
	case fsproto.NoticeEntry:
		parent := st.find(parentOf(n.Path))
		if parent == nil {
			return
		}
		name := n.Path[strings.LastIndexByte(n.Path, '/')+1:]
		if child := parent.GetChild(name); child != nil {
			child.NotifyContent(0, 0) // still open somewhere, perhaps
		}
		parent.NotifyEntry(name)
		parent.NotifyContent(-1, 0) // its times and link count
	case fsproto.NoticeInode:
		if in := st.find(n.Path); in != nil {
			in.NotifyContent(0, 0)
		}
	case fsproto.NoticeUnwatched:
		st.unwatched.Store(true)
		st.forgetAll()
	default: // NoticeAll, and kinds of a newer host: forget everything
		st.forgetAll()
	}
}

func parentOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}

// find returns the inode the kernel knows at p, or nil.
func (st *state) find(p string) *fs.Inode {
	in := &st.root.Inode
	if p == "" {
		return in
	}
	for _, name := range strings.Split(p, "/") {
		if in = in.GetChild(name); in == nil {
			return nil
		}
	}
	return in
}

// forgetAll drops every name and attribute the kernel caches of the
// mount, and the data of its files.
func (st *state) forgetAll() {
	stack := []*fs.Inode{&st.root.Inode}
	for len(stack) > 0 {
		in := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for name, child := range in.Children() {
			stack = append(stack, child)
			child.NotifyContent(0, 0)
			in.NotifyEntry(name)
		}
		in.NotifyContent(-1, 0)
	}
}
