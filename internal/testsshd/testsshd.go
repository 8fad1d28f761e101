// Package testsshd starts a real sshd on a loopback port with throwaway
// keys, so that tests and the bench can reach "another machine" through
// the user's own ssh without touching the user's keys or config.
package testsshd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// Server is a running sshd and the files that log in to it, all in Dir:
// a key pair per client name given to Start, and a known_hosts that
// holds the server's host key.
type Server struct {
	Dir  string
	Port int
	cmd  *exec.Cmd
	done chan struct{} // closed when sshd has exited
}

// Tool returns the path of the named program, looked up in PATH and then
// in /usr/sbin and /sbin (where sshd lives, often outside a user's PATH).
// A missing one is an error that wraps exec.ErrNotFound.
func Tool(name string) (string, error) {
	for _, dir := range []string{"", "/usr/sbin/", "/sbin/"} {
		if p, err := exec.LookPath(dir + name); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s is not installed (apt install openssh-server openssh-client): %w", name, exec.ErrNotFound)
}

// Start makes keys in dir (one pair per client name, "client" when none
// is given), starts sshd on a free loopback port with them, and waits
// until it listens. Logins are by key only; sshd runs until Stop.
func Start(dir string, clients ...string) (*Server, error) {
	return StartConfig(dir, "", clients...)
}

// StartConfig is Start with extra lines for sshd_config (a server that
// refuses something, say).
func StartConfig(dir, extra string, clients ...string) (*Server, error) {
	sshd, err := Tool("sshd")
	if err != nil {
		return nil, err
	}
	keygen, err := Tool("ssh-keygen")
	if err != nil {
		return nil, err
	}
	if _, err := Tool("ssh"); err != nil {
		return nil, err
	}
	if len(clients) == 0 {
		clients = []string{"client"}
	}
	// sshd (StrictModes off aside) wants the keys' directory readable.
	os.Chmod(dir, 0o755)
	for _, k := range append([]string{"host"}, clients...) {
		if out, err := exec.Command(keygen, "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("ssh-keygen: %v: %s", err, out)
		}
	}
	// Only the first client is authorized: the others are strangers.
	pub, err := os.ReadFile(filepath.Join(dir, clients[0]+".pub"))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	config := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s/host
AuthorizedKeysFile %s/authorized_keys
PidFile %s/sshd.pid
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
%s
`, port, dir, dir, dir, extra)
	if err := os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(config), 0o600); err != nil {
		return nil, err
	}
	os.MkdirAll("/run/sshd", 0o755) // its privilege separation directory, when run as root
	log, err := os.Create(filepath.Join(dir, "sshd.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := exec.Command(sshd, "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	s := &Server{Dir: dir, Port: port, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(s.done) }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("sshd exited: %s", s.Log())
		default:
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, errors.New("sshd did not listen in 10s: " + s.Log())
		}
	}
	hostPub, err := os.ReadFile(filepath.Join(dir, "host.pub"))
	if err != nil {
		s.Stop()
		return nil, err
	}
	known := fmt.Sprintf("[127.0.0.1]:%d %s", port, hostPub)
	if err := os.WriteFile(filepath.Join(dir, "known_hosts"), []byte(known), 0o600); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// SSHCommand is an ssh command line (for GONDOLIN_SSH_COMMAND) that logs
// in with key and trusts only this server's host key, reading none of
// the user's ssh config.
func (s *Server) SSHCommand(key string) string {
	return fmt.Sprintf("ssh -F /dev/null -i %s/%s -o IdentitiesOnly=yes -o UserKnownHostsFile=%s/known_hosts -o StrictHostKeyChecking=yes",
		s.Dir, key, s.Dir)
}

// URL is the server as a context's --host, logging in as user.
func (s *Server) URL(user string) string {
	return "ssh://" + user + "@127.0.0.1:" + strconv.Itoa(s.Port)
}

// Log is what sshd has written so far.
func (s *Server) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "sshd.log"))
	return string(b)
}

// Stop kills the listening sshd. Sessions it forked end when their
// clients do (an ssh control master is the caller's to stop).
func (s *Server) Stop() {
	s.cmd.Process.Kill()
	<-s.done
}
