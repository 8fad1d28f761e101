package netpolicy

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
	"gvisor.dev/gvisor/pkg/tcpip"
)

// SSH egress. A guest flow that opens with "SSH-2.0-" ends at an SSH
// server in this process, which stands in for the upstream: it completes
// the guest's handshake with a host certificate for the name the guest
// dialled (signed by a CA the guest trusts, see SSHKnownHosts), lets the
// guest log in with any key, and for an allowed host opens the real
// upstream connection, verifies its host key against the known_hosts
// files and logs in with the host's agent or key. Only session channels
// carrying exec requests pass, and by default only git's commands
// (git-upload-pack, git-receive-pack, git-upload-archive) with one
// repository path, re-quoted as git quotes them (parseGitCommand).
//
// Why accepting any guest key is safe: this server is reachable only
// from the one VM whose stack it runs on, and the guest is the untrusted
// party anyway, so a guest password or key would prove nothing. What the
// guest can do is bounded by the host side: which hosts (SSHAllow), which
// user logs in upstream (the rule's or credential's, else "git"; a guest
// asking for another name is refused, so the host's keys never sign a
// login the user did not name), which key (the credential or the agent,
// chosen on the host), and which requests pass (exec of git's commands
// only, unless the rule is --ssh-allow-exec: no shell, terminal,
// subsystem, environment but GIT_PROTOCOL, agent or X11 forwarding, or
// port forwarding). The key itself never reaches the guest; only the
// signatures it makes travel, and only to an upstream whose host key the
// user listed.

// GuestSSHKnownHosts is where the guest's OpenSSH reads system-wide known
// hosts; the agent writes Network.SSHKnownHosts there.
const GuestSSHKnownHosts = "/etc/ssh/ssh_known_hosts"

// sshProxy holds what every guest SSH connection of one VM shares.
type sshProxy struct {
	n *Network
	// hostKey is the key behind every host certificate; it lives as
	// long as the Network, so guests only ever pin the CA.
	hostKey ssh.Signer
	ca      ssh.Signer
	// slots bounds SSH connections in progress; each has at most one
	// upstream connection, so this bounds those too.
	slots chan struct{}

	mu    sync.Mutex
	certs map[string]ssh.Signer
}

// maxSSHCerts bounds the host certificate cache (see ca.maxLeaves).
const maxSSHCerts = 1024

// sshEnvAllowed is what "env" requests may set upstream: git's protocol
// version, which git needs for protocol v2. Anything else (the locale
// Debian's ssh_config sends, LD_PRELOAD, ...) is guest bytes in the
// upstream's environment, refused without a word: clients do not wait
// for an answer to env.
func sshEnvAllowed(name, value string) bool {
	return name == "GIT_PROTOCOL" && validGitProtocol(value)
}

func newSSHProxy(n *Network) (*sshProxy, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	hostKey, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	ca, err := ssh.NewSignerFromKey(n.ca.SSHHostCAKey())
	if err != nil {
		return nil, err
	}
	return &sshProxy{n: n, hostKey: hostKey, ca: ca, slots: make(chan struct{}, n.opts.MaxSSHConns), certs: map[string]ssh.Signer{}}, nil
}

// SSHKnownHosts returns the known_hosts line that makes the guest's SSH
// clients trust the host certificates the SSH proxy presents, for every
// host name. The agent writes it to GuestSSHKnownHosts. It is derived
// from the CA in GONDOLIN_HOME/ca, so it stays valid across supervisor
// restarts.
func (n *Network) SSHKnownHosts() []byte {
	key := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(n.ssh.ca.PublicKey())))
	return []byte("@cert-authority * " + key + " gondolin-ssh-host-ca\n")
}

