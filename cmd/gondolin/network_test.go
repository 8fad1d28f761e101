package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testenv"
	"github.com/gondolin/gondolin/internal/testutil"
	"github.com/gondolin/gondolin/sessions"
)

// upstream is a local HTTPS server with a certificate for api.test and
// other.test from a test CA, which the host (not the guest) trusts
// through SSL_CERT_FILE, as a real upstream's would be trusted.
type upstream struct {
	port   int
	caFile string
	mu     sync.Mutex
	seen   []string // "host path authorization"
}

func newUpstream(t *testing.T) *upstream {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gondolin test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "api.test"},
		DNSNames: []string{"api.test", "other.test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, _ := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	u := &upstream{caFile: filepath.Join(t.TempDir(), "ca.pem")}
	os.WriteFile(u.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u.mu.Lock()
			u.seen = append(u.seen, r.Host+" "+r.URL.Path+" "+r.Header.Get("Authorization"))
			u.mu.Unlock()
			fmt.Fprintf(w, "hello %s auth=%s\n", r.URL.Path, r.Header.Get("Authorization"))
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}}},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.port = ln.Addr().(*net.TCPAddr).Port
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return u
}

func (u *upstream) requests() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.seen...)
}

func withEnv(t *testing.T, kv ...string) {
	for i := 0; i+1 < len(kv); i += 2 {
		t.Setenv(kv[i], kv[i+1])
	}
}

const realToken = "real-secret-value-0123456789"

// TestNetworkPolicy runs real curl in a real VM against local servers.
func TestNetworkPolicy(t *testing.T) {
	home := testenv.Home(t)
	up := newUpstream(t)
	echoPort := testutil.TCPEcho(t)
	withEnv(t, "SSL_CERT_FILE", up.caFile, "TOKEN", realToken)
	base := []string{"exec",
		"--allow-host", "api.test", "--allow-host", "other.test",
		"--host-secret", "TOKEN@api.test",
		"--resolve", "api.test=127.0.0.1", "--resolve", "other.test=127.0.0.1",
		"--allow-internal", fmt.Sprintf("127.0.0.1/32:%d", up.port), "--"}
	curl := func(host, path string) string {
		return `curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" ` + fmt.Sprintf("https://%s:%d/%s", host, up.port, path)
	}

	tests := []struct {
		name    string
		args    []string
		script  string
		wantOut string
		check   func(t *testing.T)
	}{
		{name: "the guest sees a placeholder, never the value",
			args:    base,
			script:  `case "$TOKEN" in GONDOLIN_SECRET_*) echo placeholder;; esac; env | grep -c ` + realToken + `; cat /proc/*/environ 2>/dev/null | grep -c ` + realToken,
			wantOut: "placeholder\n0\n0\n"},
		{name: "the allowed host gets the real token over verified TLS",
			args:    base,
			script:  curl("api.test", "allowed"),
			wantOut: "200",
			check: func(t *testing.T) {
				if !contains(up.requests(), "api.test:"+fmt.Sprint(up.port)+" /allowed Bearer "+realToken) {
					t.Fatalf("upstream saw %q", up.requests())
				}
			}},
		{name: "the placeholder to another host is blocked before it leaves",
			args:    base,
			script:  curl("other.test", "leak"),
			wantOut: "403",
			check: func(t *testing.T) {
				for _, r := range up.requests() {
					if strings.Contains(r, "/leak") {
						t.Fatalf("upstream saw the leak: %q", r)
					}
				}
			}},
		{name: "a host not allowed is blocked",
			args:    []string{"exec", "--allow-host", "api.test", "--resolve", "other.test=127.0.0.1", "--allow-internal", fmt.Sprintf("127.0.0.1/32:%d", up.port), "--"},
			script:  fmt.Sprintf(`curl -sS -o /dev/null -w '%%{http_code}' https://other.test:%d/nope`, up.port),
			wantOut: "403"},
		{name: "raw TCP is reset",
			args:    []string{"exec", "--"},
			script:  `printf 'hello\n' | nc -w 5 198.51.100.7 5000 | wc -c`,
			wantOut: "0\n"},
		// The map authorizes its own upstream: no --allow-internal.
		{name: "a TCP map forwards raw TCP to its upstream only",
			args:    []string{"exec", "--tcp-map", fmt.Sprintf("db.test:5000=127.0.0.1:%d", echoPort), "--"},
			script:  `printf 'raw bytes\n' | nc -w 3 db.test 5000; printf 'raw bytes\n' | nc -w 3 other.test 5000 | wc -c`,
			wantOut: "echo: raw bytes\n0\n"},
		{name: "--no-network leaves only loopback",
			args:    []string{"exec", "--no-network", "--"},
			script:  `ls /sys/class/net`,
			wantOut: "lo\n"},
		{name: "synthetic DNS answers without asking anyone",
			args:    []string{"exec", "--"},
			script:  `nslookup some-name.example 2>/dev/null | grep -A1 'Name:' | grep -o '198\.1[89]\.[0-9.]*' | head -1 | cut -d. -f1-2`,
			wantOut: "198.18\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := gondolin(t, home, "", append(tt.args, "sh", "-c", tt.script)...)
			if r.stdout != tt.wantOut {
				t.Fatalf("stdout %q, want %q (stderr %q, code %d)", r.stdout, tt.wantOut, r.stderr, r.code)
			}
			if tt.check != nil {
				tt.check(t)
			}
		})
	}
}

