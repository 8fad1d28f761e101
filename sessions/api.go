package sessions

import (
	"time"

	"github.com/gondolin/gondolin/ingress"
	"github.com/gondolin/gondolin/snapshots"
	"github.com/gondolin/gondolin/vm"
)

// State is a session's derived state.
type State string

const (
	// Live: QEMU runs and its agent answers.
	Live State = "live"
	// Stale: the VM died or does not answer; Reason says which.
	Stale State = "stale"
	// Stopped: stopped on purpose (gondolin stop).
	Stopped State = "stopped"
	// Creating: the supervisor has accepted the session and is making
	// it; Phase says what it is doing. It turns live, or is gone if the
	// create fails. Stop and rm refuse it meanwhile.
	Creating State = "creating"
)

// What a session's Phase says, in words the host chose (never the
// guest), short enough for a table's STATE column: a creating session's
// steps, in the order they may come, and a live one's snapshot under way.
const (
	PhaseStarting      = "starting"
	PhaseCheckSnapshot = "checking snapshot"
	PhaseWarm          = "resuming warm VM"
	PhaseTemplate      = "building template"
	PhaseClone         = "restoring template"
	PhaseBooting       = "booting"
	PhaseRestore       = "restoring snapshot"
	PhaseTerminal      = "starting terminal"
	PhaseSnapshot      = "snapshotting"
)

// Session is what the supervisor API reports about a session.
type Session struct {
	ID       string    `json:"id"`
	Name     string    `json:"name,omitempty"`
	Label    string    `json:"label,omitempty"`
	State    State     `json:"state"`
	Reason   string    `json:"reason,omitempty"`
	Phase    string    `json:"phase,omitempty"` // what the supervisor is doing to it now (see PhaseStarting)
	PID      int       `json:"pid,omitempty"`
	Created  time.Time `json:"created"`
	Image    string    `json:"image"`
	ImageID  string    `json:"image_id"`
	Spec     Spec      `json:"spec"`
	Keep     bool      `json:"keep,omitempty"`
	PTYs     []PTY     `json:"ptys"`
	CPUs     int       `json:"cpus"`
	MemoryMB int       `json:"memory_mib"`
	// Policy summarises the network policy ("public web", "3 hosts, 1
	// secret", "no network").
	Policy string `json:"policy,omitempty"`
	// Ingress lists the host listeners that forward to guest ports.
	Ingress []ingress.Route `json:"ingress,omitempty"`
	// SSHCommand logs into the VM (sessions made with --ssh).
	SSHCommand string `json:"ssh_command,omitempty"`
	// Usage is the VM's host resource use (live sessions only).
	Usage *Usage `json:"usage,omitempty"`
	// Errors lists non-fatal problems (lima's habit): a dashboard row
	// can show them without the session being stale.
	Errors []string `json:"errors,omitempty"`
}

// Usage is a VM's resource use on the host.
type Usage struct {
	CPUPercent float64 `json:"cpu_percent"`
	RSSBytes   int64   `json:"rss_bytes"`
}

// RunningPTYs counts the session's live terminals.
func (s Session) RunningPTYs() int {
	n := 0
	for _, p := range s.PTYs {
		if p.Running {
			n++
		}
	}
	return n
}

// PTY is one terminal process in a session.
type PTY struct {
	ID       uint64    `json:"id"`
	Argv     []string  `json:"argv"`
	Created  time.Time `json:"created"`
	Main     bool      `json:"main,omitempty"`
	Running  bool      `json:"running"`
	ExitCode *int      `json:"exit_code,omitempty"`
	Rows     uint16    `json:"rows"`
	Cols     uint16    `json:"cols"`
	Clients  int       `json:"clients"`
}

// CreateRequest asks the supervisor for a new session.
type CreateRequest struct {
	Spec Spec `json:"spec"`
	// Command runs on the session's first terminal (default: bash, or sh
	// when the image has no bash).
	Command []string `json:"command,omitempty"`
	// Keep keeps the session running after Command exits.
	Keep  bool   `json:"keep,omitempty"`
	Label string `json:"label,omitempty"`
	Rows  uint16 `json:"rows,omitempty"`
	Cols  uint16 `json:"cols,omitempty"`
	// Resume makes the session from a snapshot (ID, name, or disk path)
	// instead of from an image.
	Resume string `json:"resume,omitempty"`
	// Listen opens ingress routes from host listeners to guest ports.
	Listen []ingress.Route `json:"listen,omitempty"`
	// SSH opens an SSH endpoint on the host that logs into the VM.
	SSH *SSHAccess `json:"ssh,omitempty"`
	// SSHPassphrases carries passphrases of --ssh-credential keys, by
	// credential ID, apart from the spec like SecretValues.
	SSHPassphrases map[string]string `json:"ssh_passphrases,omitempty"`
	// SecretValues carries the values of Spec.Policy's secrets, which
	// never serialise with the policy. They stay in the supervisor's
	// memory only.
	SecretValues map[string]string `json:"secret_values,omitempty"`
}