// hostSigner returns a host certificate for name. The certificate never
// expires: its key exists only in this process's memory, and a validity
// window would only break guests whose clock a snapshot restore left
// behind.
func (sp *sshProxy) hostSigner(name string) (ssh.Signer, error) {
	sp.mu.Lock()
	s, ok := sp.certs[name]
	sp.mu.Unlock()
	if ok {
		return s, nil
	}
	var serial [8]byte
	rand.Read(serial[:])
	cert := &ssh.Certificate{
		Key:             sp.hostKey.PublicKey(),
		Serial:          binary.BigEndian.Uint64(serial[:]),
		CertType:        ssh.HostCert,
		KeyId:           "gondolin " + name,
		ValidPrincipals: []string{name},
		ValidAfter:      0,
		ValidBefore:     ssh.CertTimeInfinity,
	}
	if err := cert.SignCert(rand.Reader, sp.ca); err != nil {
		return nil, err
	}
	s, err := ssh.NewCertSigner(cert, sp.hostKey)
	if err != nil {
		return nil, err
	}
	sp.mu.Lock()
	if len(sp.certs) >= maxSSHCerts {
		for k := range sp.certs { // evict one arbitrary entry
			delete(sp.certs, k)
			break
		}
	}
	sp.certs[name] = s
	sp.mu.Unlock()
	return s, nil
}

// flowName is the name a flow's destination is attributed to: the name
// synthetic DNS handed out for it, else (a restart lost the table) an
// exact SSH allow name the address belongs to, else the address itself.
func (sp *sshProxy) flowName(p *Policy, a netip.Addr) string {
	if !SyntheticPrefix.Contains(a) {
		return a.String()
	}
	if name, ok := sp.n.synth.name(a); ok {
		return name
	}
	for _, h := range p.sshExactNames() {
		if sp.n.synth.verify(a, h) {
			return h
		}
	}
	return a.String()
}

// serve runs one guest SSH connection (fc's peeked bytes hold at least
// the start of its identification line).
func (sp *sshProxy) serve(fc *flowConn, ep tcpip.Endpoint) {
	n := sp.n
	p := n.policy.Load()
	dst := fc.fl.dst
	name := sp.flowName(p, dst.Addr())
	ev := Event{Proto: "ssh", Method: "connect", Host: name, Port: dst.Port()}
	reset := func(reason string) {
		ev.Action, ev.Reason = Blocked, reason
		n.event(ev)
		ep.Abort()
		fc.Close()
	}
	// With no SSH host allowed nothing answers the guest's handshake:
	// the proxy is not even reachable.
	if len(p.SSHAllow) == 0 {
		reset("SSH egress is off; allow hosts with --ssh-allow-host")
		return
	}
	if _, err := parseSSHBanner(fc.pre); err != nil {
		reset(err.Error())
		return
	}
	select {
	case sp.slots <- struct{}{}:
		defer func() { <-sp.slots }()
	default:
		reset(fmt.Sprintf("too many SSH connections (limit %d per VM)", n.opts.MaxSSHConns))
		return
	}
	defer fc.Close()

	signer, err := sp.hostSigner(name)
	if err != nil {
		reset("host certificate: " + err.Error())
		return
	}
	cfg := &ssh.ServerConfig{
		// The guest logs in with anything (see the comment at the
		// top of this file): "none", which OpenSSH tries first, or
		// any key from a client that skips it.
		NoClientAuth:      true,
		PublicKeyCallback: func(ssh.ConnMetadata, ssh.PublicKey) (*ssh.Permissions, error) { return nil, nil },
		ServerVersion:     "SSH-2.0-gondolin",
	}
	cfg.AddHostKey(signer)
	fc.SetDeadline(time.Now().Add(n.opts.SSHHandshakeTimeout))
	gconn, gchans, greqs, err := ssh.NewServerConn(fc, cfg)
	if err != nil {
		ev.Action = Failed
		ev.Reason = "SSH handshake with the guest failed (does it trust " + GuestSSHKnownHosts + "?): " + err.Error()
		n.event(ev)
		return
	}
	fc.SetDeadline(time.Time{})
	defer gconn.Close()
	gev := ev // as a go statement would: ev changes below
	n.goFlow("an SSH connection's requests", gev, gconn, func() { sp.guestGlobalRequests(greqs, gev) })

	hostport := joinPattern(name, dst.Port())
	rule, ruleName, ok := p.sshRule(name, dst.Port())
	if !ok {
		ev.Action, ev.Rule = Blocked, ruleName
		ev.Reason = fmt.Sprintf("SSH to %s is not allowed; allow it with --ssh-allow-host %s", hostport, hostport)
		if ruleName != "" {
			ev.Reason = fmt.Sprintf("SSH to %s is denied (%s)", hostport, ruleName)
		}
		n.event(ev)
		sp.refuse(gconn, gchans, ev.Reason)
		return
	}
	ev.Rule = ruleName
	// The login name upstream is the host's choice. A guest asking for
	// another is refused rather than quietly given this one, so that it
	// learns which name to use and never believes it logged in as
	// someone else.
	ev.User = p.sshLogin(rule, name, dst.Port())
	if guest := gconn.User(); guest != ev.User {
		ev.Action = Blocked
		ev.Reason = fmt.Sprintf("the guest asked to log in as %s, but the SSH proxy logs in to %s as %s only: connect as %s@%s",
			quoteGuest(guest), hostport, ev.User, ev.User, name)
		n.event(ev)
		sp.refuse(gconn, gchans, ev.Reason)
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, n.opts.SSHHandshakeTimeout)
	up, err := sp.connectUpstream(ctx, p, name, dst.Port(), ev.User)
	cancel()
	if err != nil {
		ev.dialFailed(p, err)
		n.event(ev)
		sp.refuse(gconn, gchans, ev.Reason)
		return
	}
	defer up.Close()
	ev.Action = Allowed
	n.event(ev)
	// Either side ending ends the other.
	go func() {
		up.Wait()
		gconn.Close()
	}()
	for nc := range gchans {
		switch typ := nc.ChannelType(); typ {
		case "session":
			sev := ev
			n.goFlow("an SSH session", sev, gconn, func() { sp.relaySession(nc, up, sev, rule) })
		case "direct-tcpip", "direct-streamlocal@openssh.com":
			e := ev
			e.Method, e.Command = typ, forwardTarget(nc.ExtraData())
			sp.block(e, "port forwarding is not allowed through the SSH proxy")
			nc.Reject(ssh.Prohibited, "gondolin: port forwarding is not allowed through the SSH proxy; only commands (exec) pass")
		default:
			e := ev
			e.Method = typ
			sp.block(e, "only session channels pass the SSH proxy")
			nc.Reject(ssh.Prohibited, "gondolin: only session channels with commands (exec) pass the SSH proxy")
		}
	}
}

