package ui

import (
	"context"
	"time"

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

// The interfaces below are features whose supervisor API does not exist
// yet. The dashboard checks for them with a type assertion, so its views
// light up as soon as the backend grows the methods; until then the key
// says the feature is not available in this version.
//
// Their value types (Policy, Snapshot, ...) are declared here with the
// shape the dashboard needs. When package sessions declares its own,
// each declaration here becomes an alias (type Policy = sessions.Policy)
// and *sessions.Client satisfies the interface with no other change.

// PolicyBackend edits a live session's network and secret policy.
type PolicyBackend interface {
	// Policy returns the session's current policy.
	Policy(ctx context.Context, ref string) (Policy, error)
	// AllowHost adds an allowed host pattern (`*` wildcards).
	AllowHost(ctx context.Context, ref, pattern string) error
	// DenyHost removes an allowed host pattern.
	DenyHost(ctx context.Context, ref, pattern string) error
	// SetSecret adds a secret or rotates its value; the value never comes
	// back from the supervisor.
	SetSecret(ctx context.Context, ref string, secret SecretSpec) error
	// RemoveSecret removes a secret by name.
	RemoveSecret(ctx context.Context, ref, name string) error
	// Requests returns the session's recent mediated requests, newest
	// last (allowed and blocked).
	Requests(ctx context.Context, ref string, limit int) ([]Request, error)
}

// SnapshotBackend takes and resumes checkpoints.
type SnapshotBackend interface {
	// Snapshot checkpoints a session: its disk, or with Live its RAM and
	// devices too. progress is called as the work advances (0..1).
	Snapshot(ctx context.Context, ref string, req SnapshotRequest, progress func(SnapshotProgress)) (Snapshot, error)
	// ListSnapshots returns every snapshot, newest first.
	ListSnapshots(ctx context.Context) ([]Snapshot, error)
	// Resume creates a session from a snapshot.
	Resume(ctx context.Context, snapshot string, req ResumeRequest) (sessions.Session, error)
}

// Policy is a session's network and secret policy as the dashboard shows
// it.
type Policy struct {
	AllowHosts []string     `json:"allow_hosts"`
	Secrets    []SecretInfo `json:"secrets"`
	DNS        string       `json:"dns,omitempty"` // synthetic, trusted or open
}

// SecretInfo describes a secret without its value.
type SecretInfo struct {
	Name  string    `json:"name"`
	Hosts []string  `json:"hosts"`
	Set   time.Time `json:"set"` // when the value was last set (rotation)
}

// SecretSpec adds or rotates a secret.
type SecretSpec struct {
	Name  string   `json:"name"`
	Hosts []string `json:"hosts"`
	Value string   `json:"value"`
}

// Request is one mediated network request.
type Request struct {
	Time    time.Time `json:"time"`
	Method  string    `json:"method,omitempty"` // HTTP method, or "TCP"
	Host    string    `json:"host"`
	Path    string    `json:"path,omitempty"`
	Allowed bool      `json:"allowed"`
	Reason  string    `json:"reason,omitempty"` // why it was blocked
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

// Policy event types the dashboard follows when the supervisor emits them
// (with Event.Session set): the policy editor refreshes its request log on
// them.
const (
	EventPolicyChanged = "policy.changed"
	EventRequest       = "net.request"
)

// SpecExtras fills the parts of a Spec that the new-session form accepts
// in the CLI's flag syntax but that sessions.Spec does not carry yet:
// mounts (--mount-hostfs HOST:GUEST[:ro]), allowed hosts (--allow-host)
// and secrets (--host-secret NAME@HOST[,HOST...]). nil means the
// supervisor cannot take them, and the form says so.
type SpecExtras func(spec *sessions.Spec, mounts, allowHosts, secrets []string) error
