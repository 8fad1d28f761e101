package mounts

import (
	"encoding/binary"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/mounts/fsproto"
	"golang.org/x/sys/unix"
)

// Host-driven invalidation. A version 2 guest caches names and attributes
// for long (see guestfs), so the host must tell it when something changes
// on its side. The server watches, with inotify, every directory whose
// children the guest has asked about (the parent of every path it stats
// or opens, every directory it lists), before answering: a change that
// lands after the answer is then always reported. A watch on a directory
// reports its children's creation, removal, renames and changes of
// contents and attributes, and its own.
//
// The guest's own operations make the same events. To keep the guest's
// caches warm, the server remembers what it last told the guest about
// each path (known) and, for each event, compares the path's state with
// it: the same state is the guest's own doing (or nothing the guest does
// not know) and is not reported. Otherwise the guest gets a notice and
// the new state becomes known, so a burst of events costs one notice.
// (A host write that lands in the instant between a guest's write to the
// same file and the server's look at the result is taken for the
// guest's: writers on both sides of one file are not ordered.)
//
// The process has one inotify instance (hub), shared by every server, so
// a supervisor with many VMs takes one of the user's few instances (128
// by default) and at most half of the user's watches: editors and build
// tools on the host need the rest. Bounds: the watches of one server
// (maxWatches, and at most a quarter of the shared bound, so a guest that
// spends its own leaves the others theirs) and of all (half of
// fs.inotify.max_user_watches), and the memory of the paths a server
// remembers (maxKnownBytes, only paths in watched directories: an
// unknown path is always reported, which is safe). A mount whose
// directory cannot be watched (budget spent, or no permission) becomes
// unwatched for good: the guest is told (NoticeUnwatched) and caches it
// for short again. Notices leave through a queue per server, so a guest
// that stops reading stalls only its own.
//
// What inotify does not see is not reported: changes made by another
// machine to a network filesystem, and changes through a hard link of a
// file from outside the watched directories. The guest's long cache
// lifetime (a minute) bounds how long those stay stale.
const (
	maxWatches = 1 << 14
	// maxKnownBytes bounds the memory of what a server remembers the
	// guest knows (paths are up to 4 KiB each).
	maxKnownBytes = 16 << 20
	// settle is how long the hub waits after a batch of events for more:
	// the guest's own operation is then done and known, and a burst of
	// writes costs one notice.
	settle = 3 * time.Millisecond
	// noticeQueue bounds the notices waiting for one guest; beyond it
	// they are dropped and the guest told to forget everything.
	noticeQueue = 1024
)

const watchMask = unix.IN_ATTRIB | unix.IN_MODIFY | unix.IN_CLOSE_WRITE | unix.IN_CREATE |
	unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_DELETE_SELF |
	unix.IN_MOVE_SELF | unix.IN_EXCL_UNLINK | unix.IN_ONLYDIR

// watchedDir is a directory of one server's mount under a watch
// descriptor.
type watchedDir struct {
	w   *watcher
	m   *hostMount
	dir string
}

type pathKey struct {
	mount string
	path  string
}

// pathState is what the guest may cache about a path: which file is there
// (or none), and its size, times, mode and link count. Access times are
// left out: reads change them.
type pathState struct {
	absent     bool
	ino, gen   uint64
	size       uint64
	mtime      fsproto.Time
	ctime      fsproto.Time
	mode, nlnk uint32
}

// knownState is what the guest was told about a path, and the number of
// the last report about it (0: none).
type knownState struct {
	st       pathState
	reported uint64
}

func stateOf(a *fsproto.Attr) pathState {
	return pathState{ino: a.Ino, gen: a.Gen, size: a.Size, mtime: a.Mtime, ctime: a.Ctime, mode: a.Mode, nlnk: a.Nlink}
}

// inotifyHub is the process's inotify instance; it exists while some
// server watches.
type inotifyHub struct {
	mu    sync.Mutex
	f     *os.File
	done  chan struct{}
	byWD  map[int32][]watchedDir
	limit int // watches of all servers together
}

var hub = &inotifyHub{byWD: map[int32][]watchedDir{}, limit: userWatchLimit()}

// userWatchLimit is half of fs.inotify.max_user_watches (of 8192, the
// kernel's smallest default, when it cannot be read).
func userWatchLimit() int {
	n := 8192
	if b, err := os.ReadFile("/proc/sys/fs/inotify/max_user_watches"); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && v > 0 {
			n = v
		}
	}
	return n / 2
}

