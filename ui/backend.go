package ui

import (
	"context"

	"github.com/gondolin/gondolin/netpolicy"
	"github.com/gondolin/gondolin/sessions"
	"github.com/gondolin/gondolin/snapshots"
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

// SnapshotBackend takes checkpoints and lists them. *sessions.Client
// has it. A snapshot resumes through Backend.Create (CreateRequest.Resume).
type SnapshotBackend interface {
	Snapshot(ctx context.Context, ref string, req sessions.SnapshotRequest) (*snapshots.Snapshot, error)
	Snapshots(ctx context.Context) ([]sessions.SnapshotInfo, error)
}

var _ SnapshotBackend = (*sessions.Client)(nil)

// StatusBackend reports the supervisor's status, templates included.
// *sessions.Client has it; the dashboard then says when a template is
// being rebuilt or broke.
type StatusBackend interface {
	Status(ctx context.Context) (sessions.SupervisorStatus, error)
}

var _ StatusBackend = (*sessions.Client)(nil)