// quoteGuest shows a name the guest chose in an event or message: cut to
// 64 bytes and Go-quoted, so control bytes show as escapes.
func quoteGuest(s string) string {
	if len(s) > 64 {
		s = s[:64]
	}
	return strconv.Quote(s)
}

func (sp *sshProxy) block(e Event, reason string) {
	e.Action, e.Reason, e.Time = Blocked, reason, time.Time{}
	sp.n.event(e)
}

// refuse tells the guest why its connection goes nowhere: every channel
// it opens is rejected with the reason, which OpenSSH prints ("channel 0:
// open failed: administratively prohibited: ..."). Guests that linger are
// cut off after the handshake timeout.
func (sp *sshProxy) refuse(gconn *ssh.ServerConn, chans <-chan ssh.NewChannel, reason string) {
	t := time.AfterFunc(sp.n.opts.SSHHandshakeTimeout, func() { gconn.Close() })
	defer t.Stop()
	for nc := range chans {
		nc.Reject(ssh.Prohibited, "gondolin: "+reason)
	}
}

// guestGlobalRequests refuses every connection-level request: the only
// ones that matter are port forwardings (tcpip-forward), which are
// recorded; keepalives are answered with a refusal, which OpenSSH takes
// as proof of life.
func (sp *sshProxy) guestGlobalRequests(reqs <-chan *ssh.Request, ev Event) {
	for r := range reqs {
		if r.Type == "tcpip-forward" || r.Type == "streamlocal-forward@openssh.com" {
			e := ev
			e.Method = r.Type
			sp.block(e, "port forwarding is not allowed through the SSH proxy")
		}
		if r.WantReply {
			r.Reply(false, nil)
		}
	}
}

// forwardTarget describes a direct-tcpip request's destination for an
// event.
func forwardTarget(extra []byte) string {
	var m struct {
		Host  string
		Port  uint32
		OHost string
		OPort uint32
	}
	if ssh.Unmarshal(extra, &m) != nil {
		return ""
	}
	return net.JoinHostPort(m.Host, fmt.Sprint(m.Port))
}