// watcher watches the directories of one server's mounts. Its maps are
// guarded by hub.mu.
type watcher struct {
	send   func(mount, path string, kind uint32)
	mounts []string // IDs, for NoticeAll after lost notices
	max    int      // maxWatches, but for tests

	byDir      map[pathKey]int32
	known      map[pathKey]knownState
	knownBytes int
	unwatched  map[string]bool // mounts that lost their watching
	closed     bool
	// reported counts the changes reported to the guest; each known path
	// keeps the count of the last one about it (see learned).
	reported uint64
	// busy counts the requests in progress on each path: an event on one
	// waits until what the request told the guest is learned, or it
	// would be taken for a change the guest does not know.
	busy map[pathKey]int

	// life is held shared while the hub looks at a path through one of
	// the server's mount roots, and exclusively by close: the roots
	// close after it.
	life sync.RWMutex
	// Notices wait in queue for this server's own sending goroutine.
	// lost: the queue was full.
	queue chan notice
	lost  atomic.Bool
	sent  chan struct{}
}

type notice struct {
	mount, path string
	kind        uint32
}

// newWatcher makes a server's watcher; send delivers a notice to the
// guest (or drops it when no guest listens).
func newWatcher(send func(mount, path string, kind uint32), mounts []string) *watcher {
	w := &watcher{send: send, mounts: mounts, max: maxWatches, byDir: map[pathKey]int32{},
		known: map[pathKey]knownState{}, busy: map[pathKey]int{}, unwatched: map[string]bool{},
		queue: make(chan notice, noticeQueue), sent: make(chan struct{})}
	go w.sendLoop()
	return w
}

func (w *watcher) sendLoop() {
	defer close(w.sent)
	for n := range w.queue {
		if w.lost.Swap(false) {
			for _, id := range w.mounts {
				w.send(id, "", fsproto.NoticeAll)
			}
		}
		w.send(n.mount, n.path, n.kind)
	}
}

// enqueue queues a notice for the guest; hub.mu is held.
func (w *watcher) enqueue(mount, path string, kind uint32) {
	if w.closed {
		return
	}
	select {
	case w.queue <- notice{mount, path, kind}:
	default:
		w.lost.Store(true)
	}
}

// close drops the watcher's watches and stops it. Close the server's
// connection first: a notice being sent may be waiting on it.
func (w *watcher) close() {
	w.life.Lock()
	hub.mu.Lock()
	if w.closed {
		hub.mu.Unlock()
		w.life.Unlock()
		return
	}
	w.closed = true
	close(w.queue)
	for key, wd := range w.byDir {
		hub.drop(wd, w, key)
	}
	f, done := hub.idle()
	hub.mu.Unlock()
	w.life.Unlock()
	<-w.sent
	if f != nil {
		f.Close()
		<-done
	}
}

// idle takes the instance away when no server watches any more, for the
// caller to close and wait for once hub.mu is released; hub.mu is held.
func (h *inotifyHub) idle() (*os.File, chan struct{}) {
	if len(h.byWD) != 0 || h.f == nil {
		return nil, nil
	}
	f, done := h.f, h.done
	h.f = nil
	return f, done
}

// drop removes w's directory key from wd, and the watch itself when no
// server uses it any more; hub.mu is held.
func (h *inotifyHub) drop(wd int32, w *watcher, key pathKey) {
	delete(w.byDir, key)
	dirs := h.byWD[wd]
	for i, d := range dirs {
		if d.w == w && d.m.id == key.mount && d.dir == key.path {
			dirs = append(dirs[:i:i], dirs[i+1:]...)
			break
		}
	}
	if len(dirs) > 0 {
		h.byWD[wd] = dirs
		return
	}
	delete(h.byWD, wd)
	unix.InotifyRmWatch(int(h.f.Fd()), uint32(wd))
}

// forget drops wd, which the kernel removed; hub.mu is held.
func (h *inotifyHub) forget(wd int32) {
	for _, d := range h.byWD[wd] {
		if key := (pathKey{d.m.id, d.dir}); d.w.byDir[key] == wd {
			delete(d.w.byDir, key)
		}
	}
	delete(h.byWD, wd)
}

// parentOf is the directory holding p ("" for the root and its children).
func parentOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}

