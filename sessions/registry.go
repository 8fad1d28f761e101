package sessions

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/gondolin/gondolin/ingress"
	"github.com/gondolin/gondolin/internal/atomicfile"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/netpolicy"
	"github.com/gondolin/gondolin/vm"
)

// Record is what a session's directory says about it: spec.json, written
// once at creation. Whether the session is live is never stored: it is
// derived from its QEMU process and its agent.
type Record struct {
	ID       string    `json:"id"`
	Spec     Spec      `json:"spec"`
	Created  time.Time `json:"created"`
	ImageRef string    `json:"image_ref"`
	ImageID  string    `json:"image_id"`
	Command  []string  `json:"command"`
	Keep     bool      `json:"keep,omitempty"`
	Label    string    `json:"label,omitempty"`
	// VM is the machine configuration, so that a restarted supervisor
	// adopts the VM as it was made even if image refs moved since.
	VM vm.Config `json:"vm"`
	// HostBootID tells a VM of this boot from a ghost of an earlier one.
	HostBootID string `json:"host_boot_id"`
	// ResumedFrom names the snapshot the session was made from.
	ResumedFrom string `json:"resumed_from,omitempty"`
}

// StateRecord is what changes during a session's life: state.json.
type StateRecord struct {
	// Creating: the session is being made. A supervisor that finds it
	// set when it starts knows an earlier one died midway (see Adopt).
	Creating  bool        `json:"creating,omitempty"`
	Stopped   bool        `json:"stopped,omitempty"`
	StoppedAt time.Time   `json:"stopped_at,omitzero"`
	PTYs      []PTYRecord `json:"ptys,omitempty"`
	// Policy is the network policy as it is now (live edits included),
	// with secret placeholders and without secret values.
	Policy *netpolicy.Policy `json:"policy,omitempty"`
	// Routes and SSH are the listeners to open again after a restart,
	// with the addresses and port they got.
	Routes []ingress.Route `json:"routes,omitempty"`
	SSH    *SSHAccess      `json:"ssh,omitempty"`
}

// PTYRecord remembers a terminal process in the guest.
type PTYRecord struct {
	ID      uint64    `json:"id"` // the agent's process ID
	Argv    []string  `json:"argv"`
	Created time.Time `json:"created"`
	Main    bool      `json:"main,omitempty"`
}

var idRule = regexp.MustCompile(`^[0-9a-f]{1,12}$`)

const idLen = 12

func newID() string {
	var b [idLen / 2]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// registry reads and writes session directories under one home.
type registry struct {
	home layout.Home
}

func (r registry) dir(id string) string { return r.home.Session(id) }

func (r registry) create(rec Record) error {
	if err := layout.MkdirPrivate(r.home.Sessions()); err != nil {
		return err
	}
	dir := r.dir(rec.ID)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if err := atomicfile.WriteJSON(filepath.Join(dir, layout.SpecFile), rec, 0o600); err != nil {
		os.RemoveAll(dir)
		return err
	}
	return r.saveState(rec.ID, StateRecord{Creating: true})
}

func (r registry) saveState(id string, st StateRecord) error {
	return atomicfile.WriteJSON(filepath.Join(r.dir(id), layout.StateFile), st, 0o600)
}

func (r registry) load(id string) (Record, StateRecord, error) {
	var rec Record
	var st StateRecord
	b, err := os.ReadFile(filepath.Join(r.dir(id), layout.SpecFile))
	if err != nil {
		return rec, st, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, st, fmt.Errorf("session %s: corrupt %s: %w", id, layout.SpecFile, err)
	}
	if rec.ID != id {
		return rec, st, fmt.Errorf("session %s: %s names %q", id, layout.SpecFile, rec.ID)
	}
	if b, err := os.ReadFile(filepath.Join(r.dir(id), layout.StateFile)); err == nil {
		if err := json.Unmarshal(b, &st); err != nil {
			return rec, st, fmt.Errorf("session %s: corrupt %s: %w", id, layout.StateFile, err)
		}
	}
	return rec, st, nil
}

// ids lists the session directories.
func (r registry) ids() ([]string, error) {
	entries, err := os.ReadDir(r.home.Sessions())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range entries {
		if e.IsDir() && len(e.Name()) == idLen && idRule.MatchString(e.Name()) {
			ids = append(ids, e.Name())
		}
	}
	sort.Strings(ids)
	return ids, nil
}

func (r registry) remove(id string) error {
	if !idRule.MatchString(id) || len(id) != idLen {
		return errorf(errdefs.ErrInvalid, "bad session id %q", id)
	}
	return os.RemoveAll(r.dir(id))
}

// resolveID finds the one session that ref names: a full ID, a name, or
// an unambiguous ID prefix.
func resolveID(ref string, records []Record) (string, error) {
	if ref == "" {
		return "", errorf(errdefs.ErrInvalid, "empty session id")
	}
	if !idRule.MatchString(ref) && !nameRule.MatchString(ref) {
		return "", errorf(errdefs.ErrInvalid, "bad session id or name %q", ref)
	}
	var byPrefix []string
	for _, rec := range records {
		if rec.ID == ref || (rec.Spec.Name != "" && rec.Spec.Name == ref) {
			return rec.ID, nil
		}
		if strings.HasPrefix(rec.ID, ref) {
			byPrefix = append(byPrefix, rec.ID)
		}
	}
	switch len(byPrefix) {
	case 0:
		return "", errorf(errdefs.ErrNotFound, "no session %q (see: gondolin list --all)", ref)
	case 1:
		return byPrefix[0], nil
	}
	sort.Strings(byPrefix)
	return "", errorf(errdefs.ErrInvalid, "session id %q is ambiguous: it matches %s", ref, strings.Join(byPrefix, ", "))
}

// hostBootID identifies this boot of the host.
func hostBootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
