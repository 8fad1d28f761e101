package ui

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/netpolicy"
	"github.com/gondolin/gondolin/sessions"
	"github.com/gondolin/gondolin/snapshots"
	"github.com/gondolin/gondolin/vm"
)

// epoch is the fake clock: every session's age is measured against it.
var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func TestMain(m *testing.M) {
	// Request times in the policy editor print in local time.
	time.Local = time.UTC
	os.Exit(m.Run())
}

// fakeBackend is an in-memory supervisor with the policy and snapshot
// features.
type fakeBackend struct {
	mu       sync.Mutex
	sessions []sessions.Session
	screens  map[string]sessions.Screen // "id/pty"
	policies map[string]sessions.PolicyView
	netlog   []netpolicy.Event
	snaps    []*snapshots.Snapshot
	events   chan sessions.Event
	// eventsErr makes Events fail (the supervisor is down).
	eventsErr error
	// listErr makes List fail; listGate, if set, holds List until
	// closed or its context ends (a host that does not answer).
	listErr  error
	listGate chan struct{}
	// screenGate, if set, holds Screen the same way.
	screenGate chan struct{}

	calls   map[string]int
	created []sessions.CreateRequest
	changes []sessions.PolicyChange
	// gate, if set, holds Snapshot until closed; meanwhile the session's
	// Phase says it is snapshotting, as the supervisor's does.
	gate chan struct{}
	// createGate, if set, holds Create until closed; meanwhile the new
	// session is listed as creating (setPhase moves its step), as the
	// supervisor lists it. createErr, if set, then fails the create.
	createGate chan struct{}
	createErr  error
	// templates and pool are what Status reports.
	templates []vm.TemplateInfo
	pool      sessions.PoolStatus
}

// basicBackend hides the optional features of a fake.
type basicBackend struct{ Backend }

func newFake(list ...sessions.Session) *fakeBackend {
	return &fakeBackend{
		sessions: list,
		screens:  map[string]sessions.Screen{},
		policies: map[string]sessions.PolicyView{},
		events:   make(chan sessions.Event, 64),
		calls:    map[string]int{},
		pool:     steadyPool(),
	}
}

// steadyPool is a warm pool of the default size, full: two VMs of the
// default shape ready.
func steadyPool() sessions.PoolStatus {
	return sessions.PoolStatus{Size: 2, MemoryMiB: 1024, ReservedMiB: 512, RSSBytes: 620 << 20, Claims: 14, Misses: 3,
		Shapes: []sessions.PoolShape{{CPUs: 1, MemoryMiB: 256, Network: true, Ready: 2, RSSBytes: 620 << 20}}}
}

func (f *fakeBackend) Status(ctx context.Context) (sessions.SupervisorStatus, error) {
	f.called("Status")
	f.mu.Lock()
	defer f.mu.Unlock()
	pool := f.pool
	pool.Shapes = append([]sessions.PoolShape(nil), pool.Shapes...)
	return sessions.SupervisorStatus{Templates: append([]vm.TemplateInfo(nil), f.templates...), Pool: pool}, nil
}

func (f *fakeBackend) count(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[name]
}

func (f *fakeBackend) called(name string) {
	f.mu.Lock()
	f.calls[name]++
	f.mu.Unlock()
}

func (f *fakeBackend) find(ref string) (int, error) {
	for i, s := range f.sessions {
		if s.ID == ref || s.Name == ref {
			return i, nil
		}
	}
	return -1, fmt.Errorf("session %s: %w", ref, errdefs.ErrNotFound)
}

