package guestfs

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"sync"

	"github.com/gondolin/gondolin/mounts/fsproto"
)

// The FUSE filesystems of a guest are served by a daemon process of their
// own, never by the process that starts the guest's commands (the agent).
// Go starts a child with vfork: the parent thread cannot be stopped until
// the child has called execve, so a garbage collection that starts in the
// meantime waits for it. If the child's chdir or execve touches a FUSE
// mount served by the same process, that request waits for the garbage
// collection, and the process hangs for good; in the agent, PID 1, that
// is the whole VM. A daemon that never forks cannot meet this, and a bug
// in it cannot take PID 1 down.
//
// The parent talks to the daemon over a control stream, one JSON line per
// request and reply (DaemonRequest, DaemonReply).

// DaemonRequest asks the daemon to mount host mount ID at Path.
type DaemonRequest struct {
	ID       string `json:"id"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// DaemonReply answers a DaemonRequest.
type DaemonReply struct {
	Error string `json:"error,omitempty"`
}

// RunDaemon serves mount requests from ctrl, with one client of the fs
// port (from open) for all mounts, until ctrl ends; it then unmounts
// everything and returns.
func RunDaemon(ctrl io.ReadWriter, open func() (io.ReadWriteCloser, error), logger *log.Logger) error {
	if logger == nil {
		logger = log.New(io.Discard, "", 0)
	}
	client := fsproto.NewClient(open, logger)
	defer client.Close()
	notices := newRouter(client)
	defer notices.stop()
	var mounted []*Mounted
	defer func() {
		for _, m := range mounted {
			if err := m.Unmount(); err != nil {
				logger.Printf("unmount %s: %v", m.Dir, err)
			}
		}
	}()
	sc := bufio.NewScanner(ctrl)
	enc := json.NewEncoder(ctrl)
	for sc.Scan() {
		var req DaemonRequest
		var reply DaemonReply
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			reply.Error = fmt.Sprintf("bad request: %v", err)
		} else if m, err := Mount(client, req.ID, req.Path, Options{ReadOnly: req.ReadOnly}); err != nil {
			reply.Error = err.Error()
		} else {
			mounted = append(mounted, m)
			notices.add(m)
		}
		if err := enc.Encode(reply); err != nil {
			return err
		}
	}
	return sc.Err()
}

// DaemonConn is the parent's end of a daemon's control stream.
type DaemonConn struct {
	mu  sync.Mutex
	enc *json.Encoder
	dec *json.Decoder
}

// NewDaemonConn talks to a daemon over ctrl.
func NewDaemonConn(ctrl io.ReadWriter) *DaemonConn {
	return &DaemonConn{enc: json.NewEncoder(ctrl), dec: json.NewDecoder(ctrl)}
}

// ErrDaemonGone means the daemon's control stream ended.
var ErrDaemonGone = errors.New("fs daemon gone")

// Mount asks the daemon to mount and waits for the outcome.
func (d *DaemonConn) Mount(id, path string, readOnly bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.enc.Encode(DaemonRequest{ID: id, Path: path, ReadOnly: readOnly}); err != nil {
		return fmt.Errorf("%w: %v", ErrDaemonGone, err)
	}
	var reply DaemonReply
	if err := d.dec.Decode(&reply); err != nil {
		return fmt.Errorf("%w: %v", ErrDaemonGone, err)
	}
	if reply.Error != "" {
		return errors.New(reply.Error)
	}
	return nil
}
