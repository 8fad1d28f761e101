package contexts

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/internal/atomicfile"
)

// A context's ssh connection is shared (ControlMaster): the first dial
// logs in and runs dial-stdio, which starts the far supervisor and says
// where its socket is and which instance it is. The dialer then asks the
// shared connection's master to forward a local socket to that one (ssh
// -O forward -L), so that later dials are a channel on a connection
// already made: no login, no far shell, no far process to start, one
// round trip. That is what makes `gondolin --context far list` cost
// about a local list plus one ssh round trip.
//
// Files, all in the control directory (this user's, mode 0700, beside
// ssh's own control sockets, which already give whoever can reach them
// the far account), for a forward key K (forwardPath):
//
//	api-K.sock        symlink to the current forward's socket
//	api-K.N           a forward's socket (N: when it was made), mode 0600
//	api-K.N.far       what it forwards to: the far socket and instance
//	api-K.lock        held while forwards are made or swept
//	api-K.off         forwarding failed here: not tried again for a while
//
// Before a forward carries a request, its supervisor must answer a ping
// with the instance the last dial-stdio greeted with: ssh accepts the
// local connection before the far side says whether the channel opens
// (a request into a channel that failed would be lost without a reason),
// and a forward must not reach another supervisor than the one met (the
// far one restarted at another version, or the user's ssh config now
// sends the host name elsewhere). Any failure sends the dial the long
// way, which starts what is missing and then mends the forward: the
// same one when it reaches the greeted instance, else a new one, the
// old cancelled in its master (a master holds a listener per forward
// until it ends).

// forwardPath is the symlink to the local socket that forwards to c's
// far supervisor: one per far account, gondolin command and ssh command,
// since each of those can name another supervisor. "" when there is no
// private control directory (and so no shared connection to forward
// through).
func (c Context) forwardPath() string {
	dir, err := controlDir()
	if err != nil {
		return ""
	}
	sum := sha256.Sum256([]byte(c.Host + "\x00" + c.gondolin() + "\x00" + os.Getenv(EnvSSHCommand) + "\x00" + strconv.Itoa(APIVersion)))
	return filepath.Join(dir, "api-"+hex.EncodeToString(sum[:8])+".sock")
}

// forwardStem is a link's name without ".sock": the other files' prefix.
func forwardStem(link string) string { return strings.TrimSuffix(link, ".sock") }

const (
	// pingTimeout bounds a ping through a forward: past it the dial
	// takes the long way, whose own deadline is longer.
	pingTimeout = 10 * time.Second
	// offFor is how long a failed forward keeps this dialer from trying
	// again (sharing turned off, a far sshd that refuses forwarding).
	offFor = 10 * time.Minute
)

var (
	// validFarSocket is a far supervisor socket this dialer forwards
	// to: an absolute path with nothing ssh's -L syntax (':') or a
	// shell could read as syntax.
	validFarSocket = regexp.MustCompile(`^/[a-zA-Z0-9/._+-]{1,200}$`)
	validInstance  = regexp.MustCompile(`^[A-Z2-7]{8,64}$`)
)

// dialForward connects to the far supervisor through the forward that
// link names, if it answers as the instance its record says.
func dialForward(ctx context.Context, link string) (net.Conn, error) {
	target, err := os.Readlink(link)
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(filepath.Dir(link), filepath.Base(target))
	far, err := readRecord(sock)
	if err != nil {
		return nil, err
	}
	return dialChecked(ctx, sock, far.instance)
}

var errAnotherSupervisor = errors.New("the forward reaches another supervisor than the one met")

// dialChecked connects to sock and pings the supervisor behind it,
// which must be instance.
func dialChecked(ctx context.Context, sock, instance string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, err
	}
	got, err := ping(ctx, conn)
	if err == nil && got != instance {
		err = errAnotherSupervisor
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// ping asks the supervisor behind conn for GET /v1/ping, within a bound
// of time and of bytes, and returns its instance. conn is then ready
// for the next request.
func ping(ctx context.Context, conn net.Conn) (string, error) {
	conn.SetDeadline(time.Now().Add(pingTimeout))
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	if _, err := io.WriteString(conn, "GET /v1/ping HTTP/1.1\r\nHost: gondolin\r\n\r\n"); err != nil {
		stop()
		return "", err
	}
	r := bufio.NewReader(io.LimitReader(conn, 64<<10))
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		stop()
		return "", err
	}
	var info struct {
		Instance string `json:"instance"`
	}
	err = json.NewDecoder(resp.Body).Decode(&info)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
	}
	resp.Body.Close()
	if !stop() {
		// ctx ended: its deadline may be on conn, or about to be.
		return "", ctx.Err()
	}
	switch {
	case err != nil:
		return "", err
	case resp.StatusCode != http.StatusOK:
		return "", fmt.Errorf("ping through the forward: %s", resp.Status)
	case r.Buffered() > 0 || resp.Close:
		// Bytes nobody asked for, or a connection about to close: not
		// one to hand the HTTP client.
		return "", errors.New("ping through the forward: an answer that does not end cleanly")
	}
	return info.Instance, conn.SetDeadline(time.Time{})
}

