package agentproto

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Ops a Request may carry.
const (
	OpPing   = "ping"   // -> Response{Info}
	OpSetup  = "setup"  // Setup -> Response
	OpExec   = "exec"   // Exec -> Response{ID}, then output frames and Exit
	OpStdin  = "stdin"  // ID -> Response, then raw bytes to the process's stdin until EOF
	OpSignal = "signal" // ID, Signal -> Response
	OpResize = "resize" // ID, Rows, Cols -> Response
	OpAttach = "attach" // ID, Offset -> Response, then FrameOutput frames and Exit
	OpList   = "list"   // -> Response{Processes}
	OpSync   = "sync"   // -> Response after sync(2)
	// OpDetach asks the agent to drop this connection and wait for a new
	// handshake; the host sends it before saving a VM's state, so that a
	// restored guest expects a new host.
	OpDetach = "detach"
	// OpShutdown syncs the disks and powers the VM off.
	OpShutdown = "shutdown"
	// OpNetwork configures eth0 (DHCP from the host) and trusts the
	// host's CA: Network -> Response.
	OpNetwork = "network"
	// OpMount mounts a host directory (served on the fs port) or a
	// memory filesystem at a guest path: Mount -> Response.
	OpMount = "mount"
	// OpFreeze freezes (or, with Thaw, thaws) the root filesystem so a
	// disk checkpoint is consistent: Freeze -> Response. A freeze thaws
	// itself after its timeout, so a host that dies mid-checkpoint cannot
	// leave the guest frozen.
	OpFreeze = "freeze"
)

// FSPortName is the virtio-serial port that carries file operations for
// every host mount (see package mounts).
const FSPortName = "org.gondolin.fs"

// Request is the first frame of every stream the host opens.
type Request struct {
	Op      string   `json:"op"`
	ID      uint64   `json:"id,omitempty"`
	Signal  int      `json:"signal,omitempty"`
	Rows    uint16   `json:"rows,omitempty"`
	Cols    uint16   `json:"cols,omitempty"`
	Offset  uint64   `json:"offset,omitempty"`
	Exec    *Exec    `json:"exec,omitempty"`
	Setup   *Setup   `json:"setup,omitempty"`
	Network *Network `json:"network,omitempty"`
	Mount   *Mount   `json:"mount,omitempty"`
	Freeze  *Freeze  `json:"freeze,omitempty"`
}

// Freeze asks for a filesystem freeze or thaw.
type Freeze struct {
	Thaw      bool `json:"thaw,omitempty"`
	TimeoutMS int  `json:"timeout_ms,omitempty"` // auto-thaw; default 10 s
}

// Network asks the agent to bring up the guest's network.
type Network struct {
	// Interface to configure by DHCP (default eth0).
	Interface string `json:"interface,omitempty"`
	// CACert is a PEM certificate the guest must trust (the host's TLS
	// mediation CA), added to the system bundle.
	CACert []byte `json:"ca_cert,omitempty"`
	// SSHKnownHosts is the known_hosts line that makes the guest's ssh
	// trust the host's SSH proxy (written to /etc/ssh/ssh_known_hosts).
	SSHKnownHosts []byte `json:"ssh_known_hosts,omitempty"`
}

// Mount asks the agent to mount a filesystem.
type Mount struct {
	// ID names the host mount on the fs port; empty for a memory mount.
	ID       string `json:"id,omitempty"`
	Path     string `json:"path"` // absolute guest path
	ReadOnly bool   `json:"read_only,omitempty"`
	Memory   bool   `json:"memory,omitempty"`
}

// Exec describes a process to start.
type Exec struct {
	Argv []string `json:"argv"`
	Env  []string `json:"env,omitempty"` // KEY=VALUE, added to the agent's base environment
	Cwd  string   `json:"cwd,omitempty"`
	// TTY runs the process on a new pseudo-terminal of Rows x Cols; its
	// output arrives as FrameStdout.
	TTY  bool   `json:"tty,omitempty"`
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
	// Stdin says a stdin stream will follow; without it stdin is /dev/null.
	Stdin bool `json:"stdin,omitempty"`
	// Persistent processes outlive the exec stream: their output is kept
	// in a bounded ring and can be read again with OpAttach. Others are
	// killed when their stream is lost.
	Persistent bool `json:"persistent,omitempty"`
}

// Setup is sent after every handshake; it is how a cloned or restored
// guest learns its identity, the time, and fresh entropy.
type Setup struct {
	Hostname string `json:"hostname,omitempty"`
	UnixNano int64  `json:"unix_nano,omitempty"`
	Seed     []byte `json:"seed,omitempty"`
	// Env is added to every process's base environment from now on.
	Env []string `json:"env,omitempty"`
}

// Info describes the agent.
type Info struct {
	Version int     `json:"version"`
	Kernel  string  `json:"kernel"`
	BootID  string  `json:"boot_id"`
	Uptime  float64 `json:"uptime"`
}

// Process describes a process the agent manages.
type Process struct {
	ID      uint64      `json:"id"`
	PID     int         `json:"pid"`
	Argv    []string    `json:"argv"`
	TTY     bool        `json:"tty,omitempty"`
	Running bool        `json:"running"`
	Exit    *ExitStatus `json:"exit,omitempty"`
	// Offset is how many output bytes the process has produced.
	Offset uint64 `json:"offset"`
}

// Response answers a Request.
type Response struct {
	Error string `json:"error,omitempty"`
	// Code is the exit code a shell would report for a command that could
	// not start (126 or 127); zero otherwise.
	Code      int       `json:"code,omitempty"`
	ID        uint64    `json:"id,omitempty"`
	PID       int       `json:"pid,omitempty"`
	Info      *Info     `json:"info,omitempty"`
	Processes []Process `json:"processes,omitempty"`
}

// Err returns the response's error, if any.
func (r Response) Err() error {
	if r.Error == "" {
		return nil
	}
	return &AgentError{Msg: r.Error, Code: r.Code}
}

// AgentError is an error reported by the agent. Code, when set, is the exit
// code a shell would give (126: cannot execute, 127: not found).
type AgentError struct {
	Msg  string
	Code int
}

func (e *AgentError) Error() string { return "guest agent: " + e.Msg }

// ExitStatus is how a process ended. Code is the exit code, or 128+Signal
// when a signal killed it, as shells report it.
type ExitStatus struct {
	Code   int `json:"code"`
	Signal int `json:"signal,omitempty"`
}

// Validate checks an exec request before the agent acts on it.
func (e *Exec) Validate() error {
	if e == nil || len(e.Argv) == 0 || e.Argv[0] == "" {
		return errors.New("exec: empty command")
	}
	for _, kv := range e.Env {
		if k, _, ok := bytesCut(kv, '='); !ok || k == "" {
			return fmt.Errorf("exec: environment entry %q is not KEY=VALUE", kv)
		}
	}
	for _, s := range append(append([]string{e.Cwd}, e.Argv...), e.Env...) {
		if bytes.IndexByte([]byte(s), 0) >= 0 {
			return errors.New("exec: NUL byte in command, environment or cwd")
		}
	}
	return nil
}

func bytesCut(s string, sep byte) (string, string, bool) {
	i := bytes.IndexByte([]byte(s), sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+1:], true
}

func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after JSON value")
	}
	return nil
}
