// Package ca is the local certificate authority behind gondolin's TLS
// mediation: one CA per GONDOLIN_HOME, which guests trust, and leaf
// certificates minted on demand for the names guests connect to.
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/gondolin/gondolin/internal/atomicfile"
	"github.com/gondolin/gondolin/internal/layout"
)

// File names inside the CA directory.
const (
	CertFile = layout.CACert
	KeyFile  = layout.CAKey
	lockFile = layout.CALock
)

const (
	caValidity = 10 * 365 * 24 * time.Hour
	// Leaves are short-lived: they are minted again for free, and a
	// guest clock that a restore left behind is fixed before use.
	leafValidity = 30 * 24 * time.Hour
	// backdate absorbs a guest clock slightly behind the host's.
	backdate = 24 * time.Hour
	// maxLeaves bounds the leaf cache: a guest asking for endless
	// distinct names costs CPU, not memory.
	maxLeaves = 1024
)

// CA signs leaf certificates. It is safe for concurrent use.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
	// leafKey is shared by every leaf: generating a key per name would
	// cost more than signing, and the leaves only protect guest<->host
	// traffic inside one machine.
	leafKey *ecdsa.PrivateKey
	// sshKey signs the SSH host certificates of SSH egress (see
	// SSHHostCAKey).
	sshKey ed25519.PrivateKey

	mu     sync.Mutex
	leaves map[string]*tls.Certificate
}

// LoadOrCreate loads the CA in dir, creating it (dir mode 0700, key mode
// 0600) the first time. Concurrent callers agree on one CA.
func LoadOrCreate(dir string) (*CA, error) {
	if err := layout.MkdirPrivate(dir); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return nil, fmt.Errorf("ca: lock: %w", err)
	}
	certPEM, cerr := os.ReadFile(filepath.Join(dir, CertFile))
	keyPEM, kerr := os.ReadFile(filepath.Join(dir, KeyFile))
	if cerr == nil && kerr == nil {
		c, err := parse(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("ca: %s: %w; remove the directory to create a new CA (guests started after that trust the new one)", dir, err)
		}
		return c, nil
	}
	if !errors.Is(cerr, os.ErrNotExist) && cerr != nil {
		return nil, fmt.Errorf("ca: %w", cerr)
	}
	if !errors.Is(kerr, os.ErrNotExist) && kerr != nil {
		return nil, fmt.Errorf("ca: %w", kerr)
	}
	certPEM, keyPEM, err = generate()
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	// Key first: a crash between the two writes leaves a key without a
	// certificate, which the next run regenerates (both are missing or
	// the cert is), never a certificate whose key is lost.
	if err := atomicfile.WriteFile(filepath.Join(dir, KeyFile), keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, CertFile), certPEM, 0o644); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	return parse(certPEM, keyPEM)
}

// New returns a CA that lives in memory only (tests, one-off tools).
func New() (*CA, error) {
	certPEM, keyPEM, err := generate()
	if err != nil {
		return nil, err
	}
	return parse(certPEM, keyPEM)
}

func generate() (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := randSerial()
	if err != nil {
		return nil, nil, err
	}
	host, _ := os.Hostname()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"gondolin"}, CommonName: "gondolin local CA " + host},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

func parse(certPEM, keyPEM []byte) (*CA, error) {
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, errors.New("certificate is not PEM")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, err
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, errors.New("key is not PEM")
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, err
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("key cannot sign")
	}
	if !cert.IsCA {
		return nil, errors.New("certificate is not a CA")
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	sshKey, err := deriveSSHKey(kb.Bytes)
	if err != nil {
		return nil, err
	}
	c := &CA{cert: cert, certPEM: certPEM, key: signer, leafKey: leafKey, sshKey: sshKey, leaves: map[string]*tls.Certificate{}}
	// A key that does not match the certificate would only show up as
	// handshake failures in the guest: catch it here.
	if _, err := c.Leaf("check.invalid"); err != nil {
		return nil, fmt.Errorf("key does not match certificate: %w", err)
	}
	return c, nil
}

// sshKeyInfo separates the SSH host CA key from every other key that might
// one day be derived from the same secret.
const sshKeyInfo = "gondolin ssh host ca v1"

// deriveSSHKey derives an Ed25519 key from the CA's private key (PKCS#8
// DER). Deriving it, rather than storing a second key, means it lives and
// dies with the CA (guests that trust one trust the other) with no second
// file to keep in step; deriving, rather than reusing the ECDSA key, keeps
// X.509 and SSH signatures under separate keys.
func deriveSSHKey(pkcs8 []byte) (ed25519.PrivateKey, error) {
	seed, err := hkdf.Key(sha256.New, pkcs8, nil, sshKeyInfo, ed25519.SeedSize)
	if err != nil {
		return nil, err
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// SSHHostCAKey returns the key that signs the host certificates the SSH
// egress proxy shows guests (guests trust its public half through an
// @cert-authority line in their known_hosts). It is derived from the CA
// key, so it is stable for as long as the CA is.
func (c *CA) SSHHostCAKey() ed25519.PrivateKey { return c.sshKey }

// CertPEM returns the CA certificate in PEM form, for guests to trust.
func (c *CA) CertPEM() []byte { return append([]byte(nil), c.certPEM...) }

// Certificate returns the parsed CA certificate.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// Leaf returns a certificate for name (a DNS name, or an IP address in
// text form) signed by the CA, from a cache when it is still fresh.
func (c *CA) Leaf(name string) (*tls.Certificate, error) {
	now := time.Now()
	c.mu.Lock()
	if l, ok := c.leaves[name]; ok && now.Before(l.Leaf.NotAfter.Add(-leafValidity/2)) {
		c.mu.Unlock()
		return l, nil
	}
	c.mu.Unlock()

	serial, err := randSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-backdate),
		NotAfter:     now.Add(leafValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip, err := netip.ParseAddr(name); err == nil {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
	} else {
		tmpl.DNSNames = []string{name}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &c.leafKey.PublicKey, c.key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	tc := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: c.leafKey, Leaf: leaf}
	c.mu.Lock()
	if len(c.leaves) >= maxLeaves {
		for k := range c.leaves { // evict one arbitrary entry
			delete(c.leaves, k)
			break
		}
	}
	c.leaves[name] = tc
	c.mu.Unlock()
	return tc, nil
}

func randSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}