// sshRefusals are the session requests that never pass, with what the
// guest is told (on the channel's stderr: a failed request carries no
// message of its own).
var sshRefusals = map[string]string{
	"shell":                      "interactive shells are not allowed through the SSH proxy; only commands (exec) pass, as git uses them",
	"subsystem":                  "subsystems (sftp) are not allowed through the SSH proxy; only commands (exec) pass",
	"pty-req":                    "terminals (pty) are not allowed through the SSH proxy; only commands (exec) pass",
	"x11-req":                    "X11 forwarding is not allowed through the SSH proxy",
	"auth-agent-req@openssh.com": "agent forwarding is not allowed through the SSH proxy (the host logs in for you)",
}

// relaySession pairs a guest session channel with an upstream one and
// relays it, passing only exec (and the env and signal requests that go
// with it); unless rule.AnyCommand, only git's commands, as git spells
// them.
func (sp *sshProxy) relaySession(nc ssh.NewChannel, up *ssh.Client, base Event, rule SSHHost) {
	uch, ureqs, err := up.OpenChannel("session", nil)
	if err != nil {
		msg := err.Error()
		var oe *ssh.OpenChannelError
		if errors.As(err, &oe) {
			msg = oe.Message
		}
		nc.Reject(ssh.ConnectionFailed, "gondolin: the upstream refused a session: "+msg)
		return
	}
	gch, greqs, err := nc.Accept()
	if err != nil {
		uch.Close()
		return
	}
	defer gch.Close()
	defer uch.Close()

	// Upstream to guest: stdout, stderr, then EOF once both are done.
	var out sync.WaitGroup
	out.Add(2)
	go func() {
		defer out.Done()
		io.Copy(gch, uch)
	}()
	go func() {
		defer out.Done()
		io.Copy(gch.Stderr(), uch.Stderr())
	}()
	// Guest to upstream: stdin, then EOF.
	go func() {
		io.Copy(uch, gch)
		uch.CloseWrite()
	}()
	// turn orders what the guest sees: a request of the guest's is
	// answered before an upstream request (exit-status) is passed on
	// or the channel is closed, both of which can happen upstream
	// before the answer reaches us.
	var turn sync.Mutex
	// Upstream requests on the channel: exit status and signal, and
	// OpenSSH's end-of-write notice. The channel closes after them.
	upDone := make(chan struct{})
	go func() {
		defer close(upDone)
		for r := range ureqs {
			ok := false
			switch r.Type {
			case "exit-status", "exit-signal", "eow@openssh.com":
				turn.Lock()
				gch.SendRequest(r.Type, false, r.Payload)
				turn.Unlock()
				ok = true
			}
			if r.WantReply {
				r.Reply(ok, nil)
			}
		}
		// The upstream closed the channel: let the output drain,
		// then end the guest's side.
		out.Wait()
		turn.Lock()
		gch.CloseWrite()
		gch.Close()
		turn.Unlock()
	}()

	started := false
	// endWith takes a request that starts the session (shell,
	// subsystem, exec) and ends the session with msg and status 1,
	// nothing having run upstream: OpenSSH exits at once on a failed
	// request of these, without printing what arrived on stderr.
	endWith := func(r *ssh.Request, msg string) {
		started = true
		if r.WantReply {
			r.Reply(true, nil)
		}
		r.WantReply = false
		fmt.Fprintf(gch.Stderr(), "gondolin: %s\r\n", msg)
		gch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{1}))
		uch.Close()
	}
	for r := range greqs {
		turn.Lock()
		ok := false
		switch r.Type {
		case "exec":
			var m struct{ Command string }
			if ssh.Unmarshal(r.Payload, &m) != nil || started {
				break
			}
			e := base
			e.Method, e.Command, e.Time = "exec", m.Command, time.Time{}
			payload := r.Payload
			if !rule.AnyCommand {
				gc, err := parseGitCommand(m.Command)
				if err != nil {
					msg := fmt.Sprintf("command refused (%v): only git's commands (%s) with one repository path pass the SSH proxy; the host allows others with --ssh-allow-exec %s",
						err, strings.Join(gitSSHCommands, ", "), SSHHost{User: rule.User, Host: base.Host, Port: base.Port})
					sp.block(e, msg)
					endWith(r, msg)
					break
				}
				// What goes upstream is the command as git
				// spells it, never the guest's own bytes.
				e.Command = gc.String()
				payload = ssh.Marshal(struct{ Command string }{e.Command})
			}
			started = true
			var err error
			ok, err = uch.SendRequest("exec", true, payload)
			switch {
			case err != nil:
				e.Action, e.Reason = Failed, err.Error()
			case !ok:
				e.Action, e.Reason = Failed, "the upstream refused the command"
			default:
				e.Action = Allowed
			}
			sp.n.event(e)
		case "env":
			var m struct{ Name, Value string }
			if !started && ssh.Unmarshal(r.Payload, &m) == nil && sshEnvAllowed(m.Name, m.Value) {
				ok, _ = uch.SendRequest("env", true, r.Payload)
			}
		case "signal":
			if started {
				_, err := uch.SendRequest("signal", false, r.Payload)
				ok = err == nil
			}
		default:
			msg, refused := sshRefusals[r.Type]
			if !refused {
				break
			}
			e := base
			e.Method = r.Type
			if r.Type == "subsystem" {
				var m struct{ Name string }
				ssh.Unmarshal(r.Payload, &m)
				e.Command = m.Name
			}
			sp.block(e, msg)
			if (r.Type == "shell" || r.Type == "subsystem") && !started {
				endWith(r, msg)
				break
			}
			fmt.Fprintf(gch.Stderr(), "gondolin: %s\r\n", msg)
		}
		if r.WantReply {
			r.Reply(ok, nil)
		}
		turn.Unlock()
	}
	// The guest closed its channel (or the connection ended).
	uch.Close()
	<-upDone
}

