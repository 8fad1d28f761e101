// Package layout names every file and directory under GONDOLIN_HOME, so
// that no path is spelled twice across the code base.
package layout

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Environment variables users rely on.
const (
	EnvHome         = "GONDOLIN_HOME"
	EnvDefaultImage = "GONDOLIN_DEFAULT_IMAGE"
	EnvAccel        = "GONDOLIN_ACCEL"
	EnvDebug        = "GONDOLIN_DEBUG"
	// EnvCPUs and EnvMemory are the shape of a new VM when --cpus and
	// --memory (or the dashboard's form) leave it open.
	EnvCPUs   = "GONDOLIN_CPUS"
	EnvMemory = "GONDOLIN_MEMORY"
	// EnvPool and EnvPoolMemory size the supervisor's warm pool (VMs per
	// shape; guest memory of all of them together).
	EnvPool       = "GONDOLIN_POOL"
	EnvPoolMemory = "GONDOLIN_POOL_MEMORY"
	// EnvNoSupervisor makes exec run its VM in its own process, never
	// starting or using a supervisor (no warm pool then).
	EnvNoSupervisor = "GONDOLIN_NO_SUPERVISOR"
)

// serviceEnv are the only variables gondolin's long-lived processes (the
// supervisor, QEMU) keep from the environment that starts them: a token
// exported for one command must not sit in /proc/PID/environ of processes
// that outlive it.
var serviceEnv = map[string]bool{
	"PATH": true, "HOME": true, "USER": true, "LOGNAME": true, "TMPDIR": true, "LANG": true, "LC_ALL": true,
	"XDG_DATA_HOME": true, "XDG_CACHE_HOME": true, "XDG_RUNTIME_DIR": true, "TZ": true,
	// The trust roots the supervisor's proxy verifies upstreams against.
	"SSL_CERT_FILE": true, "SSL_CERT_DIR": true,
	EnvHome: true, EnvAccel: true, EnvDebug: true, EnvDefaultImage: true,
	EnvPool: true, EnvPoolMemory: true,
}

// ServiceEnv returns the part of environ (KEY=VALUE entries) that a
// long-lived gondolin process may keep (see serviceEnv), plus extra.
func ServiceEnv(environ []string, extra ...string) []string {
	var out []string
	for _, kv := range environ {
		if k, _, ok := strings.Cut(kv, "="); ok && serviceEnv[k] {
			out = append(out, kv)
		}
	}
	return append(out, extra...)
}

// DefaultImage is the image used when neither --image nor
// GONDOLIN_DEFAULT_IMAGE names one.
const DefaultImage = "default:latest"

// File names inside a VM's run directory (a session's directory or a
// one-shot VM's scratch directory).
const (
	AgentSocket = "agent.sock"
	QMPSocket   = "qmp.sock"
	NetSocket   = "net.sock"
	FSSocket    = "fs.sock"
	ConsoleLog  = "console.log"
	// ConsoleLogOld holds the end of the console log from before its last
	// rotation (see vm: the log is capped).
	ConsoleLogOld = "console.log.1"
	QEMULog       = "qemu.log"
	QEMUPid       = "qemu.pid"
	Disk          = "disk.qcow2"
	// TemplateDisk is a clone's hard link to its template's disk, which
	// its overlay is backed by: the template can then be moved aside or
	// rebuilt without breaking the clone.
	TemplateDisk = "template.qcow2"
	OwnerLock    = "owner.lock"
	SpecFile     = "spec.json"
	StateFile    = "state.json"
	// PoolMarker marks a directory under Sessions that holds a warm pool
	// VM, or a one-shot exec's VM claimed from the pool, rather than a
	// session (which has a SpecFile). A supervisor that starts kills
	// the VM of every such directory and removes it: a previous
	// supervisor died holding it.
	PoolMarker = "pool.json"
)

// A saved machine (a template, a snapshot) keeps its RAM and device
// state in SavedState, zstd-compressed, beside its frozen Disk.
const SavedState = "state.zst"

// Files of the snapshot store (Home.Snapshots): each snapshot directory
// holds SnapshotMeta beside its Disk and SavedState. A snapshot written to
// a path of the user's choice (PATH is the disk) keeps its metadata and
// state beside it, in PATH+SnapshotSidecarMeta and
// PATH+SnapshotSidecarState.
const (
	SnapshotMeta         = "meta.json"
	SnapshotSidecarMeta  = ".json"
	SnapshotSidecarState = ".state.zst"
)