// readRecord reads what the forward at sock forwards to.
func readRecord(sock string) (farSupervisor, error) {
	f, err := os.Open(sock + ".far")
	if err != nil {
		return farSupervisor{}, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 1024))
	if err != nil {
		return farSupervisor{}, err
	}
	socket, instance, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
	if !validFarSocket.MatchString(socket) || !validInstance.MatchString(instance) {
		return farSupervisor{}, fmt.Errorf("%s.far: not a forward's record", sock)
	}
	return farSupervisor{socket, instance}, nil
}

// writeRecord writes sock's record in one step.
func writeRecord(sock string, far farSupervisor) error {
	return atomicfile.WriteFile(sock+".far", []byte(far.socket+" "+far.instance+"\n"), 0o600)
}

// forward mends the forward at link after a dial-stdio that greeted as
// far: when the current forward leads to far's socket and reaches its
// instance, its record is brought up to date; else a new forward is
// made, checked, and linked, and the others are cancelled and removed.
// It is best effort: a dial whose forward cannot be made takes the long
// way, which still works.
func (c Context) forward(ctx context.Context, t Target, link string, far farSupervisor) {
	stem := forwardStem(link)
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	unlock, err := lockFile(ctx, stem+".lock")
	if err != nil {
		return
	}
	defer unlock()

	dir := filepath.Dir(link)
	if target, err := os.Readlink(link); err == nil {
		current := filepath.Join(dir, filepath.Base(target))
		if rec, err := readRecord(current); err == nil && rec.socket == far.socket {
			if conn, err := dialChecked(ctx, current, far.instance); err == nil {
				conn.Close()
				if rec.instance == far.instance || writeRecord(current, far) == nil {
					return
				}
			}
		}
	}
	if fi, err := os.Stat(stem + ".off"); err == nil && time.Since(fi.ModTime()) < offFor {
		return
	}

	sock := fmt.Sprintf("%s.%d", stem, time.Now().UnixNano())
	// drop undoes the new forward; off also keeps this dialer from
	// trying again for a while, for a failure that says forwarding
	// does not work here (not one of time, or of which supervisor
	// answered: a greeting can be older than another process's).
	drop := func(off bool) {
		if c.cancelForward(ctx, t, sock, far.socket) == nil || !listening(sock) {
			os.Remove(sock)
			os.Remove(sock + ".far")
		}
		if off && ctx.Err() == nil {
			os.WriteFile(stem+".off", nil, 0o600)
		}
	}
	// The record first: a socket whose cancel fails is swept later,
	// which needs to know what it forwards to.
	if writeRecord(sock, far) != nil {
		return
	}
	if err := c.sshControl(ctx, t, "forward", sock, far.socket); err != nil {
		drop(true)
		return
	}
	// A far sshd that refuses forwarding still lets the master bind:
	// only a connection through it tells.
	conn, err := dialChecked(ctx, sock, far.instance)
	if err != nil {
		drop(!errors.Is(err, errAnotherSupervisor))
		return
	}
	conn.Close()
	tmp := sock + ".link"
	if os.Symlink(filepath.Base(sock), tmp) != nil || os.Rename(tmp, link) != nil {
		os.Remove(tmp)
		drop(false)
		return
	}
	os.Remove(stem + ".off")
	c.sweep(ctx, t, stem, sock)
}

// sweep cancels and removes every forward of stem but keep (replaced
// ones, and dead ones whose master has ended), and what is left of
// interrupted ones. A socket whose cancel failed while its master
// still listens stays, with its record, for the next sweep.
func (c Context) sweep(ctx context.Context, t Target, stem, keep string) {
	names, _ := filepath.Glob(stem + ".[0-9]*")
	for _, name := range names {
		num, rest, _ := strings.Cut(strings.TrimPrefix(name, stem+"."), ".")
		sock := stem + "." + num
		switch {
		case sock == keep:
			continue
		case rest == "far":
			if _, err := os.Lstat(sock); err == nil {
				continue // goes with its socket, below
			}
		case rest == "":
			if rec, err := readRecord(sock); err == nil && listening(sock) && c.cancelForward(ctx, t, sock, rec.socket) != nil {
				continue
			}
			os.Remove(sock + ".far")
		}
		os.Remove(name) // a socket, or an orphan record, link or temporary
	}
}

// listening says whether a listener still answers at sock (its master
// lives).
func listening(sock string) bool {
	conn, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, os.ErrNotExist)
	}
	conn.Close()
	return true
}

// cancelForward asks the master to drop a forward, with a bound of its
// own: a caller out of time must still not leave a listener behind.
func (c Context) cancelForward(ctx context.Context, t Target, sock, far string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	return c.sshControl(ctx, t, "cancel", sock, far)
}

// sshControl asks the shared connection's master to forward (or cancel
// the forward of) the local socket sock to the far socket far.
func (c Context) sshControl(ctx context.Context, t Target, op, sock, far string) error {
	name, args := c.ssh(t, "-O", op, "-L", sock+":"+far, "--", t.Host)
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = sshEnv(os.Environ())
	cmd.SysProcAttr = sshProcAttr()
	// On the deadline, all of it: GONDOLIN_SSH_COMMAND's sh and its ssh.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	return cmd.Run()
}

// lockFile takes an exclusive flock on path, waiting until ctx ends.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
