package contexts

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
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
)

// A context's ssh connection is shared (ControlMaster): the first dial
// logs in and runs dial-stdio, which starts the far supervisor and says
// where its socket is. The dialer then asks the shared connection's
// master to forward a local socket to that one (ssh -O forward -L), so
// that later dials are a channel on a connection already made: no login,
// no far shell, no far process to start, one round trip. That is what
// makes `gondolin --context far list` cost about a local list plus one
// ssh round trip.
//
// The local socket lives in the control directory (this user's, mode
// 0700), beside ssh's own control socket, which already gives whoever
// can reach it the far account; ssh makes it mode 0600. It lasts as long
// as the master: ControlPersist ends that a minute after its last
// channel closes, and a dial that finds the socket dead takes the long
// way again. A forward is also remade after forwardMaxAge, so that one
// made to a far socket that has since changed (the far user's home
// moved) does not outlive that bound.
//
// Each forward's socket has a name of its own, and a symlink names the
// current one: ssh's master takes a second forward of the same spec for
// a duplicate and binds nothing, so a forward cannot be remade under the
// same name while its master lives. The master forgets the listeners it
// holds for replaced forwards when it ends.

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

// forwardMaxAge is how long a forward serves before a dial takes the
// long way and remakes it.
const forwardMaxAge = 5 * time.Minute

// forwardProbeTimeout bounds the ping through a forward: past it the
// dial takes the long way, whose own deadline is longer.
const forwardProbeTimeout = 10 * time.Second

// dialForward connects to the far supervisor through the forward at
// path. ssh accepts a local connection before it asks the far side for
// the channel, so a ping must come back before the connection is handed
// on: a request sent into a forward whose far socket is gone would be
// lost, and could not tell why.
func dialForward(ctx context.Context, path string) (net.Conn, error) {
	if fi, err := os.Lstat(path); err != nil {
		return nil, err
	} else if time.Since(fi.ModTime()) > forwardMaxAge {
		return nil, errors.New("the forward is due to be remade")
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			// Its master is gone and left the socket behind (the next
			// forward sweeps that).
			os.Remove(path)
		}
		return nil, err
	}
	if err := ping(ctx, conn); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// ping asks the supervisor behind conn for GET /v1/ping, within a bound
// of time and of bytes, and leaves conn ready for the next request.
func ping(ctx context.Context, conn net.Conn) error {
	conn.SetDeadline(time.Now().Add(forwardProbeTimeout))
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := io.WriteString(conn, "GET /v1/ping HTTP/1.1\r\nHost: gondolin\r\n\r\n"); err != nil {
		return err
	}
	r := bufio.NewReader(io.LimitReader(conn, 64<<10))
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case err != nil:
		return err
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("ping through the forward: %s", resp.Status)
	case r.Buffered() > 0 || resp.Close:
		// Bytes nobody asked for, or a connection about to close: not
		// one to hand the HTTP client.
		return errors.New("ping through the forward: an answer that does not end cleanly")
	}
	return conn.SetDeadline(time.Time{})
}

// validFarSocket is a far supervisor socket this dialer will forward to:
// an absolute path with nothing ssh's -L syntax (':') or a shell could
// read as syntax.
var validFarSocket = regexp.MustCompile(`^/[a-zA-Z0-9/._+-]{1,200}$`)

// forward makes a forward from a new local socket to the far socket far,
// through the shared connection's master, and points the symlink at
// local to it. It is best effort: without a master (the user's config
// turns sharing off), or with a far sshd that refuses forwarding, every
// dial takes the long way, which still works.
func (c Context) forward(t Target, link, far string) {
	if !validFarSocket.MatchString(far) {
		return
	}
	sock := fmt.Sprintf("%s.%d", strings.TrimSuffix(link, ".sock"), time.Now().UnixNano())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	name, args := c.ssh(t, "-O", "forward", "-L", sock+":"+far, "--", t.Host)
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = sshEnv(os.Environ())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = time.Second
	if cmd.Run() != nil {
		return
	}
	if fi, err := os.Lstat(sock); err != nil || fi.Mode().Type() != os.ModeSocket {
		return
	}
	// Point the link at it in one step, then sweep the sockets of
	// earlier forwards to the same place (dead, or replaced).
	tmp := sock + ".link"
	if os.Symlink(filepath.Base(sock), tmp) != nil || os.Rename(tmp, link) != nil {
		os.Remove(tmp)
		os.Remove(sock)
		return
	}
	old, _ := filepath.Glob(strings.TrimSuffix(link, ".sock") + ".*")
	for _, o := range old {
		if o != sock && o != link {
			os.Remove(o)
		}
	}
}