// connectUpstream opens the real SSH connection for a guest logging in as
// user to name:port: policy-checked dial (resolve pins, internal ranges),
// host key verified against the known_hosts files, login with the
// matching credentials' keys, then the agent's.
func (sp *sshProxy) connectUpstream(ctx context.Context, p *Policy, name string, port uint16, user string) (*ssh.Client, error) {
	hostport := joinPattern(name, port)
	if len(p.SSHKnownHosts) == 0 {
		return nil, &blockedError{"no --ssh-known-hosts to verify " + hostport + " against (gondolin never trusts a host key on first use)"}
	}
	// Read now, not at policy load: a user who adds a key to the file
	// need not restart anything.
	hk, err := knownhosts.New(p.SSHKnownHosts...)
	if err != nil {
		return nil, fmt.Errorf("--ssh-known-hosts: %w", err)
	}
	signers, closeAgent, notes := sp.upstreamSigners(p, user, name, port)
	defer closeAgent()
	if len(signers) == 0 {
		why := fmt.Sprintf("no key to log in to %s as %s: no --ssh-credential matches and no --ssh-agent", hostport, user)
		if len(notes) > 0 {
			why = fmt.Sprintf("no key to log in to %s as %s: %s", hostport, user, strings.Join(notes, "; "))
		}
		return nil, errors.New(why)
	}
	var hostKeyErr error
	cfg := &ssh.ClientConfig{
		User: user,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(signers...)},
		HostKeyCallback: func(h string, remote net.Addr, key ssh.PublicKey) error {
			err := hk(h, remote, key)
			if err != nil {
				hostKeyErr = hostKeyRefusal(name, port, key, err)
			}
			return err
		},
		HostKeyAlgorithms: knownAlgorithms(hk, hostport, port),
		ClientVersion:     "SSH-2.0-gondolin",
	}
	conn, err := sp.n.proxy.dial(ctx, "tcp", hostport)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// The handshake is bounded by the deadline; cancelling ctx (the
	// network closing) must end it too.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	c, chans, reqs, err := ssh.NewClientConn(conn, hostport, cfg)
	stop()
	if err != nil {
		conn.Close()
		switch {
		case hostKeyErr != nil:
			return nil, &blockedError{hostKeyErr.Error()}
		case strings.Contains(err.Error(), "unable to authenticate"):
			why := fmt.Sprintf("%s refused the login as %s with %d key(s)", hostport, user, len(signers))
			if len(notes) > 0 {
				why += " (" + strings.Join(notes, "; ") + ")"
			}
			return nil, errors.New(why)
		}
		return nil, fmt.Errorf("SSH handshake with %s: %w", hostport, err)
	}
	conn.SetDeadline(time.Time{})
	// NewClient refuses the upstream's channel opens (forwarded ports,
	// agent, X11: none was asked for) and its global requests.
	return ssh.NewClient(c, chans, reqs), nil
}