// AccelCache, in the home, remembers whether KVM worked here (a probe
// boot costs seconds).
const AccelCache = "accel.json"

// SessionSSHDir, in a session's directory, holds its --ssh access keys.
const SessionSSHDir = "ssh"

// Files of a template directory (Home.Templates()/KEY): beside its Disk
// and SavedState, TemplateInfo says it was checked, TemplateConsole is the
// template VM's console and TemplateLock serialises its build. A template
// that broke is moved under TemplatesBroken with BrokenInfo (why) and the
// failed clone's console and QEMU log.
const (
	TemplateInfo       = "template.json"
	TemplateConsole    = ConsoleLog
	TemplateLock       = ".lock"
	TemplatesBroken    = "broken"
	BrokenInfo         = "broken.json"
	BrokenCloneConsole = "clone-console.log"
	BrokenCloneQEMULog = "clone-qemu.log"
)

// Files of the home's CA directory (Home.CA()).
const (
	CACert = "ca.pem"
	CAKey  = "ca.key"
	CALock = ".lock"
)

// Locks of the image store (Home.Images()).
const (
	ImagesBlobLock = "blobs.lock"
	ImagesRefLock  = "refs.lock"
)

// SnapshotKeyFile, in the snapshot store (Home.Snapshots), holds the
// home's secret key: 32 random bytes, made on first use, that sign the
// metadata of every snapshot this home takes. A resume trusts a
// snapshot's recorded mounts, policy and live state only with a valid
// signature (see package snapshots).
const SnapshotKeyFile = "snapshot.key"

// MaxSocketPath is the longest unix socket path the kernel accepts
// (sun_path is 108 bytes including the terminating NUL).
const MaxSocketPath = 107

// Home is the root of all gondolin state.
type Home string

// DefaultHome returns $GONDOLIN_HOME, else $XDG_DATA_HOME/gondolin, else
// ~/.local/share/gondolin.
func DefaultHome() (Home, error) {
	if h := os.Getenv(EnvHome); h != "" {
		abs, err := filepath.Abs(h)
		if err != nil {
			return "", fmt.Errorf("%s: %w", EnvHome, err)
		}
		return Home(abs), nil
	}
	if x := os.Getenv("XDG_DATA_HOME"); x != "" && filepath.IsAbs(x) {
		return Home(filepath.Join(x, "gondolin")), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", errors.New("cannot find a home directory: set GONDOLIN_HOME")
	}
	return Home(filepath.Join(home, ".local", "share", "gondolin")), nil
}

func (h Home) path(elem ...string) string {
	return filepath.Join(append([]string{string(h)}, elem...)...)
}

// Images is the image store's root.
func (h Home) Images() string { return h.path("images") }

// Sessions holds one directory per session.
func (h Home) Sessions() string { return h.path("sessions") }

// Session is one session's directory.
func (h Home) Session(id string) string { return h.path("sessions", id) }

// Run holds the scratch directories of one-shot VMs.
func (h Home) Run() string { return h.path("run") }

// Snapshots holds saved checkpoints.
func (h Home) Snapshots() string { return h.path("snapshots") }

// Templates holds booted-and-saved VMs that exec clones.
func (h Home) Templates() string { return h.path("templates") }

// CA holds the local certificate authority for TLS mediation.
func (h Home) CA() string { return h.path("ca") }

// SupervisorSocket is the supervisor API's unix socket.
func (h Home) SupervisorSocket() string { return h.path("supervisor.sock") }

// SupervisorLog is where a detached supervisor writes its log.
func (h Home) SupervisorLog() string { return h.path("supervisor.log") }

// SupervisorLock is held by the one running supervisor.
func (h Home) SupervisorLock() string { return h.path("supervisor.lock") }

// Cache is for data that can be fetched again (downloaded packages).
func Cache() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("cannot find a cache directory: %w", err)
	}
	return filepath.Join(dir, "gondolin"), nil
}

// MkdirPrivate creates dir and its parents with mode 0700.
func MkdirPrivate(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.Chmod(dir, 0o700)
}
