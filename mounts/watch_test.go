package mounts

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gondolin/gondolin/mounts/fsproto"
)

// notices collects what the host reports to c: it waits (up to a
// minute, for a slow machine) until want notices came, then quiet more
// for any that should not come. want 0 waits quiet alone.
func notices(c *fsproto.Client, want int, quiet time.Duration) []fsproto.Notice {
	var got []fsproto.Notice
	enough := time.After(time.Minute)
	var settle <-chan time.Time
	if want == 0 {
		settle = time.After(quiet)
	}
	for {
		select {
		case n := <-c.Notices():
			if n.Mount != "" { // not the client's own "connected"
				got = append(got, n)
				if len(got) == want {
					settle = time.After(quiet)
				}
			}
		case <-enough:
			return got
		case <-settle:
			return got
		}
	}
}

// TestWatchReportsHostChangesOnly drives a mount as a guest does and
// checks which changes the host reports: the guest's own operations
// none, a host edit of a file the guest looked at one notice, a host
// create in a directory it listed one.
func TestWatchReportsHostChangesOnly(t *testing.T) {
	dir, spec := oneFileDir(t)
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	_, c := serve(t, spec)
	m := fsproto.Mount{C: c, ID: spec.ID}
	ctx := ctxT(t)
	_, errno := m.Stat(ctx, "f")
	mustOK(t, "stat", errno)
	if v := c.Version(); v != fsproto.Version {
		t.Fatalf("connected at version %d, want %d", v, fsproto.Version)
	}

	// The guest's own changes: create, write, rename, mkdir, remove.
	h, _, errno := m.Create(ctx, "d/new", syscall.O_RDWR, 0o644)
	mustOK(t, "create", errno)
	for i := range 20 {
		_, errno = m.Write(ctx, h, uint64(i)*4096, make([]byte, 4096))
		mustOK(t, "write", errno)
	}
	mustOK(t, "release", m.Release(ctx, h))
	mustOK(t, "rename", m.Rename(ctx, "d/new", "d/renamed", 0))
	_, errno = m.Mkdir(ctx, "d/sub", 0o755)
	mustOK(t, "mkdir", errno)
	mustOK(t, "unlink", m.Unlink(ctx, "d/renamed"))
	if got := notices(c, 0, 300*time.Millisecond); len(got) != 0 {
		t.Errorf("the guest's own changes were reported back: %+v", got)
	}

	// A host edit of a file the guest looked at.
	os.WriteFile(filepath.Join(dir, "f"), []byte("host"), 0o644)
	got := notices(c, 1, 300*time.Millisecond)
	if len(got) != 1 || got[0] != (fsproto.Notice{Mount: spec.ID, Path: "f", Kind: fsproto.NoticeInode}) {
		t.Errorf("host edit reported as %+v, want one inode notice for f", got)
	}
	// A host create in a directory the guest worked in.
	os.WriteFile(filepath.Join(dir, "d", "host"), nil, 0o644)
	got = notices(c, 1, 300*time.Millisecond)
	if len(got) != 1 || got[0] != (fsproto.Notice{Mount: spec.ID, Path: "d/host", Kind: fsproto.NoticeEntry}) {
		t.Errorf("host create reported as %+v, want one entry notice for d/host", got)
	}
}

// TestHostileWatchBudget is a guest that walks more directories than the host
// will watch: the host stops at its budget, tells the guest the mount is
// unwatched (once), and goes on serving it.
func TestHostileWatchBudget(t *testing.T) {
	dir, spec := oneFileDir(t)
	for i := range 20 {
		os.MkdirAll(filepath.Join(dir, "d", string(rune('a'+i))), 0o755)
	}
	l, c := serve(t, spec)
	hub.mu.Lock()
	l.server.watch.max = 5
	hub.mu.Unlock()
	m := fsproto.Mount{C: c, ID: spec.ID}
	ctx := ctxT(t)
	for i := range 20 {
		_, errno := m.Stat(ctx, "d/"+string(rune('a'+i))+"/x")
		wantErrno(t, "stat", errno, syscall.ENOENT)
	}
	got := notices(c, 1, 300*time.Millisecond)
	if len(got) != 1 || got[0].Kind != fsproto.NoticeUnwatched {
		t.Errorf("notices %+v, want one NoticeUnwatched", got)
	}
	w := l.server.watch
	hub.mu.Lock()
	n := len(w.byDir)
	hub.mu.Unlock()
	if n > 5 {
		t.Errorf("%d watches, budget 5", n)
	}
	_, errno := m.Stat(ctx, "f")
	mustOK(t, "stat after the budget", errno)
}