func joinPath(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// watchFor watches what the guest will cache from req before it is
// served: the parent of the path it names, or the directory it opens.
func (w *watcher) watchFor(m *hostMount, req *fsproto.Request) {
	switch req.Op {
	case fsproto.OpStat, fsproto.OpOpen, fsproto.OpCreate, fsproto.OpMkdir, fsproto.OpMknod,
		fsproto.OpSymlink, fsproto.OpSetattr, fsproto.OpUnlink, fsproto.OpRmdir:
		if req.Op == fsproto.OpSetattr && req.Handle != 0 {
			return
		}
		w.watch(m, parentOf(req.Path))
	case fsproto.OpOpendir:
		w.watch(m, req.Path)
	case fsproto.OpLink, fsproto.OpRename:
		w.watch(m, parentOf(req.Path))
		w.watch(m, parentOf(req.Path2))
	}
}

// watch adds a watch on directory dir of m, unless it has one. Failing
// for lack of budget (or of an inotify instance) makes the mount
// unwatched; failing because dir is not a directory (any more) changes
// nothing: the operation fails too.
func (w *watcher) watch(m *hostMount, dir string) {
	if checkPath(dir) != 0 {
		return // the request fails too; nothing outside the mount is watched
	}
	key := pathKey{m.id, dir}
	hub.mu.Lock()
	defer hub.mu.Unlock()
	if _, ok := w.byDir[key]; ok || w.unwatched[m.id] || w.closed {
		return
	}
	// One server gets at most a quarter of what all may hold: a guest
	// that spends its budget leaves the others theirs.
	if len(w.byDir) >= min(w.max, hub.limit/4) || len(hub.byWD) >= hub.limit || !hub.start() {
		w.lose(m)
		return
	}
	fd := m.root
	if dir != "" {
		var errno syscall.Errno
		if fd, errno = m.openDir(dir); errno != 0 {
			return
		}
		defer unix.Close(fd)
	}
	// inotify takes a path: the descriptor's, which names the directory
	// openDir confined, whatever happens to the tree meanwhile.
	wd, err := unix.InotifyAddWatch(int(hub.f.Fd()), "/proc/self/fd/"+strconv.Itoa(fd), watchMask)
	if err != nil {
		// Out of watches, or a directory the host may not watch (no
		// read permission): its changes would go unreported, so the
		// mount stops caching for long.
		w.lose(m)
		return
	}
	hub.byWD[int32(wd)] = append(hub.byWD[int32(wd)], watchedDir{w, m, dir})
	w.byDir[key] = int32(wd)
}

// start makes the instance if there is none; hub.mu is held.
func (h *inotifyHub) start() bool {
	if h.f != nil {
		return true
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return false
	}
	h.f = os.NewFile(uintptr(fd), "inotify")
	h.done = make(chan struct{})
	go h.run(h.f, h.done)
	return true
}

// lose makes m unwatched and tells the guest; hub.mu is held.
func (w *watcher) lose(m *hostMount) {
	if !w.unwatched[m.id] {
		w.unwatched[m.id] = true
		w.enqueue(m.id, "", fsproto.NoticeUnwatched)
	}
}

// begin marks paths of m busy while a request works on them, and returns
// the number of changes reported so far, for learned.
func (w *watcher) begin(m *hostMount, paths []string) uint64 {
	hub.mu.Lock()
	defer hub.mu.Unlock()
	for _, p := range paths {
		w.busy[pathKey{m.id, p}]++
	}
	return w.reported
}

// end undoes begin once the request's outcome is learned.
func (w *watcher) end(m *hostMount, paths []string) {
	hub.mu.Lock()
	defer hub.mu.Unlock()
	for _, p := range paths {
		key := pathKey{m.id, p}
		if w.busy[key]--; w.busy[key] <= 0 {
			delete(w.busy, key)
		}
	}
}

// isBusy reports whether a request is working on p or listing its
// directory; hub.mu is held.
func (w *watcher) isBusy(m *hostMount, p string) bool {
	return w.busy[pathKey{m.id, p}] > 0 || w.busy[pathKey{m.id, parentOf(p)}] > 0 && p != ""
}

// learned records that the guest was told a about p (nil: that p does
// not exist) by a request served from start (see now). If a change of p
// was reported since start, the answer may predate it and reach the
// guest's kernel after the report, which the kernel would then not
// apply to it: learned records nothing and returns false, and the path
// must be reported again after the reply (renotice).
func (w *watcher) learned(m *hostMount, p string, a *fsproto.Attr, start uint64) bool {
	st := pathState{absent: true}
	if a != nil {
		st = stateOf(a)
	}
	key := pathKey{m.id, p}
	hub.mu.Lock()
	defer hub.mu.Unlock()
	k, ok := w.known[key]
	if ok && k.reported > start {
		return false
	}
	// Only what an event can come for is worth remembering.
	if _, watched := w.byDir[pathKey{m.id, parentOf(p)}]; watched || ok {
		w.remember(key, knownState{st: st, reported: k.reported})
	}
	return true
}

// remember files what the guest knows of key, within maxKnownBytes (an
// unknown path is always reported: safe); hub.mu is held.
func (w *watcher) remember(key pathKey, k knownState) {
	if _, ok := w.known[key]; !ok {
		size := len(key.mount) + len(key.path) + 96
		if w.knownBytes+size > maxKnownBytes {
			return
		}
		w.knownBytes += size
	}
	w.known[key] = k
}

// renotice reports paths again whose answers raced a report.
func (w *watcher) renotice(raced []change) {
	if len(raced) == 0 {
		return
	}
	hub.mu.Lock()
	defer hub.mu.Unlock()
	for _, c := range raced {
		w.enqueue(c.m.id, c.path, fsproto.NoticeEntry)
	}
}

// moved follows the guest's own rename of from to to (exchange: a
// RENAME_EXCHANGE, both ways): watches below from now name directories
// below to. A directory that was not watched has nothing watched below
// it (the guest looked it up to look into it), which spares the scan.
func (w *watcher) moved(m *hostMount, from, to string, exchange bool) {
	hub.mu.Lock()
	defer hub.mu.Unlock()
	_, fromWatched := w.byDir[pathKey{m.id, from}]
	_, toWatched := w.byDir[pathKey{m.id, to}]
	if !fromWatched && !(exchange && toWatched) {
		if toWatched { // replaced: its watch names what is gone
			w.unwatchBelow(m, to)
		}
		return
	}
	type move struct {
		key pathKey
		wd  int32
		np  string
	}
	under := func(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }
	var moves []move
	for key, wd := range w.byDir {
		switch {
		case key.mount != m.id:
		case under(key.path, from):
			moves = append(moves, move{key, wd, to + key.path[len(from):]})
		case exchange && under(key.path, to):
			moves = append(moves, move{key, wd, from + key.path[len(to):]})
		}
	}
	if !exchange {
		w.unwatchBelow(m, to) // replaced
	}
	for _, mv := range moves {
		if w.byDir[mv.key] == mv.wd {
			delete(w.byDir, mv.key)
		}
	}
	for _, mv := range moves {
		w.byDir[pathKey{m.id, mv.np}] = mv.wd
		for i, d := range hub.byWD[mv.wd] {
			if d.w == w && d.m == m && d.dir == mv.key.path {
				hub.byWD[mv.wd][i].dir = mv.np
			}
		}
	}
}

// unwatchBelow drops w's watches of dir and the directories below it;
// hub.mu is held.
func (w *watcher) unwatchBelow(m *hostMount, dir string) {
	if _, ok := w.byDir[pathKey{m.id, dir}]; !ok {
		return // nothing is watched below a directory that is not
	}
	for key, wd := range w.byDir {
		if key.mount == m.id && (key.path == dir || strings.HasPrefix(key.path, dir+"/")) {
			hub.drop(wd, w, key)
		}
	}
}

// change is a path whose state the hub looks at after events.
type change struct {
	w    *watcher
	m    *hostMount
	path string
}

func (h *inotifyHub) run(f *os.File, done chan struct{}) {
	defer close(done)
	buf := make([]byte, 64<<10)
	var waiting []change // busy when last looked at
	for {
		seen := map[change]bool{}
		order := waiting
		for _, c := range order {
			seen[c] = true
		}
		overflow := false
		if len(waiting) == 0 {
			n, err := f.Read(buf)
			if err != nil {
				return // closed
			}
			overflow = h.parse(f, buf[:n], seen, &order)
		}
		// Let the guest's operation that made these events finish and be
		// known, and collect the rest of a burst.
		deadline := time.Now().Add(settle)
		for time.Now().Before(deadline) {
			f.SetReadDeadline(deadline)
			n, err := f.Read(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return
			}
			overflow = h.parse(f, buf[:n], seen, &order) || overflow
		}
		f.SetReadDeadline(time.Time{})
		waiting = nil
		if overflow {
			h.overflowed()
			continue
		}
		for _, c := range order {
			if !c.w.check(c.m, c.path) {
				waiting = append(waiting, c)
			}
		}
	}
}

// parse reads inotify events into the paths to check, in order, and
// reports a queue overflow.
func (h *inotifyHub) parse(f *os.File, b []byte, seen map[change]bool, order *[]change) (overflow bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.f != f {
		// An instance that went idle: its descriptors are not byWD's.
		return false
	}
	for len(b) >= unix.SizeofInotifyEvent {
		wd := int32(binary.NativeEndian.Uint32(b[0:]))
		mask := binary.NativeEndian.Uint32(b[4:])
		nameLen := int(binary.NativeEndian.Uint32(b[12:]))
		if nameLen < 0 || unix.SizeofInotifyEvent+nameLen > len(b) {
			break
		}
		name := string(b[unix.SizeofInotifyEvent : unix.SizeofInotifyEvent+nameLen])
		if i := strings.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		b = b[unix.SizeofInotifyEvent+nameLen:]
		if mask&unix.IN_Q_OVERFLOW != 0 {
			overflow = true
			continue
		}
		if mask&unix.IN_IGNORED != 0 {
			h.forget(wd)
			continue
		}
		for _, d := range append([]watchedDir(nil), h.byWD[wd]...) {
			p := d.dir
			if name != "" {
				p = joinPath(d.dir, name)
			}
			if c := (change{d.w, d.m, p}); !seen[c] {
				seen[c] = true
				*order = append(*order, c)
			}
			if mask&unix.IN_ISDIR != 0 && mask&unix.IN_MOVED_FROM != 0 && !d.w.isBusy(d.m, p) {
				// A directory left its path on the host: its watch and
				// those below it name paths that are no longer there.
				// The guest looks the new path up again (it is told the
				// names changed) and it is watched afresh. (The guest's
				// own renames, busy until learned, are moved along by
				// moved.)
				d.w.unwatchBelow(d.m, p)
			}
		}
	}
	return overflow
}

// check compares p's state with what the guest knows and tells the guest
// when they differ. It returns false, having done nothing, while a
// request works on p: check again later.
func (w *watcher) check(m *hostMount, p string) bool {
	w.life.RLock()
	defer w.life.RUnlock()
	hub.mu.Lock()
	closed, busy := w.closed, w.isBusy(m, p)
	hub.mu.Unlock()
	if closed {
		return true // its roots are closed
	}
	if busy {
		return false
	}
	var a fsproto.Attr
	now := pathState{absent: true}
	switch errno := m.stat(p, &a); errno {
	case 0:
		now = stateOf(&a)
	case syscall.ENOENT, syscall.ENOTDIR:
	default:
		// Cannot tell (a directory on the way left the tree): say it
		// changed.
		now = pathState{absent: true, ino: ^uint64(0)}
	}
	key := pathKey{m.id, p}
	hub.mu.Lock()
	defer hub.mu.Unlock()
	k, ok := w.known[key]
	was := k.st
	if ok && was == now {
		return true
	}
	w.reported++
	w.remember(key, knownState{st: now, reported: w.reported})
	kind := uint32(fsproto.NoticeEntry)
	if p == "" || ok && !was.absent && !now.absent && was.ino == now.ino && was.gen == now.gen {
		kind = fsproto.NoticeInode
	}
	w.enqueue(m.id, p, kind)
	return true
}

// overflowed handles lost events: every guest forgets everything of
// every watched mount, and nothing is known any more.
func (h *inotifyHub) overflowed() {
	h.mu.Lock()
	defer h.mu.Unlock()
	type mountOf struct {
		w  *watcher
		id string
	}
	told := map[mountOf]bool{}
	for _, dirs := range h.byWD {
		for _, d := range dirs {
			clear(d.w.known)
			d.w.knownBytes = 0
			if key := (mountOf{d.w, d.m.id}); !told[key] {
				told[key] = true
				d.w.enqueue(d.m.id, "", fsproto.NoticeAll)
			}
		}
	}
}