// OpenPTYRequest asks for a new terminal in a session.
type OpenPTYRequest struct {
	Command []string `json:"command,omitempty"`
	Rows    uint16   `json:"rows,omitempty"`
	Cols    uint16   `json:"cols,omitempty"`
	// Env (KEY=VALUE, after the session's own) and Cwd (instead of the
	// session's) are this terminal's.
	Env []string `json:"env,omitempty"`
	Cwd string   `json:"cwd,omitempty"`
}

// SnapshotInfo is a snapshot as the API lists it, with whether this home
// signed it (Own): a snapshot that is not is foreign, and a resume trusts
// nothing of its record (see snapshots.Store.Own).
type SnapshotInfo struct {
	*snapshots.Snapshot
	Own bool `json:"own"`
}

// ExecRequest is the first frame of an exec stream.
type ExecRequest struct {
	Argv  []string `json:"argv"`
	Env   []string `json:"env,omitempty"`
	Cwd   string   `json:"cwd,omitempty"`
	TTY   bool     `json:"tty,omitempty"`
	Rows  uint16   `json:"rows,omitempty"`
	Cols  uint16   `json:"cols,omitempty"`
	Stdin bool     `json:"stdin,omitempty"`
}

// Screen is a terminal's current contents as the supervisor's emulator
// sees them.
type Screen struct {
	Rows   int    `json:"rows"`
	Cols   int    `json:"cols"`
	Text   string `json:"text"`   // plain text, one line per row
	ANSI   string `json:"ansi"`   // with styles as escape codes
	Cursor [2]int `json:"cursor"` // [row, column], from 0
	Offset uint64 `json:"offset"` // output bytes seen so far
}

// Event is a change the supervisor reports to followers.
type Event struct {
	Type    string    `json:"type"` // session.creating, session.created, session.state, session.removed, pty.opened, pty.exited, pty.output
	Time    time.Time `json:"time"`
	Session string    `json:"session"`
	State   State     `json:"state,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	Phase   string    `json:"phase,omitempty"` // see Session.Phase
	PTY     uint64    `json:"pty,omitempty"`
}

// Event types.
const (
	// EventCreating: a session is being made (State Creating), or its
	// Phase changed; session.created or session.removed ends it.
	EventCreating = "session.creating"
	EventCreated  = "session.created"
	EventState    = "session.state"
	EventRemoved  = "session.removed"
	EventPTYOpen  = "pty.opened"
	EventPTYExit  = "pty.exited"
	EventPTYPaint = "pty.output" // a terminal's screen changed (rate limited)
	EventPolicy   = "session.policy"
	// EventSnapshot: a snapshot of the session began (Phase
	// PhaseSnapshot) or ended, made or not (no Phase).
	EventSnapshot = "session.snapshot"
	// EventUsage is sent every few seconds while a session is live and
	// someone follows events, so a dashboard's CPU and memory columns stay
	// current without polling.
	EventUsage   = "session.usage"
	EventIngress = "session.ingress"
	// EventTemplate says a template's state changed (a rebuild started
	// or ended): read it in the supervisor's status.
	EventTemplate = "template"
)

// SupervisorStatus describes the running supervisor.
type SupervisorStatus struct {
	PID      int       `json:"pid"`
	Started  time.Time `json:"started"`
	Home     string    `json:"home"`
	Sessions int       `json:"sessions"`
	Live     int       `json:"live"`
	// RSSBytes is the supervisor process's own resident memory; the
	// VMs' is apart: SessionsRSSBytes for live sessions' QEMUs,
	// Pool.RSSBytes for the warm pool's.
	RSSBytes         int64 `json:"rss_bytes"`
	SessionsRSSBytes int64 `json:"sessions_rss_bytes"`
	// Pool is the warm pool: VMs restored ahead of need, per shape.
	Pool PoolStatus `json:"pool"`
	// Templates are the home's saved templates: ready, being built, or
	// moved aside as broken (with the reason).
	Templates []vm.TemplateInfo `json:"templates"`
}

// PingInfo is what a ping answers: the supervisor's settings that decide
// whether it can run a one-shot exec as the asking process would.
type PingInfo struct {
	// NetNS is the supervisor's network namespace (/proc/self/ns/net):
	// a VM's network reaches what the supervisor's process reaches.
	NetNS string `json:"netns"`
	// Accel is the supervisor's GONDOLIN_ACCEL.
	Accel string `json:"accel"`
	// Instance is random, one per supervisor process: a client that
	// kept it can tell the supervisor it reaches is the one it met
	// (contexts' forwards check it before they carry a request).
	Instance string `json:"instance,omitempty"`
}

// TemplateRequest asks for the template of a VM shape to be rebuilt.
type TemplateRequest struct {
	Spec Spec `json:"spec"`
}

// Stream frame types for upgraded connections (attach and exec), carried
// with agentproto's frame codec. Output frames reuse agentproto's types.
const (
	frameInput    = 16 // client to server: bytes for the terminal or stdin
	frameInputEOF = 17 // client to server: stdin is done
	frameResize   = 18 // client to server: JSON [rows, cols]
	frameSignal   = 19 // client to server: JSON signal number
)