// TestNetworkPolicyLive changes a running session's policy.
func TestNetworkPolicyLive(t *testing.T) {
	home := testenv.Home(t)
	t.Cleanup(func() { stopSupervisor(t, home) })
	up := newUpstream(t)
	withEnv(t, "SSL_CERT_FILE", up.caFile, "TOKEN", realToken)
	r := gondolin(t, home, "", "bash", "--detach", "--keep", "--name", "net",
		"--allow-host", "api.test", "--host-secret", "TOKEN@api.test",
		"--resolve", "api.test=127.0.0.1", "--resolve", "other.test=127.0.0.1", "--allow-internal", fmt.Sprintf("127.0.0.1/32:%d", up.port))
	if r.code != 0 {
		t.Fatalf("bash: %+v", r)
	}
	get := func(host string) string {
		r := gondolin(t, home, "", "exec", "--session", "net", "--", "sh", "-c",
			fmt.Sprintf(`curl -sS -o /dev/null -w '%%{http_code}' https://%s:%d/live`, host, up.port))
		return r.stdout
	}
	if code := get("other.test"); code != "403" {
		t.Fatalf("before allow: %s", code)
	}
	if r := gondolin(t, home, "", "policy", "allow", "net", "other.test"); r.code != 0 {
		t.Fatalf("policy allow: %+v", r)
	}
	if code := get("other.test"); code != "200" {
		t.Fatalf("after allow: %s", code)
	}
	r = gondolin(t, home, "", "policy", "show", "net")
	if want := fmt.Sprintf("127.0.0.1/32:%d (port %d only)", up.port, up.port); !strings.Contains(r.stdout, want) {
		t.Fatalf("policy show lacks %q: %+v", want, r)
	}
	r = gondolin(t, home, "", "policy", "show", "net", "--json")
	if r.code != 0 || strings.Contains(r.stdout, realToken) || !strings.Contains(r.stdout, "other.test") {
		t.Fatalf("policy show: %+v", r)
	}
	r = gondolin(t, home, "", "events", "net", "--json")
	var allowed, blocked int
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var e struct{ Action, Host string }
		json.Unmarshal([]byte(line), &e)
		switch e.Action {
		case "allow":
			allowed++
		case "block":
			blocked++
		}
	}
	if allowed == 0 || blocked == 0 || strings.Contains(r.stdout, realToken) {
		t.Fatalf("events: %d allowed, %d blocked: %s", allowed, blocked, r.stdout)
	}
	logs, _ := os.ReadFile(home.SupervisorLog())
	if strings.Contains(string(logs), realToken) {
		t.Fatal("the supervisor log holds the secret value")
	}
	if b, _ := os.ReadFile(filepath.Join(home.Session(listSessions(t, home)["net"].ID), layout.StateFile)); strings.Contains(string(b), realToken) {
		t.Fatal("state.json holds the secret value")
	}

	// After a supervisor crash the value is gone: the session says so,
	// requests that use the secret are blocked, and setting it again fixes
	// both. The policy edit made before the crash is kept.
	syscall.Kill(supervisorPID(t, home), syscall.SIGKILL)
	time.Sleep(500 * time.Millisecond)
	s := listSessions(t, home)["net"]
	if s.State != sessions.Live || len(s.Errors) == 0 || !strings.Contains(s.Errors[0], "TOKEN") {
		t.Fatalf("after restart: %+v", s)
	}
	withToken := func() string {
		r := gondolin(t, home, "", "exec", "--session", "net", "--", "sh", "-c",
			fmt.Sprintf(`curl -sS -o /dev/null -w '%%{http_code}' -H "Authorization: Bearer $TOKEN" https://api.test:%d/again`, up.port))
		return r.stdout
	}
	if code := withToken(); code != "403" {
		t.Fatalf("secret without a value: %s", code)
	}
	if code := get("other.test"); code != "200" {
		t.Fatalf("live allow lost in the restart: %s", code)
	}
	if r := gondolin(t, home, "", "policy", "secret", "set", "net", "TOKEN@api.test"); r.code != 0 {
		t.Fatalf("secret set: %+v", r)
	}
	if code := withToken(); code != "200" || !contains(up.requests(), fmt.Sprintf("api.test:%d /again Bearer %s", up.port, realToken)) {
		t.Fatalf("after secret set: %s, upstream saw %q", code, up.requests())
	}
	if s := listSessions(t, home)["net"]; len(s.Errors) != 0 {
		t.Fatalf("errors after secret set: %v", s.Errors)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