// upstreamSigners gathers the keys for a login: matching credentials
// first (most specific first), then the agent's. The agent connection
// stays open until the returned func is called (its keys sign during the
// handshake). notes say, without paths or key bytes, what could not be
// used.
func (sp *sshProxy) upstreamSigners(p *Policy, user, host string, port uint16) ([]ssh.Signer, func(), []string) {
	var (
		signers []ssh.Signer
		notes   []string
	)
	for _, c := range p.sshCredentials(user, host, port) {
		s, err := c.signer()
		if err != nil {
			notes = append(notes, err.Error())
			continue
		}
		signers = append(signers, s)
	}
	closeAgent := func() {}
	if p.SSHAgent != "" {
		d := net.Dialer{Timeout: 5 * time.Second}
		conn, err := d.Dial("unix", p.SSHAgent)
		if err != nil {
			// The socket path stays out of events: name the cause only.
			why := "unreachable"
			var errno syscall.Errno
			if errors.As(err, &errno) {
				why = errno.Error()
			}
			notes = append(notes, "--ssh-agent: "+why)
		} else {
			closeAgent = func() { conn.Close() }
			as, err := agent.NewClient(conn).Signers()
			switch {
			case err != nil:
				notes = append(notes, "--ssh-agent: "+err.Error())
			case len(as) == 0:
				notes = append(notes, "--ssh-agent holds no keys (ssh-add)")
			}
			signers = append(signers, as...)
		}
	}
	return signers, closeAgent, notes
}

// probeKey is a key no known_hosts file holds: checking it makes
// knownhosts list the keys it does hold for a host.
var probeKey = func() ssh.PublicKey {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	k, _ := ssh.NewPublicKey(pub)
	return k
}()

// knownAlgorithms returns the host key algorithms known_hosts has keys of
// for hostport, so the upstream shows one of those: a server with RSA and
// Ed25519 keys would otherwise show the one the client prefers, and a
// known RSA key would look like a mismatch. nil (the defaults) when none
// is listed: the host key check then refuses, or accepts a certificate
// from an @cert-authority the files list.
func knownAlgorithms(hk ssh.HostKeyCallback, hostport string, port uint16) []string {
	err := hk(hostport, &net.TCPAddr{IP: net.IPv4zero, Port: int(port)}, probeKey)
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) || len(ke.Want) == 0 {
		return nil
	}
	var out []string
	seen := map[string]bool{}
	for _, k := range ke.Want {
		algos := []string{k.Key.Type()}
		if k.Key.Type() == ssh.KeyAlgoRSA {
			algos = []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
		}
		for _, a := range algos {
			if !seen[a] {
				seen[a] = true
				out = append(out, a)
			}
		}
	}
	return out
}

// hostKeyRefusal explains a host key the known_hosts files do not vouch
// for, with what the user can check and do.
func hostKeyRefusal(host string, port uint16, key ssh.PublicKey, err error) error {
	hostport := joinPattern(host, port)
	fp := key.Type() + " " + ssh.FingerprintSHA256(key)
	scan := "ssh-keyscan " + host
	if port != DefaultSSHPort {
		scan = fmt.Sprintf("ssh-keyscan -p %d %s", port, host)
	}
	var (
		ke *knownhosts.KeyError
		re *knownhosts.RevokedError
	)
	switch {
	case errors.As(err, &re):
		return fmt.Errorf("the host key of %s (%s) is revoked in --ssh-known-hosts", hostport, fp)
	case errors.As(err, &ke) && len(ke.Want) == 0:
		return fmt.Errorf("the host key of %s (%s) is not in --ssh-known-hosts, and gondolin never trusts a key on first use: if that fingerprint is right, add the key (%s) to a known_hosts file", hostport, fp, scan)
	case errors.As(err, &ke):
		return fmt.Errorf("the host key of %s (%s) does not match --ssh-known-hosts (%s:%d); refused, a changed key can mean someone is in the middle", hostport, fp, ke.Want[0].Filename, ke.Want[0].Line)
	}
	return fmt.Errorf("the host key of %s (%s) is refused: %v", hostport, fp, err)
}
