package netpolicy

import (
	"bytes"
	"encoding/binary"
	"errors"
)

// flowKind is what the first bytes of a guest TCP flow look like.
type flowKind int

const (
	kindNeedMore flowKind = iota // not enough bytes to tell
	kindTLS                      // a TLS handshake record
	kindHTTP                     // an HTTP/1.x request line
	kindSSH                      // an SSH-2.0 identification string
	kindOther                    // anything else: the flow is reset
)

// maxPeek bounds what classification reads: a whole TLS record (a
// ClientHello with post-quantum key shares is about 1.8 KB, the record
// limit is 16 KiB plus its header).
const maxPeek = 5 + 16384

// sniff classifies a flow from its first bytes. It only needs a prefix:
// the TLS record header, an HTTP method token and its space, or "SSH-2.0-".
func sniff(b []byte) flowKind {
	if len(b) == 0 {
		return kindNeedMore
	}
	// Checked before HTTP: "SSH" is also a prefix of a method token.
	if bytes.HasPrefix(b, sshPrefix) {
		return kindSSH
	}
	if bytes.HasPrefix(sshPrefix, b) {
		return kindNeedMore
	}
	if b[0] == 0x16 { // TLS handshake record
		if len(b) < 3 {
			return kindNeedMore
		}
		if b[1] == 3 && b[2] <= 4 {
			return kindTLS
		}
		return kindOther
	}
	// An HTTP method is a token; the ones in use are upper-case letters
	// (GET, PROPFIND, ...). Anything else here is not HTTP/1.x.
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case c >= 'A' && c <= 'Z':
			if i >= 20 {
				return kindOther
			}
		case c == ' ' && i > 0:
			return kindHTTP
		default:
			return kindOther
		}
	}
	return kindNeedMore
}

// tlsRecordLen reports how many bytes the first TLS record needs in
// all, so the caller can wait for the whole ClientHello before parsing.
func tlsRecordLen(b []byte) (int, bool) {
	if len(b) < 5 {
		return 0, false
	}
	return 5 + int(binary.BigEndian.Uint16(b[3:5])), true
}

var errNotHello = errors.New("not a TLS ClientHello")

// parseClientHello extracts the server name (SNI) and ALPN protocols from
// a TLS record holding a ClientHello. b comes from the guest: every length
// is checked against what is left. A hello split over several records is
// reported as an error; the caller then relies on crypto/tls alone.
func parseClientHello(b []byte) (sni string, alpn []string, err error) {
	rec, ok := tlsRecordLen(b)
	if !ok || b[0] != 0x16 || rec > len(b) {
		return "", nil, errNotHello
	}
	r := reader(b[5:rec])
	typ, ok := r.u8()
	if !ok || typ != 1 { // client_hello
		return "", nil, errNotHello
	}
	body, ok := r.vec24()
	if !ok {
		return "", nil, errNotHello
	}
	h := reader(body)
	if _, ok := h.bytes(2 + 32); !ok { // legacy_version, random
		return "", nil, errNotHello
	}
	if _, ok := h.vec8(); !ok { // legacy_session_id
		return "", nil, errNotHello
	}
	if _, ok := h.vec16(); !ok { // cipher_suites
		return "", nil, errNotHello
	}
	if _, ok := h.vec8(); !ok { // legacy_compression_methods
		return "", nil, errNotHello
	}
	if len(h) == 0 {
		return "", nil, nil // no extensions
	}
	exts, ok := h.vec16()
	if !ok {
		return "", nil, errNotHello
	}
	e := reader(exts)
	for len(e) > 0 {
		typ, ok1 := e.u16()
		data, ok2 := e.vec16()
		if !ok1 || !ok2 {
			return "", nil, errNotHello
		}
		d := reader(data)
		switch typ {
		case 0: // server_name
			list, ok := d.vec16()
			if !ok {
				return "", nil, errNotHello
			}
			l := reader(list)
			for len(l) > 0 {
				nt, ok1 := l.u8()
				name, ok2 := l.vec16()
				if !ok1 || !ok2 {
					return "", nil, errNotHello
				}
				if nt == 0 && sni == "" {
					sni = string(name)
				}
			}
		case 16: // application_layer_protocol_negotiation
			list, ok := d.vec16()
			if !ok {
				return "", nil, errNotHello
			}
			l := reader(list)
			for len(l) > 0 {
				p, ok := l.vec8()
				if !ok {
					return "", nil, errNotHello
				}
				alpn = append(alpn, string(p))
			}
		}
	}
	return sni, alpn, nil
}