// TestHostileWatchStalledGuest: servers share one inotify instance, a guest that
// never reads its notices holds up nobody else's, and the instance goes
// when the last server closes.
func TestHostileWatchStalledGuest(t *testing.T) {
	stuckDir, stuckSpec := oneFileDir(t)
	stuck := startServer(t, stuckSpec)
	guest, _, _ := connectGuest(t, stuck)
	// Asks for notices, then never reads.
	frame, _ := fsproto.AppendRequest(nil, &fsproto.Request{Tag: 1, Op: fsproto.OpInit, Version: fsproto.Version})
	if _, err := guest.Write(frame); err != nil {
		t.Fatal(err)
	}
	dir, spec := oneFileDir(t)
	_, c := serve(t, spec)
	m := fsproto.Mount{C: c, ID: spec.ID}
	_, errno := m.Stat(ctxT(t), "f")
	mustOK(t, "stat", errno)
	// The stuck server watches too, and has many notices to send.
	stuck.watch.watch(stuck.mounts[stuckSpec.ID], "")
	long := strings.Repeat("n", 200) // notices that fill the socket soon
	for i := range 2 * noticeQueue {
		os.WriteFile(filepath.Join(stuckDir, long+strconv.Itoa(i)), nil, 0o644)
	}
	os.WriteFile(filepath.Join(dir, "f"), []byte("changed"), 0o644)
	if got := notices(c, 1, 300*time.Millisecond); len(got) != 1 {
		t.Errorf("notices %+v, want one for f", got)
	}
	hub.mu.Lock()
	shared := hub.f != nil
	hub.mu.Unlock()
	if !shared {
		t.Fatal("no inotify instance while two servers watch")
	}
}

// TestHostileWatchEscape: a guest names paths outside its mount to have
// the host watch them (the requests fail, but the watch is made first);
// nothing outside is watched, and no name from outside reaches it.
func TestHostileWatchEscape(t *testing.T) {
	bothWalks(t, func(t *testing.T) {
		dir, spec := oneFileDir(t)
		outside := filepath.Join(filepath.Dir(dir), "outside-"+filepath.Base(dir))
		os.Mkdir(outside, 0o755)
		defer os.RemoveAll(outside)
		l, c := serve(t, spec)
		m := fsproto.Mount{C: c, ID: spec.ID}
		ctx := ctxT(t)
		m.Stat(ctx, "f")
		for _, p := range []string{"..", "../" + filepath.Base(outside), "../" + filepath.Base(outside) + "/x", "a/../..", "/etc/x"} {
			m.Stat(ctx, p)
			if h, errno := m.Opendir(ctx, p); errno == 0 {
				m.Release(ctx, h)
			}
		}
		os.WriteFile(filepath.Join(outside, "SECRET-NAME"), nil, 0o644)
		for _, n := range notices(c, 0, 300*time.Millisecond) {
			t.Errorf("notice from outside the mount: %+v", n)
		}
		hub.mu.Lock()
		defer hub.mu.Unlock()
		for key := range l.server.watch.byDir {
			if key.path != "" {
				t.Errorf("watching %q", key.path)
			}
		}
	})
}

// TestHostileWatchRenames: a guest renames watched directories over each
// other, both ways, many times; the host's two indexes of its watches
// agree throughout, and closing the server leaves none behind.
func TestHostileWatchRenames(t *testing.T) {
	dir, spec := oneFileDir(t)
	l, c := serve(t, spec)
	m := fsproto.Mount{C: c, ID: spec.ID}
	ctx := ctxT(t)
	for i := range 20 {
		os.MkdirAll(filepath.Join(dir, "a", "sub"), 0o755)
		os.MkdirAll(filepath.Join(dir, "b"), 0o755)
		m.Stat(ctx, "a/sub/x")
		m.Stat(ctx, "b/x")
		flags := uint32(0)
		if i%2 == 1 {
			flags = 2 // RENAME_EXCHANGE
		}
		mustOK(t, "rename", m.Rename(ctx, "a", "b", flags))
		os.RemoveAll(filepath.Join(dir, "a"))
		os.RemoveAll(filepath.Join(dir, "b"))
	}
	time.Sleep(100 * time.Millisecond) // the hub has seen the events
	w := l.server.watch
	hub.mu.Lock()
	inHub := 0
	for _, dirs := range hub.byWD {
		for _, d := range dirs {
			if d.w == w {
				inHub++
				if wd, ok := w.byDir[pathKey{d.m.id, d.dir}]; !ok || hub.byWD[wd] == nil {
					t.Errorf("the hub watches %q for the server, which does not know it", d.dir)
				}
			}
		}
	}
	if inHub != len(w.byDir) {
		t.Errorf("the hub holds %d of the server's watches, the server %d", inHub, len(w.byDir))
	}
	hub.mu.Unlock()
	l.server.Close()
	hub.mu.Lock()
	defer hub.mu.Unlock()
	for _, dirs := range hub.byWD {
		for _, d := range dirs {
			if d.w == w {
				t.Errorf("watch of %q outlives its server", d.dir)
			}
		}
	}
}

// TestHostileKnownBounded: a guest stats many long names that do not
// exist; what the host remembers for it stays within its bound.
func TestHostileKnownBounded(t *testing.T) {
	dir, spec := oneFileDir(t)
	os.MkdirAll(filepath.Join(dir, "d"), 0o755)
	l, c := serve(t, spec)
	m := fsproto.Mount{C: c, ID: spec.ID}
	ctx := ctxT(t)
	long := strings.Repeat("x", 250)
	for i := range 3000 {
		m.Stat(ctx, "d/"+long+strconv.Itoa(i))                             // a watched directory
		m.Stat(ctx, "nodir/"+strings.Repeat(long+"/", 10)+strconv.Itoa(i)) // none: nothing to remember
	}
	w := l.server.watch
	hub.mu.Lock()
	defer hub.mu.Unlock()
	if w.knownBytes > maxKnownBytes || len(w.known) > 3100 {
		t.Errorf("remembers %d paths in %d bytes (bound %d)", len(w.known), w.knownBytes, maxKnownBytes)
	}
}
