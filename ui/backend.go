package ui

import (
	"context"
	"time"

	"github.com/gondolin/gondolin/netpolicy"
	"github.com/gondolin/gondolin/sessions"
)

// Backend is what the dashboard needs from the supervisor. *sessions.Client
// satisfies it; tests use a fake, so no test of a view boots a VM.
type Backend interface {
	List(ctx context.Context, all bool) ([]sessions.Session, error)
	Create(ctx context.Context, req sessions.CreateRequest) (sessions.Session, error)
	Stop(ctx context.Context, ref string) (sessions.Session, error)
	Remove(ctx context.Context, ref string, force bool) error
	OpenPTY(ctx context.Context, ref string, req sessions.OpenPTYRequest) (sessions.PTY, error)
	Screen(ctx context.Context, ref string, pty uint64) (sessions.Screen, error)
	Events(ctx context.Context) (<-chan sessions.Event, error)
}

var _ Backend = (*sessions.Client)(nil)

// Optional features are interfaces the dashboard checks for with a type
// assertion, so a view lights up as soon as the backend has the methods
// and otherwise says the feature is not available in this version.

// PolicyBackend reads and edits a live session's network policy and
// follows its network decisions. *sessions.Client has it.
type PolicyBackend interface {
	Policy(ctx context.Context, ref string) (sessions.PolicyView, error)
	ChangePolicy(ctx context.Context, ref string, ch sessions.PolicyChange) (sessions.PolicyView, error)
	NetworkEvents(ctx context.Context, ref string, follow bool) (<-chan netpolicy.Event, error)
}

var _ PolicyBackend = (*sessions.Client)(nil)

// SnapshotBackend takes and resumes checkpoints. The supervisor has no
// snapshot API yet: the types below are the shape the dashboard needs.
// When package sessions declares its own, each becomes an alias (type
// Snapshot = sessions.Snapshot) and *sessions.Client satisfies the
// interface with no other change here.
type SnapshotBackend interface {
	// Snapshot checkpoints a session: its disk, or with Live its RAM and
	// devices too. progress is called as the work advances.
	Snapshot(ctx context.Context, ref string, req SnapshotRequest, progress func(SnapshotProgress)) (Snapshot, error)
	// ListSnapshots returns every snapshot, newest first.
	ListSnapshots(ctx context.Context) ([]Snapshot, error)
	// Resume creates a session from a snapshot.
	Resume(ctx context.Context, snapshot string, req ResumeRequest) (sessions.Session, error)
}

// SnapshotRequest says what to checkpoint.
type SnapshotRequest struct {
	Name string `json:"name,omitempty"`
	Live bool   `json:"live,omitempty"` // RAM and device state too
}

// SnapshotProgress reports a snapshot under way.
type SnapshotProgress struct {
	Phase string  `json:"phase"` // e.g. "pausing", "saving RAM", "copying disk"
	Done  float64 `json:"done"`  // 0..1
}

// Snapshot is a saved checkpoint.
type Snapshot struct {
	ID      string    `json:"id"`
	Name    string    `json:"name,omitempty"`
	Session string    `json:"session"` // the session it was taken from
	Image   string    `json:"image"`
	Live    bool      `json:"live"`
	Created time.Time `json:"created"`
	Bytes   int64     `json:"bytes"`
}

// ResumeRequest names the session a snapshot resumes into.
type ResumeRequest struct {
	Name string `json:"name,omitempty"`
}

// MountSpecs puts the new-session form's mounts, in the CLI's
// --mount-hostfs syntax (HOST:GUEST[:ro]), into a Spec. sessions.Spec has
// no mounts yet, so the dashboard has none by default and the form says
// so; wiring mounts later is setting Options.Mounts.
type MountSpecs func(spec *sessions.Spec, mounts []string) error