// waitGate holds a call until gate closes (at once when there is no
// gate) or ctx ends.
func waitGate(ctx context.Context, gate chan struct{}) error {
	if gate == nil {
		return nil
	}
	select {
	case <-gate:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (f *fakeBackend) List(ctx context.Context, all bool) ([]sessions.Session, error) {
	f.called("List")
	f.mu.Lock()
	gate := f.listGate
	f.mu.Unlock()
	if err := waitGate(ctx, gate); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.listErr != nil {
		return nil, f.listErr
	}
	return append([]sessions.Session(nil), f.sessions...), nil
}

func (f *fakeBackend) Create(ctx context.Context, req sessions.CreateRequest) (sessions.Session, error) {
	f.called("Create")
	f.mu.Lock()
	f.created = append(f.created, req)
	name := req.Spec.Name
	if req.Resume != "" {
		name = "resumed"
	}
	s := sessions.Session{ID: fmt.Sprintf("c0ffee%06d", len(f.created)), Name: name, State: sessions.Live,
		Created: epoch, Image: orDefault(req.Spec.Image, "default:latest"), Spec: req.Spec,
		PTYs: []sessions.PTY{{ID: 1, Running: true, Main: true}}}
	gate, err, events := f.createGate, f.createErr, f.events
	if gate != nil {
		c := s
		c.State, c.Phase, c.PTYs = sessions.Creating, sessions.PhaseStarting, []sessions.PTY{}
		if req.Resume != "" {
			c.Phase = sessions.PhaseCheckSnapshot
		}
		f.sessions = append([]sessions.Session{c}, f.sessions...)
		f.mu.Unlock()
		events <- sessions.Event{Type: sessions.EventCreating, Session: s.ID, State: sessions.Creating, Phase: c.Phase}
		if gerr := waitGate(ctx, gate); gerr != nil {
			err = gerr
		}
		f.mu.Lock()
		if i, ferr := f.find(s.ID); ferr == nil {
			f.sessions = append(f.sessions[:i], f.sessions[i+1:]...)
		}
	}
	if err == nil {
		f.sessions = append([]sessions.Session{s}, f.sessions...)
	}
	f.mu.Unlock()
	if gate != nil {
		if err != nil {
			events <- sessions.Event{Type: sessions.EventRemoved, Session: s.ID}
		} else {
			events <- sessions.Event{Type: sessions.EventCreated, Session: s.ID, State: sessions.Live}
		}
	}
	if err != nil {
		return sessions.Session{}, err
	}
	return s, nil
}

// setPhase moves a session's Phase and says so, as the supervisor does
// at each step of a create.
func (f *fakeBackend) setPhase(id, phase string) {
	f.mu.Lock()
	if i, err := f.find(id); err == nil {
		f.sessions[i].Phase = phase
	}
	events := f.events
	f.mu.Unlock()
	events <- sessions.Event{Type: sessions.EventCreating, Session: id, State: sessions.Creating, Phase: phase}
}

func (f *fakeBackend) Stop(ctx context.Context, ref string) (sessions.Session, error) {
	f.called("Stop")
	f.mu.Lock()
	defer f.mu.Unlock()
	i, err := f.find(ref)
	if err != nil {
		return sessions.Session{}, err
	}
	f.sessions[i].State = sessions.Stopped
	f.sessions[i].Usage = nil
	return f.sessions[i], nil
}

func (f *fakeBackend) Remove(ctx context.Context, ref string, force bool) error {
	f.called("Remove")
	f.mu.Lock()
	defer f.mu.Unlock()
	i, err := f.find(ref)
	if err != nil {
		return err
	}
	f.sessions = append(f.sessions[:i], f.sessions[i+1:]...)
	return nil
}

func (f *fakeBackend) OpenPTY(ctx context.Context, ref string, req sessions.OpenPTYRequest) (sessions.PTY, error) {
	f.called("OpenPTY")
	f.mu.Lock()
	defer f.mu.Unlock()
	i, err := f.find(ref)
	if err != nil {
		return sessions.PTY{}, err
	}
	p := sessions.PTY{ID: uint64(len(f.sessions[i].PTYs) + 1), Argv: []string{"bash"}, Running: true}
	f.sessions[i].PTYs = append(f.sessions[i].PTYs, p)
	return p, nil
}

func (f *fakeBackend) Screen(ctx context.Context, ref string, pty uint64) (sessions.Screen, error) {
	f.called("Screen")
	f.mu.Lock()
	gate := f.screenGate
	f.mu.Unlock()
	if err := waitGate(ctx, gate); err != nil {
		return sessions.Screen{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	scr, ok := f.screens[fmt.Sprintf("%s/%d", ref, pty)]
	if !ok {
		return sessions.Screen{}, fmt.Errorf("terminal %d: %w", pty, errdefs.ErrNotFound)
	}
	return scr, nil
}

func (f *fakeBackend) Events(ctx context.Context) (<-chan sessions.Event, error) {
	f.called("Events")
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.eventsErr != nil {
		return nil, f.eventsErr
	}
	return f.events, nil
}

func (f *fakeBackend) Policy(ctx context.Context, ref string) (sessions.PolicyView, error) {
	f.called("Policy")
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.policies[ref], nil
}

func (f *fakeBackend) ChangePolicy(ctx context.Context, ref string, ch sessions.PolicyChange) (sessions.PolicyView, error) {
	f.called("ChangePolicy")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.changes = append(f.changes, ch)
	v := f.policies[ref]
	p := v.Policy.Clone()
	switch {
	case ch.Allow != "":
		p.AllowHost(ch.Allow)
	case ch.Unallow != "":
		p.Allow = removeString(p.Allow, ch.Unallow)
	case ch.SetSecret != "":
		sec, err := netpolicy.ParseHostSecret(ch.SetSecret+"=x", nil)
		if err != nil {
			return sessions.PolicyView{}, err
		}
		sec.Value = netpolicy.NewSecretValue(*ch.SecretValue)
		p.SetSecret(sec)
	case ch.RemoveSecret != "":
		p.RemoveSecret(ch.RemoveSecret)
	}
	v.Policy = p
	f.policies[ref] = v
	return v, nil
}

func removeString(list []string, s string) []string {
	var out []string
	for _, x := range list {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}

func (f *fakeBackend) NetworkEvents(ctx context.Context, ref string, follow bool) (<-chan netpolicy.Event, error) {
	f.called("NetworkEvents")
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan netpolicy.Event, len(f.netlog)+1)
	for _, e := range f.netlog {
		ch <- e
	}
	// Left open, as a followed stream is; the test's context ends it.
	go func() {
		<-ctx.Done()
	}()
	return ch, nil
}

func (f *fakeBackend) Snapshot(ctx context.Context, ref string, req sessions.SnapshotRequest) (*snapshots.Snapshot, error) {
	f.called("Snapshot")
	if f.gate != nil {
		f.setSnapshotting(ref, true)
		defer f.setSnapshotting(ref, false)
		if err := waitGate(ctx, f.gate); err != nil {
			return nil, err
		}
	}
	kind := snapshots.Disk
	if req.Live {
		kind = snapshots.Live
	}
	s := &snapshots.Snapshot{ID: "snap0001", Name: req.Name, Source: ref, Kind: kind, Created: epoch,
		Files: []snapshots.File{{Name: "disk.qcow2", Size: 300 << 20}}}
	f.mu.Lock()
	f.snaps = append([]*snapshots.Snapshot{s}, f.snaps...)
	f.mu.Unlock()
	return s, nil
}

// setSnapshotting marks a snapshot of ref under way or done, as the
// supervisor's Phase and events do.
func (f *fakeBackend) setSnapshotting(ref string, on bool) {
	f.mu.Lock()
	phase := ""
	if on {
		phase = sessions.PhaseSnapshot
	}
	if i, err := f.find(ref); err == nil {
		f.sessions[i].Phase = phase
	}
	events := f.events
	f.mu.Unlock()
	events <- sessions.Event{Type: sessions.EventSnapshot, Session: ref, State: sessions.Live, Phase: phase}
}

func (f *fakeBackend) Snapshots(ctx context.Context) ([]sessions.SnapshotInfo, error) {
	f.called("Snapshots")
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []sessions.SnapshotInfo
	for _, s := range f.snaps {
		out = append(out, sessions.SnapshotInfo{Snapshot: s, Own: true})
	}
	return out, nil
}

var (
	_ PolicyBackend   = (*fakeBackend)(nil)
	_ SnapshotBackend = (*fakeBackend)(nil)
)

// screenOf builds a terminal screen holding lines, the cursor after the
// last one.
func screenOf(rows, cols int, lines ...string) sessions.Screen {
	all := make([]string, rows)
	copy(all, lines)
	return sessions.Screen{Rows: rows, Cols: cols, Text: strings.Join(all, "\n"), Cursor: [2]int{max(len(lines)-1, 0), len(lines[len(lines)-1])}}
}

func exitCode(n int) *int { return &n }

// sampleBackend is the fixture most views are drawn from: live, stale and
// stopped sessions, two terminals, usage figures and a policy.
func sampleBackend() *fakeBackend {
	f := newFake(
		sessions.Session{ID: "a1b2c3d4e5f6", Name: "api", State: sessions.Live, PID: 4242, Created: epoch.Add(-95 * time.Minute),
			Image: "default:latest", Policy: "3 hosts, 1 secret", Usage: &sessions.Usage{CPUPercent: 3.25, RSSBytes: 212 << 20},
			Label: "api work",
			PTYs: []sessions.PTY{
				{ID: 1, Running: true, Main: true},
				{ID: 2, Argv: []string{"/usr/bin/top"}, Running: true},
			}},
		sessions.Session{ID: "0f9e8d7c6b5a", Name: "build", State: sessions.Live, PID: 4343, Created: epoch.Add(-26 * time.Hour),
			Image: "debian:12", Policy: "public web", Usage: &sessions.Usage{CPUPercent: 87, RSSBytes: 1536 << 20},
			PTYs: []sessions.PTY{{ID: 1, Running: true, Main: true}}},
		sessions.Session{ID: "deadbeef0001", Name: "old", State: sessions.Stale, Reason: "the VM is not running",
			Created: epoch.Add(-50 * time.Hour), Image: "default:latest",
			PTYs: []sessions.PTY{{ID: 1, Main: true}}},
		sessions.Session{ID: "5e55a0000002", State: sessions.Stopped, Created: epoch.Add(-3 * time.Hour), Image: "default:latest",
			PTYs: []sessions.PTY{{ID: 1, Main: true, ExitCode: exitCode(0)}}},
	)
	f.screens["a1b2c3d4e5f6/1"] = screenOf(24, 80, "root@api:~# make test", "ok      github.com/example/api  0.412s", "root@api:~# echo hello", "hello", "root@api:~# ")
	f.screens["a1b2c3d4e5f6/2"] = screenOf(24, 80, "top - 12:00:00 up 1:35,  0 users,  load average: 0.08", "Tasks:  12 total,   1 running")
	f.screens["0f9e8d7c6b5a/1"] = screenOf(24, 80, "root@build:~# ./build.sh", "[3/7] compiling")
	f.policies["a1b2c3d4e5f6"] = sessions.PolicyView{
		Policy: netpolicy.Policy{
			Allow:   []string{"api.github.com", "*.npmjs.org", "proxy.golang.org"},
			Secrets: []netpolicy.Secret{{Name: "GH_TOKEN", Hosts: []string{"api.github.com"}}, {Name: "NPM_TOKEN", Hosts: []string{"registry.npmjs.org"}, InURL: true}},
			DNS:     netpolicy.DNSSynthetic,
		},
		Missing: []string{"NPM_TOKEN"},
	}
	f.netlog = []netpolicy.Event{
		{Time: epoch.Add(-20 * time.Second), Action: netpolicy.Allowed, Proto: "https", Method: "GET", Host: "api.github.com", Path: "/repos/x/y", Rule: "allow api.github.com", Secrets: []string{"GH_TOKEN"}},
		{Time: epoch.Add(-10 * time.Second), Action: netpolicy.Blocked, Proto: "https", Method: "POST", Host: "evil.example", Path: "/upload", Reason: "host not allowed"},
	}
	f.snaps = []*snapshots.Snapshot{
		{ID: "snapaaaa0001", Name: "before-upgrade", Source: "a1b2c3d4e5f6", Kind: snapshots.Live, Created: epoch.Add(-2 * time.Hour),
			Files: []snapshots.File{{Name: "disk.qcow2", Size: 300 << 20}, {Name: "state.zst", Size: 212 << 20}}},
		{ID: "snapaaaa0002", Source: "0f9e8d7c6b5a", Kind: snapshots.Disk, Created: epoch.Add(-26 * time.Hour),
			Files: []snapshots.File{{Name: "disk.qcow2", Size: 80 << 20}}},
	}
	return f
}