// reader consumes big-endian fields from a byte slice, failing (ok ==
// false) instead of panicking when a length runs past the end.
type reader []byte

func (r *reader) bytes(n int) ([]byte, bool) {
	if n < 0 || len(*r) < n {
		return nil, false
	}
	out := (*r)[:n]
	*r = (*r)[n:]
	return out, true
}

func (r *reader) u8() (uint8, bool) {
	b, ok := r.bytes(1)
	if !ok {
		return 0, false
	}
	return b[0], true
}

func (r *reader) u16() (uint16, bool) {
	b, ok := r.bytes(2)
	if !ok {
		return 0, false
	}
	return binary.BigEndian.Uint16(b), true
}

func (r *reader) vec8() ([]byte, bool) {
	n, ok := r.u8()
	if !ok {
		return nil, false
	}
	return r.bytes(int(n))
}

func (r *reader) vec16() ([]byte, bool) {
	n, ok := r.u16()
	if !ok {
		return nil, false
	}
	return r.bytes(int(n))
}

func (r *reader) vec24() ([]byte, bool) {
	b, ok := r.bytes(3)
	if !ok {
		return nil, false
	}
	return r.bytes(int(b[0])<<16 | int(b[1])<<8 | int(b[2]))
}

// sshPrefix starts an SSH client's identification string. SSH 1 ("SSH-1.")
// and the compatibility form "SSH-1.99-" are servers' business: a client
// that only speaks SSH 1 gets a reset.
var sshPrefix = []byte("SSH-2.0-")

// maxSSHBanner is RFC 4253's limit on the identification line, CR LF
// included.
const maxSSHBanner = 255

// sshBannerLine returns the length of the identification line at the
// start of b (up to and including its LF) once it is complete.
func sshBannerLine(b []byte) (int, bool) {
	i := bytes.IndexByte(b[:min(len(b), maxSSHBanner)], '\n')
	if i < 0 {
		return 0, false
	}
	return i + 1, true
}

var errBadBanner = errors.New("malformed SSH identification string")

// parseSSHBanner checks the guest's identification line (RFC 4253 4.2:
// "SSH-2.0-softwareversion SP comments CR LF", at most 255 bytes,
// printable US-ASCII; a bare LF is accepted, as OpenSSH does) and returns
// the software version. The line is only classified here and then
// replayed to crypto/ssh, which parses it again: this check keeps the
// guest from reaching a handshake (or an event) with control bytes or an
// unbounded line.
func parseSSHBanner(b []byte) (software string, err error) {
	n, ok := sshBannerLine(b)
	if !ok || !bytes.HasPrefix(b, sshPrefix) {
		return "", errBadBanner
	}
	line := b[len(sshPrefix) : n-1]
	line = bytes.TrimSuffix(line, []byte{'\r'})
	for _, c := range line {
		if c < 0x20 || c > 0x7e {
			return "", errBadBanner
		}
	}
	// RFC 4253 also forbids '-' in the software version, but JSch
	// (JGit, Jenkins) sends "SSH-2.0-JSCH-0.1.54": tolerated, as
	// crypto/ssh and OpenSSH tolerate it.
	sw, _, _ := bytes.Cut(line, []byte{' '})
	if len(sw) == 0 {
		return "", errBadBanner
	}
	return string(sw), nil
}
