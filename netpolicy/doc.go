// Package netpolicy is the host side of a VM's network: a user-space
// TCP/IP stack (gVisor) fed with the guest's Ethernet frames, through which
// every byte of guest egress is mediated by policy — allowed hosts, secrets
// the guest can use but never see, DNS mode, raw TCP maps and internal
// address ranges — and which can be changed while the VM runs.
//
// # What the guest sees
//
// eth0 with 10.0.2.15/24 from DHCP; gateway and DNS server 10.0.2.2 (the
// host stack). There is no NAT and no route to anything: each guest TCP
// connection ends in this process, which classifies it by its first bytes:
//
//   - TLS: terminated with a leaf certificate for the SNI name, signed by
//     a CA kept in GONDOLIN_HOME/ca (package ca) that the guest trusts
//     (ALPN offers http/1.1 only); the inner HTTP requests are handled as
//     below and replayed over HTTPS, verified against the host's trust
//     store.
//   - HTTP/1.x: each request is checked, then replayed by the host's own
//     HTTP client (bodies streamed). CONNECT is refused (405). WebSocket
//     upgrades are tunnelled after the check unless disabled, or bound
//     for a host a secret may go to (see below).
//   - A destination named by a TCP map (--tcp-map): forwarded raw to its
//     upstream without peeking (so server-first protocols work). The
//     map authorizes its upstream's host:port itself when the user
//     spelled the address (an IP, or a --resolve pin of the name), even
//     an internal one; that opens nothing else to anything else.
//   - SSH (an "SSH-2.0-" identification line) to a host:port allowed by
//     --ssh-allow-host or --ssh-allow-exec: terminated by an SSH server
//     in this process, which logs in upstream itself (see below).
//   - Anything else (including a client silent for PeekTimeout): reset.
//
// # SSH egress
//
// For git over SSH, without the key ever entering the VM. The guest's
// SSH client meets a host certificate for the name it dialled, signed by
// a key derived from the CA (the guest trusts it through SSHKnownHosts,
// written to GuestSSHKnownHosts), and may log in with any key: the
// server is reachable from this VM only, and what the guest can do is
// bounded on the host side. For an allowed destination (the synthetic
// name and the port must match --ssh-allow-host, and no more specific
// Deny pattern; SSH carries no name of its own, so with trusted or open
// DNS only IP patterns can match) the
// host dials the upstream with the same resolution and internal-range
// checks as HTTP, verifies its host key against --ssh-known-hosts (an
// unknown or changed key is refused; there is no trust on first use),
// and logs in with the matching --ssh-credential keys, then the
// --ssh-agent's. The login name is the host's choice: the rule's USER@,
// else the most specific matching credential's, else "git"; a guest
// that asks for another name is refused before anything is dialled, so
// the host's keys never sign a login the user did not name. Only
// session channels with exec requests pass (plus env GIT_PROTOCOL and
// signals), and only git's commands: git-upload-pack, git-receive-pack
// or git-upload-archive and one repository path, in the shell quoting
// git uses, re-quoted by the proxy before it goes upstream; a second
// argument, an option, shell syntax outside the quotes or a control
// character is refused. --ssh-allow-exec names the hosts where any
// command passes (a command line upstream, so a pivot from there).
// Shells, subsystems (sftp), terminals, other environment variables,
// X11 and agent forwarding and all port forwarding are refused with a
// message to the guest. Key files are read when a login needs them;
// passphrases and key bytes never serialise, and neither they nor the
// agent socket appear in events. At most MaxSSHConns SSH connections
// per VM, each handshake (guest; upstream dial and login) within
// SSHHandshakeTimeout.
//
// # Ingress
//
// DialGuest opens a connection from the gateway to a port on the guest
// through the same stack, for host-side services such as package ingress.
//
// UDP other than DNS to the gateway is dropped; pings are answered by the
// gateway only; the guest network is IPv4-only.
//
// # The checks, in order, for each HTTP request
//
//  1. The Host header, normalised (NormalizeHost: case, trailing dot,
//     port, every inet_aton spelling of an IPv4 literal, bracketed IPv6),
//     must be the name synthetic DNS handed out for the flow's
//     destination address, and must equal the TLS server name.
//  2. The allowlist (most specific matching Allow/Deny pattern wins).
//  3. Secrets: placeholders are replaced by real values in header values
//     (Basic credentials decoded and re-encoded), for the secret's hosts
//     only; in the URL path and query only for a secret given the url
//     option (--host-secret NAME:url@HOSTS, Secret.InURL), since servers
//     repeat URLs in many more places than headers. A placeholder in the
//     URL of any other secret, any placeholder or any real value (8
//     bytes or longer) bound for another host, or a placeholder whose
//     value is not known (values are memory-only and lost with the
//     supervisor) blocks the request with a 403 before anything is
//     sent. Bodies are never substituted: the guest never holds a real
//     value, and the host never writes one into a body. A request body
//     to a host is scanned as it streams for the placeholders and values
//     that may not go there, whatever its length, holding back only the
//     longest of them less one byte; one found cuts the upload before
//     any of it leaves (the guest gets a 403 if it is still listening).
//     Secrets are not substituted into plain HTTP unless the upstream is
//     an --allow-internal address and port. Responses are scrubbed
//     (below).
//  4. An IP literal must not be an address the host knows for a denied
//     name (see addrnames.go for where it learns them).
//  5. The host resolves the name itself (--resolve pins first) and at
//     least one address must be outside the internal ranges
//     (InternalRange: special-purpose ranges and the host's own
//     interface addresses, read again as they change) or inside an
//     --allow-internal range that covers the port; the upstream
//     connection is then made by resolving and checking again and
//     dialling only an allowed address, so a name that rebinds to an
//     internal address between the two is still refused.
//
// # Secrets in responses
//
// From the first request served under a policy with a secret value, every
// response from every host is scrubbed, whether or not its request used a
// secret: a server may store a request and show it later, under another
// of its names or an IP literal, or after the secret was removed or its
// value rotated. Scrubbed are every value of a secret in a policy a
// request was served under (so every value that can have been sent), the
// current ones and the last 64 that left the policy, each turned back
// into its secret's placeholder; and every Basic credential the
// substitution wrote, turned back into the guest's (the guest picks the
// user name, so rather than forget one, a request that would write a 65th
// different one is refused with a 403). A value shorter than 8 bytes
// would turn up in ordinary data: it is scrubbed only from its own hosts'
// responses, while set. Each is replaced in headers (those of 1xx
// informational responses too, which the ReverseProxy forwards before
// ModifyResponse), body and trailer, as sent and in the forms servers
// repeat strings in (percent-encoded, JSON-escaped). The body is scrubbed
// as it streams, holding back the longest such string less one byte
// between reads, always that many whatever they are (holding back only a
// possible start of a value would let the guest learn a value by timing,
// a byte at a time); so a streamed response (server-sent events) reaches
// the guest that many bytes late, and it loses its Content-Length. A
// value of 8 bytes or more set while a response streams is scrubbed from
// what comes after; a response to a request sent before the first value
// was set is cut off (502, or the connection closed) when one is set
// before it ends. The requests ask for Accept-Encoding: identity; a gzip
// body sent anyway is decoded and scrubbed, any other encoding is refused
// with a 502. They go without Range, If-Range and Request-Range, so every
// body is whole (a value split across partial responses is in none of
// them, and the guest would put the pieces together): in a VM with
// secrets, downloads are not resumable. WebSocket frames cannot be
// scrubbed, so an upgrade is refused with a 403 to a host any secret may
// go to, and to every host once the VM has a secret (a server that stored
// a value could write it into the stream under another of its names).
// TCP map streams are not scrubbed. Only exact echoes are recognised: a value a
// server cuts short (an error message quoting part of it) or encodes
// otherwise gets through. A Network that never had a secret value leaves
// responses as the upstream sent them.
//
// Every decision is an Event (never with a secret value), kept in a ring
// and streamed to subscribers. SSH connections and each exec, refused
// request or forwarding attempt are events too (proto "ssh").
//
// # DNS
//
// Synthetic (the default) answers A queries with an address from
// 198.18.0.0/15 derived from a hash of the name, so a flow to that address
// is attributed to the name even after a supervisor restart; AAAA and
// other types get an empty answer and nothing leaves the host; every
// name is answered, allowed or not (the flow is what the policy checks).
// Trusted forwards single-question class-IN queries of ordinary types to
// the trusted servers or the host's resolvers; open forwards any
// well-formed query. A query name is data that reaches whoever serves
// the name's zone, so when the policy limits hosts (Allow without "*",
// or any Deny) trusted and open DNS forward only names the guest
// could use, under the policy in force at the query: an Allow pattern,
// an SSH allow pattern, a TCP map's guest name or a --resolve name, with
// no Deny pattern at least as specific matching it. Any other name gets
// NXDOMAIN, whatever the query type, and a Blocked event.
//
// # Limits
//
// Per VM: MaxHandshakes TCP handshakes in progress (a SYN flood beyond it
// is dropped), MaxFlows concurrent flows (more are reset), request headers
// up to MaxHeaderBytes, at most 32 DNS queries in progress. Bodies are
// streamed, never buffered whole.
//
// # Panics
//
// A panic serving one connection, request, DNS query or DHCP frame is
// recovered, logged with its stack and closes that connection only; one
// in a loop serving the whole VM (frames, DNS over UDP, the HTTP server)
// closes the Network and is reported to Options.OnPanic. Either way the
// process and every other VM go on.
package netpolicy
