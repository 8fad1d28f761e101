package ca

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestLoadOrCreate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "home", "ca")
	// Concurrent first runs agree on one CA.
	var wg sync.WaitGroup
	pems := make([][]byte, 4)
	for i := range pems {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := LoadOrCreate(dir)
			if err != nil {
				t.Error(err)
				return
			}
			pems[i] = c.CertPEM()
		}()
	}
	wg.Wait()
	for _, p := range pems[1:] {
		if !bytes.Equal(p, pems[0]) {
			t.Fatal("concurrent callers created different CAs")
		}
	}
	for path, want := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, filepath.Join(dir, KeyFile): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s mode %v, want %v", path, fi.Mode(), want)
		}
	}
	c, err := LoadOrCreate(dir)
	if err != nil || !bytes.Equal(c.CertPEM(), pems[0]) {
		t.Fatalf("reload: %v", err)
	}
	if !c.Certificate().IsCA {
		t.Error("not a CA")
	}

	// A corrupt key is an error that says what to do, not a silent new CA.
	os.WriteFile(filepath.Join(dir, KeyFile), []byte("junk"), 0o600)
	if _, err := LoadOrCreate(dir); err == nil {
		t.Error("corrupt key accepted")
	}
}

func TestLeaf(t *testing.T) {
	c, err := New()
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(c.Certificate())
	for _, name := range []string{"api.example.com", "10.0.2.2"} {
		l, err := c.Leaf(name)
		if err != nil {
			t.Fatal(err)
		}
		opts := x509.VerifyOptions{Roots: roots, DNSName: name, CurrentTime: time.Now()}
		if _, err := l.Leaf.Verify(opts); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		again, _ := c.Leaf(name)
		if again != l {
			t.Errorf("%s: leaf not cached", name)
		}
	}
	other, _ := c.Leaf("other.example.com")
	if _, err := other.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "api.example.com"}); err == nil {
		t.Error("leaf valid for a name it was not minted for")
	}
}

// The SSH host CA key is stable across reloads of the same CA, differs
// between CAs, and is not the X.509 key.
func TestSSHHostCAKey(t *testing.T) {
	dir := t.TempDir()
	a, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !a.SSHHostCAKey().Equal(b.SSHHostCAKey()) {
		t.Error("reloaded CA derives another SSH key")
	}
	c, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if a.SSHHostCAKey().Equal(c.SSHHostCAKey()) {
		t.Error("two CAs share an SSH key")
	}
	if len(a.SSHHostCAKey()) != 64 {
		t.Errorf("key length %d", len(a.SSHHostCAKey()))
	}
}
